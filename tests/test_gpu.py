"""Mixed precision on a CUDA device: clipping after unscaling, EMA, multi-task PCGrad. Skipped without a GPU."""

import json

import pytest
import torch

from hf_tune.cli import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("mode", ["norm", "agc", "value"])
def test_mixed_precision_clipping_bounds_the_unscaled_gradient(tiny_image_args, tmp_path, capsys, precision, mode):
    args = [
        *tiny_image_args,
        f"training.{precision}=true",
        f"techniques.clipping.mode={mode}",
        "techniques.monitor.grad_norms=true",
        "techniques.ema.enabled=true",
        "training.max_grad_norm=0.5",
        "techniques.clipping.value=0.01",
    ]
    assert main(["train", *args]) == 0
    capsys.readouterr()
    state = json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())
    logs = [h for h in state["log_history"] if "loss" in h]
    assert logs and all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    post = [h["grad_norm_post_total"] for h in logs if "grad_norm_post_total" in h]
    pre = [h["grad_norm"] for h in logs]
    assert post and all(p <= q * (1 + 1e-3) for p, q in zip(post, pre, strict=False))
    if mode == "norm":
        assert all(p <= 0.5 * (1 + 1e-2) for p in post)  # measured after unscaling: the real bound


def test_bf16_multitask_with_pcgrad_and_uncertainty(tiny_bert, contracts_jsonl, tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "recipe=contracts_multitask",
        f"model.name={tiny_bert}",
        f"training.output_dir={run}",
        "training.max_steps=6",
        "training.logging_steps=2",
        "training.bf16=true",
        "training.save_strategy=no",
        "multitask.pcgrad=true",
        "multitask.weighting=uncertainty",
        "tasks.clauses.data.window=32",
        "tasks.clauses.data.stride=15",
        *[f"tasks.{t}.data.path={contracts_jsonl}" for t in ("clauses", "clause_types")],
    ]
    assert main(["train", *args]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "eval_clauses_span_f1_micro" in out and "eval_clause_types_f1_micro" in out
    history = json.loads((run / "model" / "log_history.json").read_text())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history if "loss" in h)
