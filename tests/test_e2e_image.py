"""End to end through the real CLI on tiny generated data and timm's test_resnet."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hf_tune.cli import main

from .conftest import REPO, python

pytestmark = pytest.mark.slow


def _state(run: Path, step: int) -> dict:
    return json.loads((run / f"checkpoint-{step}" / "trainer_state.json").read_text())


def test_train_writes_files_then_evaluate_predict_and_pipeline(tiny_image_args, tmp_path, capsys):
    assert main(["train", *tiny_image_args]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = tmp_path / "run"
    assert {"eval_accuracy", "eval_f1_macro", "eval_roc_auc"} <= set(out)
    assert "test_accuracy" not in out  # the source has a val split: train is used whole, no test carved
    model = run / "model"
    for name in ("config.json", "model.safetensors", "resolved_config.yaml", "metrics.json"):
        assert (model / name).is_file(), name
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (run / "checkpoint-2" / "resolved_config.yaml").is_file()
    assert _state(run, 4)["global_step"] == 4
    logged = [h for h in _state(run, 4)["log_history"] if "loss" in h]
    assert len(logged) == 4  # logging_steps=1 for 4 steps

    # evaluate on a test-only file: one JSON line, also written to a file
    assert main(["evaluate", str(run), f"data.path={tmp_path / 'tiny_test.npz'}", "data.split=test"]) == 0
    ev = json.loads(capsys.readouterr().out.strip())
    assert ev["split"] == "test" and ev["num_examples"] == 16 and 0.0 <= ev["accuracy"] <= 1.0
    assert json.loads((model / "eval_test_tiny_test.json").read_text()) == ev  # split and source in the name

    # predict == transformers pipeline on the same saved folder
    from PIL import Image
    from transformers import pipeline

    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    x = np.load(tmp_path / "tiny_test.npz")["test_images"][:3]
    for i, a in enumerate(x):
        Image.fromarray(a).save(img_dir / f"{i}.png")
    assert main(["predict", str(run), str(img_dir)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    pipe = pipeline("image-classification", model=str(model))
    for row in rows:
        top = pipe(row["input"])[0]
        # pipeline() runs on a GPU when there is one, hf-tune predict on CPU: kernels differ in the 5th digit
        assert top["label"] == row["label"] and top["score"] == pytest.approx(row["score"], abs=1e-4)

    # the finished run is protected
    assert main(["train", *tiny_image_args]) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_resume_continues_step_count(tiny_image_args, tmp_path, capsys):
    assert main(["train", *tiny_image_args]) == 0
    run = tmp_path / "run"
    import shutil

    shutil.rmtree(run / "model")  # as if the run had crashed after checkpoint-4
    assert main(["train", *tiny_image_args, "training.max_steps=6"]) == 2
    assert "interrupted run (checkpoint-4)" in capsys.readouterr().err
    assert main(["train", *tiny_image_args, "training.max_steps=6", "resume=true"]) == 0
    state = _state(run, 6)
    assert state["global_step"] == 6
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 1-4 from the first run, then 5-6: no restart at 1


def test_bad_inputs_fail_before_training(tiny_image_args, tmp_path, capsys):
    cases = {
        "recipe=nope": "unknown recipe",
        f"data.path={tmp_path / 'missing.npz'}": "missing.npz: file or folder not found",
        "model.name=not_a_timm_model": "not a timm model",
        "training.max_stepz=3": 'did you mean "max_steps"',
    }
    for override, expected in cases.items():
        assert main(["train", *tiny_image_args, override]) == 2
        assert expected in capsys.readouterr().err
    bad = tmp_path / "bad_labels.npz"
    np.savez(bad, train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.array([0, 1, 2, 7]))
    assert main(["train", *tiny_image_args, f"data.path={bad}", "data.labels=[a,b,c]"]) == 2
    assert "outside the 3 classes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written before the checks


def test_script_entry_point_runs_as_a_file(tiny_image_args, tmp_path):
    """`python hf_tune/train.py` (what accelerate launches) works without shadowing installed packages."""
    args = [a.replace("training.max_steps=4", "training.max_steps=2") for a in tiny_image_args]
    r = subprocess.run(
        [python(), str(REPO / "hf_tune" / "train.py"), *args], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert [type(json.loads(line)) for line in lines] == [dict]  # stdout: JSON lines only, logs go to stderr
    assert json.loads(lines[-1])["model_dir"].endswith("model")


def test_focal_loss_with_balanced_weights_trains(tiny_image_args, tmp_path, capsys):
    args = [
        *tiny_image_args,
        "techniques.loss.name=focal",
        "techniques.loss.class_weights=balanced",
        "training.label_smoothing_factor=0.1",
        "training.gradient_accumulation_steps=2",
    ]
    assert main(["train", *args]) == 0
    assert "class weights (balanced)" in capsys.readouterr().err
    state = _state(tmp_path / "run", 4)
    assert all(h["loss"] > 0 for h in state["log_history"] if "loss" in h)


def test_ema_saved_with_checkpoints_resumed_and_used_for_final_model(tiny_image_args, tmp_path, capsys):
    from safetensors.torch import load_file

    args = [*tiny_image_args, "techniques.ema.enabled=true", "techniques.ema.decay=0.5"]
    assert main(["train", *args]) == 0
    run = tmp_path / "run"
    ema4 = load_file(str(run / "checkpoint-4" / "ema.safetensors"))
    final = load_file(str(run / "model" / "model.safetensors"))
    live4 = load_file(str(run / "checkpoint-4" / "model.safetensors"))
    key = next(k for k in ema4 if k.endswith("fc.weight"))
    final_key = next(k for k in final if k.endswith("fc.weight"))
    assert torch_equal(final[final_key], ema4[key])  # final model = EMA weights
    assert not torch_equal(live4[final_key], ema4[key])  # and they differ from the live weights


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a.cpu(), b.cpu()))


def test_ema_restored_on_resume(tiny_image_args, tmp_path, capsys):
    """The resumed run starts from the checkpoint's EMA, not from a fresh copy of the weights."""
    import shutil

    from safetensors.torch import load_file

    from hf_tune.callbacks import EmaCallback

    args = [*tiny_image_args, "techniques.ema.enabled=true", "techniques.ema.decay=0.5"]
    assert main(["train", *args]) == 0
    run = tmp_path / "run"
    shutil.rmtree(run / "model")
    seen = {}
    original = EmaCallback.on_train_begin

    def spy(self, *a, **kw):
        original(self, *a, **kw)
        seen["ema"] = {k: v.clone() for k, v in self.ema.module.state_dict().items()}

    EmaCallback.on_train_begin = spy
    try:
        assert main(["train", *args, "training.max_steps=6", "resume=true"]) == 0
    finally:
        EmaCallback.on_train_begin = original
    saved = load_file(str(run / "checkpoint-4" / "ema.safetensors"))
    key = next(k for k in saved if k.endswith("fc.weight"))
    assert torch_equal(seen["ema"][key], saved[key])


def test_grad_norms_reach_tensorboard(tiny_image_args, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = [
        *tiny_image_args,
        "training.report_to=tensorboard",
        "techniques.monitor.grad_norms=true",
        "training.logging_steps=2",
    ]
    assert main(["train", *args]) == 0
    events = sorted((tmp_path / "run" / "runs").rglob("events.out.tfevents*"))
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/grad_norm" in tags
    assert any(t.startswith("train/grad_norm_pre/") for t in tags)
    assert any(t.startswith("train/grad_norm_post/") for t in tags)
    assert (tmp_path / "run" / "grad_norms.png").is_file()
