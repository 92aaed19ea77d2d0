"""Faults during a run: a kill in the middle of a checkpoint save or of the final save, a full disk. Nothing
finished is lost, resume picks the last complete checkpoint, and a resumed run ends with the weights of an
uninterrupted one (EMA and augmentation on)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_tune.cli import main
from hf_tune.schema import COMPLETE_MARK

pytestmark = pytest.mark.slow


def _image_args(tiny_image_args: list[str], out: Path) -> list[str]:
    keep = [a for a in tiny_image_args if not a.startswith("training.output_dir")]
    return [*keep, f"training.output_dir={out}", "training.save_total_limit=3", "techniques.ema.enabled=true"]


def _kill_during_last_save(run: Path) -> None:
    """What SIGKILL during checkpoint-4's save and before the final save leaves behind."""
    shutil.rmtree(run / "model")
    (run / "metrics.json").unlink()
    for name in (COMPLETE_MARK, "trainer_state.json", "optimizer.pt"):
        (run / "checkpoint-4" / name).unlink(missing_ok=True)


def _same_weights(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


KILLER = """
import os, signal, sys
import torch

import hf_tune.recipes.base as base
from hf_tune.cli import main

where = os.environ["KILL_AT"]
real_save = torch.save


def killed_half_way(obj, f, *args, **kwargs):
    if where == "checkpoint" and "checkpoint-4" in str(f) and str(f).endswith("optimizer.pt"):
        with open(f, "wb") as half:  # part of the file is on disk when the process dies
            half.write(b"PK\\x03\\x04 partial")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)


def killed_after_the_weights(self, model_dir):
    os.kill(os.getpid(), signal.SIGKILL)  # model/ has its weights, not yet its config and metrics


torch.save = killed_half_way
if where == "final":
    base.Recipe.save_extras = killed_after_the_weights
sys.exit(main(sys.argv[1:]))
"""


def _killed_run(args: list[str], where: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``hf-tune train ARGS`` in a process that SIGKILLs itself at ``where`` (a real kill, not a simulation)."""
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "KILL_AT": where}
    return subprocess.run([sys.executable, str(script), "train", *args], env=env, capture_output=True, text=True)


def test_sigkill_during_a_checkpoint_write_resumes_from_the_previous_one_to_the_same_weights(
    tiny_image_args, tmp_path, capsys
):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(["train", *_image_args(tiny_image_args, straight)]) == 0
    proc = _killed_run(_image_args(tiny_image_args, killed), "checkpoint", tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (killed / "checkpoint-2" / COMPLETE_MARK).is_file() and (killed / "checkpoint-4").is_dir()
    assert not (killed / "checkpoint-4" / COMPLETE_MARK).exists()
    capsys.readouterr()
    assert main(["train", *_image_args(tiny_image_args, killed)]) == 2  # not "finished", not silently restarted
    assert "holds an interrupted run" in capsys.readouterr().err
    assert main(["train", *_image_args(tiny_image_args, killed), "resume=true"]) == 0
    err = capsys.readouterr().err
    assert "skipped incomplete checkpoint-4" in err and "resuming from" in err and "checkpoint-2" in err
    assert (killed / "checkpoint-4.partial").is_dir()
    assert _same_weights(straight, killed) == 0.0  # EMA and augmentation on


def test_sigkill_during_the_final_save_is_an_interrupted_run_that_resumes(tiny_image_args, tmp_path, capsys):
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert main(["train", *_image_args(tiny_image_args, straight)]) == 0
    proc = _killed_run(_image_args(tiny_image_args, run), "final", tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (run / "model" / "model.safetensors").is_file() and not (run / "model" / "metrics.json").exists()
    capsys.readouterr()
    assert main(["train", *_image_args(tiny_image_args, run)]) == 2
    err = capsys.readouterr().err
    assert "its final save did not finish" in err and "resume=true" in err and "overwrite=true" in err
    assert main(["evaluate", str(run), f"data.path={tiny_image_args[1].split('=', 1)[1]}"]) == 2
    assert "interrupted run" in capsys.readouterr().err  # not evaluated as if it were finished
    assert main(["train", *_image_args(tiny_image_args, run), "resume=true"]) == 0
    assert (run / "model" / "metrics.json").is_file()
    assert _same_weights(straight, run) == 0.0


def test_disk_full_during_a_save_is_named_and_keeps_earlier_checkpoints(tiny_image_args, tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                "file write failed"
            )
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "run"
    assert main(["train", *_image_args(tiny_image_args, run)]) == 1
    err = capsys.readouterr().err
    assert "disk full while writing under" in err and "resume=true" in err and "Traceback" not in err
    assert (run / "checkpoint-2" / COMPLETE_MARK).is_file()
    assert not (run / "checkpoint-4" / COMPLETE_MARK).exists()
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", *_image_args(tiny_image_args, run), "resume=true"]) == 0


def test_text_run_with_augmentation_and_ema_resumes_to_the_same_weights(tmp_path, tiny_bert, capsys):
    rows = [{"text": f"the party shall pay the fee number {i} on time", "label": i % 2} for i in range(32)]
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lex = tmp_path / "lex.json"
    lex.write_text(json.dumps({"party": ["company"], "pay": ["remit"], "fee": ["charge"], "time": ["schedule"]}))

    def args(out: Path) -> list[str]:
        return [
            "train",
            "recipe=clause_type_minilm",
            f"data.path={data}",
            "data.format=jsonl",
            f"model.name={tiny_bert}",
            "data.augment.enabled=true",
            f"data.augment.synonyms={lex}",
            "data.augment.synonym=0.5",
            "techniques.ema.enabled=true",
            "training.max_steps=4",
            "training.save_strategy=steps",
            "training.save_steps=2",
            "training.save_total_limit=3",
            "training.eval_strategy=no",
            "training.per_device_train_batch_size=4",
            "training.disable_tqdm=true",
            "training.dataloader_pin_memory=false",
            f"training.output_dir={out}",
        ]

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(args(straight)) == 0
    assert main(args(killed)) == 0
    _kill_during_last_save(killed)
    assert main([*args(killed), "resume=true"]) == 0
    assert _same_weights(straight, killed) == 0.0
