"""Parameter groups, optimizers and extra LR schedules: pure functions and small registries.

Blocks: every parameter gets a *block id*: 0 = embeddings/stem, 1..L = encoder layers (BERT
``encoder.layer.i``, timm ResNet stages ``layer1..4``, ViT ``blocks.i``), L + 1 = the head. Layer-wise LR
decay gives block i the rate ``lr * decay ** (L + 1 - i)``; each group's ``lr`` is set explicitly so
every torch/Trainer scheduler scales it correctly (timm's ``lr_scale`` is only honoured by timm's own
schedulers).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from hf_tune.registry import Registry

_BLOCK_PATTERNS = (
    re.compile(r"(?:^|\.)encoder\.layers?\.(\d+)\."),  # BERT-family
    re.compile(r"(?:^|\.)layer(\d+)\."),  # timm ResNet stages layer1..layer4 (1-based)
    re.compile(r"(?:^|\.)(?:blocks|stages)\.(\d+)\."),  # timm ViT / ConvNeXt
)


def block_index(name: str, is_head: bool) -> tuple[int | None, int]:
    """(raw block number or None, pattern index). Head parameters return (None, -1)."""
    if is_head:
        return None, -1
    for k, pat in enumerate(_BLOCK_PATTERNS):
        m = pat.search(name)
        if m:
            return int(m.group(1)), k
    return None, 0


def assign_block_ids(names: Sequence[str], head: set[str]) -> tuple[dict[str, int], int]:
    """Map parameter names to block ids 0..L+1 and return (ids, L)."""
    raw = {n: block_index(n, n in head) for n in names}
    numbers = sorted({b for b, _ in raw.values() if b is not None})
    rank = {b: i + 1 for i, b in enumerate(numbers)}  # 0-based BERT and 1-based ResNet both become 1..L
    n_blocks = len(numbers)
    ids = {}
    for n, (b, _) in raw.items():
        if n in head:
            ids[n] = n_blocks + 1
        elif b is None:
            # not inside a numbered block: before the blocks (embeddings, stem) unless it follows them
            # (final norms, poolers), which train with the top block
            ids[n] = n_blocks if _after_blocks(n) else 0
        else:
            ids[n] = rank[b]
    return ids, n_blocks


def _after_blocks(name: str) -> bool:
    return any(k in name for k in ("pooler", "final_layer_norm", "norm_pre", "fc_norm", "head_drop")) or bool(
        re.search(r"(?:^|\.)norm\.", name)
    )


def head_parameter_names(model: torch.nn.Module) -> set[str]:
    """Parameters of the task head: a timm model's classifier, or whatever sits outside an HF base model."""
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):  # peft wrapper: same names, prefixed
        return {f"base_model.model.{n}" for n in head_parameter_names(model.get_base_model())}
    names = {n for n, _ in model.named_parameters()}
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None and hasattr(timm_model, "get_classifier"):
        head = {id(p) for p in timm_model.get_classifier().parameters()}
        return {n for n, p in model.named_parameters() if id(p) in head}
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and hasattr(model, prefix):
        return {n for n in names if not n.startswith(prefix + ".")}
    return set()


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and normalization weights (1-d tensors) get no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias")


def layerwise_lrs(base_lr: float, n_blocks: int, layer_decay: float | None, backbone_lr: float | None) -> list[float]:
    """Learning rate per block id 0..n_blocks+1 (the last one is the head, which keeps ``base_lr``)."""
    top = n_blocks + 1
    if layer_decay is not None:
        return [base_lr * layer_decay ** (top - i) for i in range(top + 1)]
    if backbone_lr is not None:
        return [backbone_lr] * top + [base_lr]
    return [base_lr] * (top + 1)


def param_groups(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    head: set[str],
    *,
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
    backbone_lr: float | None = None,
    no_decay_bias_norm: bool = True,
) -> list[dict[str, Any]]:
    """Optimizer groups keyed by (block, decay), each with explicit ``lr`` and ``weight_decay``.

    Frozen parameters are included on purpose: groups exist from step 0 so unfreezing later needs no new
    optimizer (a parameter without a gradient is skipped by torch optimizers).
    """
    named = list(named_params)
    ids, n_blocks = assign_block_ids([n for n, _ in named], head)
    lrs = layerwise_lrs(lr, n_blocks, layer_decay, backbone_lr)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for n, p in named:
        nd = no_decay_bias_norm and is_no_decay(n, p)
        key = (ids[n], nd)
        g = groups.setdefault(
            key,
            {
                "params": [],
                "names": [],
                "lr": lrs[ids[n]],
                "weight_decay": 0.0 if nd else weight_decay,
                "block": ids[n],
            },
        )
        g["params"].append(p)
        g["names"].append(n)
    return [groups[k] for k in sorted(groups)]


# --------------------------------------------------------------------------------------------------
# Optimizers: hf_tune names -> Trainer ``optim`` names (Trainer builds them) + typed hyperparameters
# --------------------------------------------------------------------------------------------------

OPTIMIZERS: Registry[Callable[[Any], dict[str, Any]]] = Registry("optimizer")


def _register_optimizers() -> None:
    add = OPTIMIZERS.add
    add("sgd", lambda o: {"momentum": o.momentum, "nesterov": o.nesterov}, trainer_optim="sgd")
    add("adagrad", lambda o: {"eps": o.eps}, trainer_optim="adagrad")
    add("rmsprop", lambda o: {"alpha": o.alpha, "eps": o.eps, "momentum": o.momentum}, trainer_optim="rmsprop")
    # Trainer has no plain (L2-coupled) Adam: same base name, torch.optim.Adam as the class
    add("adam", lambda o: {"betas": tuple(o.betas), "eps": o.eps}, trainer_optim="adamw_torch", cls=torch.optim.Adam)
    add("adamw", lambda o: {"betas": tuple(o.betas), "eps": o.eps}, trainer_optim="adamw_torch")
    add(
        "adafactor",
        lambda o: {"scale_parameter": False, "relative_step": False, "warmup_init": False},
        trainer_optim="adafactor",
    )
    add("schedule_free_adamw", lambda o: {"betas": tuple(o.betas), "eps": o.eps}, trainer_optim="schedule_free_adamw")
    add("schedule_free_sgd", lambda o: {"momentum": o.momentum}, trainer_optim="schedule_free_sgd")


_register_optimizers()


# --------------------------------------------------------------------------------------------------
# Extra schedules (multipliers of the base LR, after linear warmup): pure functions of the step
# --------------------------------------------------------------------------------------------------

SCHEDULES: Registry[Callable[..., float]] = Registry("schedule")


def _warm(step: int, warmup: int) -> float | None:
    return (step + 1) / warmup if step < warmup else None


@SCHEDULES.register("step")
def step_schedule(step: int, warmup: int, step_size: int, gamma: float, **_: Any) -> float:
    """lr0 * gamma ** floor((t - warmup) / step_size)."""
    w = _warm(step, warmup)
    return w if w is not None else gamma ** ((step - warmup) // step_size)


@SCHEDULES.register("multistep")
def multistep_schedule(step: int, warmup: int, milestones: Sequence[int], gamma: float, **_: Any) -> float:
    """lr0 * gamma ** (number of milestones passed); milestones count optimizer steps after warmup."""
    w = _warm(step, warmup)
    return w if w is not None else gamma ** sum(step - warmup >= m for m in milestones)


@SCHEDULES.register("exponential")
def exponential_schedule(step: int, warmup: int, gamma: float, **_: Any) -> float:
    """lr0 * gamma ** (t - warmup): gamma per optimizer step (e.g. 0.999)."""
    w = _warm(step, warmup)
    return w if w is not None else gamma ** (step - warmup)


@SCHEDULES.register("cosine_restarts")
def cosine_restarts_schedule(
    step: int, warmup: int, restart_period: int, restart_mult: int, min_lr_ratio: float, **_: Any
) -> float:
    """SGDR (Loshchilov & Hutter): cosine from 1 to min_lr_ratio over a cycle, cycles growing by restart_mult."""
    w = _warm(step, warmup)
    if w is not None:
        return w
    t, period = step - warmup, restart_period
    while t >= period:
        t -= period
        period *= restart_mult
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t / period))


def build_schedule(name: str, optimizer: torch.optim.Optimizer, warmup: int, **kwargs: Any):
    """A LambdaLR applying the named multiplier to every group's own (explicit) lr."""
    fn = SCHEDULES.get(name)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: fn(step, warmup, **kwargs))


def swa_schedule(base, optimizer, *, start_step: int, swa_lr: float, reference_lr: float, anneal_steps: int = 0):
    """``base`` until ``start_step``, then torch's SWALR: each group's learning rate anneals (cosine, over
    ``anneal_steps``) to ``swa_lr`` scaled by the group's share of ``reference_lr`` (the head's LR), so
    layer-wise ratios survive into the SWA phase."""
    from torch.optim.lr_scheduler import SequentialLR
    from torch.optim.swa_utils import SWALR

    lrs = [swa_lr * g.get("initial_lr", g["lr"]) / reference_lr for g in optimizer.param_groups]
    swalr = SWALR(optimizer, swa_lr=lrs, anneal_epochs=max(1, anneal_steps), anneal_strategy="cos")
    return SequentialLR(optimizer, [base, swalr], milestones=[start_step])
