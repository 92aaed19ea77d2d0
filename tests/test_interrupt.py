"""SIGINT during training: a checkpoint at the current step, exit 130, the resume command printed, and the run
resumes to its end (issue: nothing lost)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def test_sigint_saves_a_checkpoint_and_prints_the_resume_command(tiny_image_args, tmp_path):
    run = tmp_path / "run"
    args = [a for a in tiny_image_args if not a.startswith(("training.max_steps", "training.save_steps"))]
    cmd = [sys.executable, "-m", "hf_tune.cli", "train", *args, "training.max_steps=100000"]
    cmd.append("training.save_steps=50000")
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and "'loss'" not in log.read_text():
            time.sleep(0.5)  # until training steps are being logged
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=240)
    err = log.read_text()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "resume=true" in err
    ckpts = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(ckpts) == 1 and (ckpts[0] / "resolved_config.yaml").is_file()
    assert not (run / "model").exists()  # not called finished
    step = int(ckpts[0].name.split("-")[1])
    assert 0 < step < 100000

    from hf_tune.cli import main

    assert main(["train", *args, f"training.max_steps={step + 2}", "resume=true"]) == 0
    assert (run / "model" / "model.safetensors").is_file()
