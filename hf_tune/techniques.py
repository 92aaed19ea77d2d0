"""Builders that turn ``techniques:`` settings into the pieces Trainer takes: callbacks, parameter-group and
optimizer arguments, a loss, a LoRA-wrapped or partly frozen model.

Each builder takes explicit arguments (the settings section it needs and facts read from the built
``TrainingArguments``), never the whole config, so it works from notebooks and tests, and no Trainer default is
re-declared here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hf_tune.schema import (
    ClippingConfig,
    EmaConfig,
    FreezeConfig,
    LoraConfig,
    LossConfig,
    LrConfig,
    MonitorConfig,
    OptimConfig,
    SwaConfig,
)


def log(msg: str) -> None:
    """Progress messages go to stderr so stdout stays machine-readable (JSON lines)."""
    print(f"[hf_tune] {msg}", file=sys.stderr, flush=True)


def hf_tune_clips(clipping: ClippingConfig, monitor: MonitorConfig) -> bool:
    """Clipping moves from Trainer to GradientCallback for non-norm modes or per-block monitoring."""
    return clipping.mode != "norm" or monitor.grad_norms


def build_grad_callback(clipping: ClippingConfig, monitor: MonitorConfig, max_grad_norm: float):
    """The gradient callback (clipping modes, per-block norms, non-finite skipping), or None when Trainer's own
    clipping is all that was asked. ``max_grad_norm`` is the user's ``training.max_grad_norm`` as
    TrainingArguments resolved it (before hf_tune hands clipping to the callback)."""
    from hf_tune.callbacks import GradientCallback

    clips = hf_tune_clips(clipping, monitor)
    if not (clips or monitor.skip_nonfinite):
        return None
    return GradientCallback(
        mode=clipping.mode,
        max_norm=max_grad_norm,
        value=clipping.value,
        agc_factor=clipping.agc_factor,
        agc_eps=clipping.agc_eps,
        auto_percentile=clipping.auto_percentile,
        auto_window=clipping.auto_window,
        auto_min_history=clipping.auto_min_history,
        monitor=monitor.grad_norms,
        depth=monitor.depth,
        skip_nonfinite=monitor.skip_nonfinite,
        max_nonfinite_in_a_row=monitor.max_nonfinite_in_a_row,
        plot=monitor.plot,
        clip=clips,
    )


def build_ema_callback(ema: EmaConfig, resume_from: str | None):
    from hf_tune.callbacks import EmaCallback

    return EmaCallback(ema.decay, ema.warmup, resume_from) if ema.enabled else None


def swa_settings(swa: SwaConfig, resume_from: str | None) -> dict[str, Any]:
    """HfTuneTrainer kwargs for ``techniques.swa``: the averaging callback and the SWA learning rate."""
    from hf_tune.callbacks import SwaCallback

    if not swa.enabled:
        return {}
    callback = SwaCallback(swa.start, swa.interval, swa.bn_batches, resume_from)
    return {"swa": callback, "swa_lr": swa.lr, "swa_anneal_steps": swa.anneal_steps}


LORA_DEFAULT_TARGETS = ["query", "key", "value", "dense"]


def wrap_lora(model, *, r: int, alpha: int, dropout: float, target_modules: list[str] | None, task_type: str | None):
    """peft LoRA on the attention/FFN projections; the task head stays fully trainable (modules_to_save)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    from hf_tune.optim import head_parameter_names

    heads = sorted({n.rsplit(".", 1)[0] for n in head_parameter_names(model)})  # e.g. classifier, timm_model.fc
    cfg = PeftLoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules or LORA_DEFAULT_TARGETS,
        modules_to_save=heads or None,
        task_type=getattr(TaskType, task_type) if task_type else None,
    )
    wrapped = get_peft_model(model, cfg)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapped.parameters())
    log(f"LoRA r={r}: {trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)")
    return wrapped


def apply_transfer_controls(model, freeze: FreezeConfig, lora: LoraConfig, lora_task_type: str | None):
    """Freeze blocks (recording them for gradual unfreezing) and/or wrap the model with LoRA.

    Returns ``(model, unfreeze callback or None)``; runs after the model is built and before Trainer builds
    the optimizer from it.
    """
    from hf_tune.callbacks import UnfreezeCallback
    from hf_tune.optim import assign_block_ids, head_parameter_names

    if lora.enabled:
        wrapped = wrap_lora(
            model,
            r=lora.r,
            alpha=lora.alpha,
            dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type=lora_task_type,
        )
        return wrapped, None
    if not (freeze.embeddings or freeze.first_n_blocks):
        return model, None
    named = list(model.named_parameters())
    ids, n_blocks = assign_block_ids([n for n, _ in named], head_parameter_names(model))
    top = min(freeze.first_n_blocks, n_blocks)
    blocks = [[p for n, p in named if ids[n] == b] for b in range(top + 1)]  # 0 = embeddings/stem
    for params in blocks:
        for p in params:
            p.requires_grad_(False)
    frozen = sum(p.numel() for params in blocks for p in params)
    log(f"frozen: embeddings/stem + {top} of {n_blocks} blocks ({frozen:,} parameters)")
    return model, UnfreezeCallback(blocks, freeze.unfreeze_at_steps) if freeze.unfreeze_at_steps else None


def optimizer_settings(
    model, *, optim: OptimConfig, lr: LrConfig, unfreezes: bool, learning_rate: float, weight_decay: float
) -> dict[str, Any]:
    """HfTuneTrainer kwargs for parameter groups, optimizer hyperparameters and extra schedules."""
    from hf_tune.optim import OPTIMIZERS, head_parameter_names, param_groups

    out: dict[str, Any] = {}
    if optim.name:
        entry = OPTIMIZERS.entry(optim.name)
        out["optimizer_kwargs"] = entry.obj(optim)
        out["optimizer_cls"] = entry.meta.get("cls")
    if lr.layer_decay is not None or lr.backbone_lr is not None or unfreezes:
        head = head_parameter_names(model)
        out["param_groups_fn"] = lambda m: param_groups(
            m.named_parameters(),
            head,
            lr=learning_rate,
            weight_decay=weight_decay,
            layer_decay=lr.layer_decay,
            backbone_lr=lr.backbone_lr,
            no_decay_bias_norm=lr.no_decay_bias_norm,
        )
    if optim.schedule:
        keys = ("step_size", "gamma", "milestones", "restart_period", "restart_mult", "min_lr_ratio")
        out["schedule"] = (optim.schedule, {k: getattr(optim, k) for k in keys})
    return out


def build_class_loss(
    loss: LossConfig, *, label_names: Sequence[str], train_labels: Callable[[], Any], label_smoothing: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The configured classification loss (focal, class weights, label smoothing) as ``fn(logits, labels)``,
    or None when the model's own loss is exactly what was asked. ``train_labels`` is called only for
    ``class_weights: balanced``; ``label_smoothing`` is TrainingArguments' ``label_smoothing_factor``."""
    from hf_tune.errors import ConfigError
    from hf_tune.losses import balanced_class_weights, build_loss

    weights = loss.class_weights
    if weights == "balanced":
        weights = balanced_class_weights(train_labels(), len(label_names))
        log(f"class weights (balanced): {[round(w, 3) for w in weights]}")
    elif weights is not None and len(weights) != len(label_names):
        raise ConfigError(
            [f"techniques.loss.class_weights has {len(weights)} values for {len(label_names)} classes {label_names}"]
        )
    return build_loss(
        loss.name,
        focal_gamma=loss.focal_gamma,
        focal_alpha=loss.focal_alpha,
        class_weights=weights,
        label_smoothing=label_smoothing,
    )
