"""Every registered recipe kind and output head, end to end through the CLI: train a few steps, write the
report and model card, reload the saved folder and predict. A new kind or head that forgets a piece fails
here, not after a user's training run. The toy kind in tests/toy_kind.py is registered the way
docs/extending.md says and is picked up like the shipped ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_tune.cli import main
from hf_tune.heads import HEADS
from hf_tune.recipes import RECIPES

from . import toy_kind  # noqa: F401  (registers toy_image_regression)

SHIPPED = {"image_classification", "text_classification", "token_classification", "multitask"}
QUICK = [
    "training.max_steps=2",
    "training.num_train_epochs=1",
    "training.per_device_train_batch_size=4",
    "training.per_device_eval_batch_size=8",
    "training.eval_strategy=no",
    "training.save_strategy=no",
    "training.logging_steps=1",
    "training.report_to=none",
    "training.disable_tqdm=true",
    "training.dataloader_pin_memory=false",
]


def test_registries_hold_the_shipped_kinds_and_the_toy():
    assert SHIPPED | {"toy_image_regression"} <= set(RECIPES.names())
    for name in RECIPES.names():
        spec = RECIPES.get(name).config_cls.spec
        assert spec.name == name and spec.modality in ("text", "image") and spec.headline_metric


def test_every_head_is_exercised_by_some_kind(tmp_path: Path, tiny_bert: Path):
    covered = set()
    for name in RECIPES.names():
        covered |= set(RECIPES.get(name).smoke_recipe(tmp_path, str(tiny_bert)))
    assert set(HEADS.names()) <= covered, f"heads without a smoke run: {set(HEADS.names()) - covered}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", RECIPES.names())
def test_kind_trains_reports_reloads_and_predicts(kind: str, tmp_path: Path, tiny_bert: Path, capsys):
    cls = RECIPES.get(kind)
    for head, smoke in cls.smoke_recipe(tmp_path, str(tiny_bert)).items():
        run = tmp_path / f"run_{head}"
        assert main(["train", *smoke.overrides, *QUICK, f"training.output_dir={run}"]) == 0, head
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["model_dir"] == str(run / "model")
        model_dir = run / "model"
        for f in ("config.json", "model.safetensors", "resolved_config.yaml", "metrics.json", "README.md", "report.md"):
            assert (model_dir / f).is_file(), (head, f)
        card = (model_dir / "README.md").read_text()
        assert f"- task: `{kind}`" in card
        assert any(k.startswith("eval_") for k in json.loads((model_dir / "metrics.json").read_text())), head
        assert main(["report", str(run)]) == 0
        capsys.readouterr()
        assert main(["predict", str(run), str(smoke.predict_input), "batch_size=4"]) == 0, head
        rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
        assert rows, head
