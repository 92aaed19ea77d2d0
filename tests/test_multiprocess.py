"""The 2-process CPU launch (gloo) through `accelerate launch hf_tune/train.py`."""

import json
import os
import re
import subprocess

import pytest

from .conftest import REPO, python

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def _launch(args: list[str], cwd, port: int) -> subprocess.CompletedProcess:
    """``accelerate launch`` with cpu_ddp.yaml; asserts it succeeded."""
    cmd = [
        python(),
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "accelerate_configs" / "cpu_ddp.yaml"),
        "--main_process_port",
        str(port),
        str(REPO / "hf_tune" / "train.py"),
        *args,
    ]
    # CPU DDP is what these check; on a GPU machine hide the GPUs so both ranks take the gloo/CPU path
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_two_process_cpu_ddp(tiny_image_args, tmp_path):
    args = [a for a in tiny_image_args if not a.startswith("training.eval_strategy")]
    args += ["training.eval_strategy=steps", "training.eval_steps=2", "training.per_device_train_batch_size=4"]
    r = _launch(args, tmp_path, 29533)
    ranks = dict(re.findall(r"\[hf_tune\] rank (\d) metrics (\{.*\})", r.stderr))
    assert set(ranks) == {"0", "1"}, "both ranks must finish training"
    m0, m1 = json.loads(ranks["0"]), json.loads(ranks["1"])
    for key in ("eval_accuracy", "eval_loss"):
        assert m0[key] == pytest.approx(m1[key]), key  # metrics are gathered over both ranks
    assert r.stderr.count("model saved to") == 1  # only rank 0 writes
    run = tmp_path / "run"
    state = json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert (run / "model" / "model.safetensors").is_file()
    # 48 train images, 2 ranks x batch 4 = 8 per step: 4 steps see 32 samples
    assert state["train_batch_size"] == 4


def test_two_process_multitask(tiny_bert, contracts_jsonl, tmp_path):
    """The task sampler and dict labels go through accelerate's sharding and gathering unchanged."""
    from .test_e2e_multitask import _args

    r = _launch(
        _args(tiny_bert, contracts_jsonl, tmp_path / "run", "training.per_device_train_batch_size=4"), tmp_path, 29534
    )
    ranks = dict(re.findall(r"\[hf_tune\] rank (\d) metrics (\{.*\})", r.stderr))
    assert set(ranks) == {"0", "1"}
    m0, m1 = json.loads(ranks["0"]), json.loads(ranks["1"])
    for key in (
        "eval_clauses_loss",
        "eval_clauses_span_f1_micro",
        "eval_clause_types_loss",
        "eval_clause_types_f1_micro",
    ):
        assert m0[key] == pytest.approx(m1[key]), key
    state = json.loads((tmp_path / "run" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and any("loss_clauses" in h for h in state["log_history"])
