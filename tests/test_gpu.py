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


def _recipe(overrides):
    from hf_tune.config import load_config
    from hf_tune.recipes import RECIPES

    cfg = load_config(overrides)
    return RECIPES.get(cfg.task)(cfg)


def test_gpu_token_path_bf16_sdpa_fused_adamw_length_groups_padded_to_8(tiny_bert, contracts_jsonl, tmp_path):
    from hf_tune.data.batching import LengthGroupedSampler

    recipe = _recipe(
        [
            "recipe=contract_tagging_minilm",
            f"data.path={contracts_jsonl}",
            f"model.name={tiny_bert}",
            f"training.output_dir={tmp_path / 'run'}",
            "training.max_steps=4",
            "training.logging_steps=1",
            "training.bf16=true",
            "training.save_strategy=no",
            "data.window=37",
            "data.stride=15",
            "model.attn_implementation=sdpa",
        ]
    )
    recipe.setup()
    assert recipe.model.config._attn_implementation == "sdpa"
    assert isinstance(recipe.trainer._get_train_sampler(), LengthGroupedSampler)
    batch = recipe.trainer.data_collator([recipe.datasets["train"][i] for i in range(3)])
    assert batch["input_ids"].shape[1] % 8 == 0  # speed.pad_to_multiple_of defaults to 8 on a GPU
    recipe.train()
    opt = recipe.trainer.optimizer
    assert getattr(opt, "optimizer", opt).defaults.get("fused") is True  # Trainer's adamw_torch_fused
    losses = [h["loss"] for h in recipe.trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
    metrics = recipe.evaluate()
    assert "eval_span_f1_micro" in metrics


def test_gpu_text_path_with_torch_compile(tiny_bert, tmp_path):
    path = tmp_path / "texts.jsonl"
    words = {0: "payment", 1: "assignment"}
    rows = [{"text": f"clause {i} about {words[i % 2]} terms " * (1 + i % 5), "label": i % 2} for i in range(48)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = _recipe(
        [
            "recipe=clause_type_minilm",
            f"data.path={path}",
            "data.format=jsonl",
            f"model.name={tiny_bert}",
            f"training.output_dir={tmp_path / 'run'}",
            "training.max_steps=6",
            "training.logging_steps=1",
            "training.bf16=true",
            "training.torch_compile=true",
            "training.eval_strategy=no",
            "training.save_strategy=no",
            "techniques.loss.class_weights=null",
        ]
    )
    recipe.setup()
    recipe.train()
    losses = [h["loss"] for h in recipe.trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
    assert "eval_f1_macro" in recipe.evaluate()
