"""Regression tests for bugs that came from facts spread over modules (issue: one place per kind)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_tune.cli import main
from hf_tune.config import load_config
from hf_tune.recipes import RECIPES

from .conftest import make_images
from .test_e2e_multitask import _args as multitask_args

pytestmark = pytest.mark.slow


def _multitask_loss(tiny_bert: Path, data: Path, tmp_path: Path, smoothing: float) -> float:
    from transformers import set_seed

    cfg = load_config(
        [*multitask_args(tiny_bert, data, tmp_path / "r"), f"training.label_smoothing_factor={smoothing}"]
    )
    recipe = RECIPES.get(cfg.task)(cfg)
    recipe.args = recipe.training_args()
    recipe.prepare_data()
    set_seed(0)
    recipe.build_model()
    batch = recipe.data_collator()([recipe.datasets["train"][i] for i in range(8)])
    recipe.model.eval()  # no dropout: the same weights and batch give the same loss but for the smoothing
    with torch.no_grad():
        return float(recipe.model(**batch).loss)


def test_label_smoothing_changes_the_multitask_loss(tiny_bert, contracts_jsonl, tmp_path):
    plain = _multitask_loss(tiny_bert, contracts_jsonl, tmp_path, 0.0)
    smoothed = _multitask_loss(tiny_bert, contracts_jsonl, tmp_path, 0.2)
    assert smoothed != pytest.approx(plain, rel=1e-4)
    assert smoothed == pytest.approx(_multitask_loss(tiny_bert, contracts_jsonl, tmp_path, 0.2))


def _trained_image_run(tiny_image_args: list[str], tmp_path: Path) -> Path:
    assert main(["train", *tiny_image_args]) == 0
    return tmp_path / "run"


@pytest.mark.parametrize("source", ["npz", "folder"])
def test_evaluate_auto_scores_a_whole_single_image_source(source, tiny_image_args, tmp_path, capsys):
    run = _trained_image_run(tiny_image_args, tmp_path)
    capsys.readouterr()
    x, y = make_images(44, seed=5)
    if source == "npz":
        path = tmp_path / "single.npz"
        np.savez(path, train_images=x, train_labels=y)
    else:
        path = tmp_path / "folder"
        for i, (img, label) in enumerate(zip(x, y.ravel(), strict=True)):
            (path / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path / str(label) / f"{i}.png")
    assert main(["evaluate", str(run), f"data.path={path}", "data.labels=null"]) == 0
    ev = json.loads(capsys.readouterr().out.strip())
    assert ev["split"] == "all" and ev["num_examples"] == 44


def test_text_and_token_sources_follow_the_same_rule(tiny_bert, contracts_jsonl, tmp_path, capsys):
    from .test_e2e_token import _args as token_args

    run = tmp_path / "tok"
    assert main(["train", *token_args(tiny_bert, contracts_jsonl, run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), f"data.path={contracts_jsonl}"]) == 0
    ev = json.loads(capsys.readouterr().out.strip())
    assert ev["split"] == "all" and ev["num_documents"] == 24  # every document of a single source
    assert main(["evaluate", str(run), f"data.path={contracts_jsonl}", "data.split=val"]) == 0
    val = json.loads(capsys.readouterr().out.strip())
    assert val["split"] == "val" and 0 < val["num_documents"] < 24  # carved exactly as in training


def test_a_given_val_file_keeps_the_training_file_whole(tiny_bert, contracts_jsonl, tmp_path, capsys):
    from .test_e2e_token import _args as token_args

    run = tmp_path / "tok"
    args = [*token_args(tiny_bert, contracts_jsonl, run), f"data.val_path={contracts_jsonl}"]
    assert main(["train", *args]) == 0
    summary = json.loads((run / "model" / "data_summary.json").read_text())[""]
    assert summary["train documents"] == 24 and summary["val documents"] == 24 and "test documents" not in summary
