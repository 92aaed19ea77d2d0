"""Nothing lost, nothing silent: overwrite=true keeps the old run until the new one has saved something and
never touches folders hf_tune did not write; --dry-run checks without training; show/--help explain the keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hf_tune.cli import main
from hf_tune.recipes.base import REPLACED_DIR

pytestmark = pytest.mark.slow


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture()
def finished_run(tiny_image_args, tmp_path, capsys) -> Path:
    assert main(["train", *tiny_image_args]) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    (run / "notes.txt").write_text("my notes")
    return run


def test_overwrite_with_bad_data_keeps_the_old_run(finished_run, tiny_image_args, tmp_path, capsys):
    before = _files(finished_run)
    missing = tmp_path / "missing.npz"
    assert main(["train", *tiny_image_args, "overwrite=true", f"data.path={missing}"]) == 2
    assert "missing.npz" in capsys.readouterr().err
    assert _files(finished_run) == before  # model/, checkpoints, metrics and the user's notes untouched
    assert not (finished_run / REPLACED_DIR).exists()


def test_overwrite_that_fails_before_its_first_save_restores_the_old_run(
    finished_run, tiny_image_args, monkeypatch, capsys
):
    from hf_tune.recipes.base import Recipe

    before = _files(finished_run)

    def boom(self):
        assert (finished_run / REPLACED_DIR).is_dir()  # set aside while the new run trains
        raise RuntimeError("killed before the first save")

    monkeypatch.setattr(Recipe, "train", boom)
    with pytest.raises(RuntimeError, match="killed before the first save"):
        main(["train", *tiny_image_args, "overwrite=true"])
    assert _files(finished_run) == before


def test_overwrite_refuses_folders_hf_tune_did_not_write(finished_run, tiny_image_args, capsys):
    foreign = finished_run / "checkpoint-7"
    foreign.mkdir()
    (foreign / "weights.bin").write_text("someone else's")
    before = _files(finished_run)
    assert main(["train", *tiny_image_args, "overwrite=true"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint-7 was not written by hf_tune" in err and "Traceback" not in err
    assert _files(finished_run) == before


def test_overwrite_replaces_only_hf_tune_parts(finished_run, tiny_image_args, capsys):
    old_model = (finished_run / "model" / "model.safetensors").read_bytes()
    assert main(["train", *tiny_image_args, "overwrite=true", "training.max_steps=2", "training.seed=7"]) == 0
    assert (finished_run / "notes.txt").read_text() == "my notes"
    assert not (finished_run / REPLACED_DIR).exists()
    assert sorted(p.name for p in finished_run.glob("checkpoint-*")) == ["checkpoint-2"]  # checkpoint-4 was old
    assert (finished_run / "model" / "model.safetensors").read_bytes() != old_model


def test_dry_run_plans_without_training_or_writing(tiny_image_args, tmp_path, capsys):
    assert main(["train", *tiny_image_args, "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out.strip())
    assert plan["dry_run"] and plan["task"] == "image_classification" and plan["max_steps"] == 4
    assert plan["examples"]["train"] > 0 and "val" in plan["examples"]
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    assert main(["train", *tiny_image_args, "--dry-run", f"data.path={tmp_path / 'nope.npz'}"]) == 2
    assert "nope.npz" in capsys.readouterr().err


def test_show_and_train_help_list_every_key_with_its_meaning(capsys):
    assert main(["show", "recipe=contract_clauses_minilm", "model.hidden=64"]) == 0
    out = capsys.readouterr().out
    assert "model.hidden" in out and "= 64" in out and "Width of the heads." in out
    assert "techniques.ema.decay" in out and "training.learning_rate" in out
    assert main(["train", "recipe=quickstart", "--help"]) == 0
    out = capsys.readouterr().out
    assert "model.image_size" in out and "data.split_ratios" in out
    assert main(["train", "--help"]) == 0
    assert "pneumonia_resnet18" in capsys.readouterr().out
    assert main(["show", "recipe=quickstart", "model.imagesize=3"]) == 2
    assert 'did you mean "image_size"' in capsys.readouterr().err


def test_hub_token_is_written_to_no_file(tiny_image_args, tmp_path, capsys):
    token = "hf_TESTSECRETtoken1234567890"
    assert main(["train", *tiny_image_args, f"training.hub_token={token}"]) == 0
    run = tmp_path / "run"
    leaks = [str(p) for p in run.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert leaks == []  # training_args.bin of model/ and every checkpoint included
    assert token not in capsys.readouterr().err


def test_predict_output_is_replaced_only_on_success(finished_run, tmp_path, capsys):
    out = tmp_path / "predictions.jsonl"
    out.write_text("earlier predictions\n")
    assert main(["predict", str(finished_run), str(tmp_path / "missing.png"), f"output={out}"]) == 2
    assert out.read_text() == "earlier predictions\n"
    assert main(["predict", str(finished_run), str(tmp_path / "tiny.npz"), f"output={out}"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and "label" in rows[0]
    assert not list(tmp_path.glob(".predictions.jsonl.partial"))


def _folder(root: Path, classes: dict[str, np.ndarray]) -> Path:
    from PIL import Image

    for name, images in classes.items():
        (root / name).mkdir(parents=True)
        for i, a in enumerate(images):
            Image.fromarray(a).save(root / name / f"{i}.png")
    return root


def test_evaluate_maps_folder_classes_by_name_not_by_sorted_position(tiny_image_args, tmp_path, capsys):
    from .conftest import make_images

    x, y = make_images(64, size=16, seed=3)
    y = y.ravel()
    train = _folder(tmp_path / "train", {"normal": x[y == 0], "pneumonia": x[y == 1]})
    args = [a for a in tiny_image_args if not a.startswith("data.path")] + [f"data.path={train}", "data.format=auto"]
    assert main(["train", *args, "training.max_steps=2"]) == 0
    capsys.readouterr()
    run = tmp_path / "run"

    only = _folder(tmp_path / "only_pneumonia", {"Pneumonia": x[y == 1][:10]})  # one folder, sorted first
    assert main(["evaluate", str(run), f"data.path={only}"]) == 0
    ev = json.loads(capsys.readouterr().out.strip())
    assert ev["num_examples"] == 10  # split=auto on a source without splits scores all of it
    assert main(["predict", str(run), str(only)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert ev["accuracy"] == pytest.approx(np.mean([r["label"] == "pneumonia" for r in rows]))

    renamed = _folder(tmp_path / "renamed", {"aa_pneumonia": x[y == 1][:4], "zz_normal": x[y == 0][:4]})
    assert main(["evaluate", str(run), f"data.path={renamed}"]) == 2
    err = capsys.readouterr().err
    assert "aa_pneumonia" in err and "not among the model's classes" in err


def test_relabel_by_name_unit():
    from hf_tune.data.images import ImageSplit, relabel_by_name

    split = ImageSplit(np.zeros((3, 2, 2), np.uint8), np.array([0, 1, 0]))
    out = relabel_by_name(split, ["pneumonia", "normal"], ["Normal", "Pneumonia"], "x")
    assert out.labels.tolist() == [1, 0, 1]
