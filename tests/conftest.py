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
