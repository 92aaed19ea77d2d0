"""Weight fusion, the math: averaging state dicts, interpolating between two, the greedy soup rule, and
recomputing BatchNorm statistics for averaged weights.

Pure functions over tensors and callables, so they are tested on hand-made state dicts; loading runs, scoring
them and writing model folders is :mod:`hf_tune.soup`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn

State = Mapping[str, torch.Tensor]
FUSION_FILE = "fusion.json"
"""Written into a fused model folder: the method, every ingredient with its held-out score, the fused score."""
T = TypeVar("T")


def average_states(states: Sequence[State], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """The (weighted) mean of state dicts with the same keys and shapes, accumulated in float64 and cast back
    to each tensor's dtype (timm's checkpoint averaging does the same). Integer tensors, such as BatchNorm's
    ``num_batches_tracked``, are counts, not weights: they are taken from the first state."""
    if not states:
        raise ValueError("average_states needs at least one state dict")
    w = torch.tensor([1.0] * len(states) if weights is None else list(weights), dtype=torch.float64)
    if len(w) != len(states) or (w < 0).any() or float(w.sum()) <= 0:
        raise ValueError(f"weights must be {len(states)} non-negative numbers with a positive sum, got {weights}")
    w = w / w.sum()
    out = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            out[key] = first.clone()
            continue
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for wi, s in zip(w, states, strict=True):
            acc += wi * s[key].detach().to("cpu", torch.float64)
        out[key] = acc.to(first.dtype)
    return out


def interpolate_states(
    start: State, end: State, alpha: float, keys: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * start + alpha * end`` for ``keys`` (default: every floating tensor both have, with the
    same shape); every other tensor is ``end``'s. alpha=0 gives ``start``, alpha=1 ``end`` (WiSE-FT:
    start = the weights fine-tuning began from, end = the fine-tuned weights)."""
    chosen = set(keys) if keys is not None else set(start)
    out = {}
    for key, e in end.items():
        s = start.get(key)
        if key in chosen and s is not None and s.shape == e.shape and e.is_floating_point():
            mixed = (1.0 - alpha) * s.detach().to("cpu", torch.float64) + alpha * e.detach().to("cpu", torch.float64)
            out[key] = mixed.to(e.dtype)
        else:
            out[key] = e.clone()
    return out


@dataclass
class GreedyStep:
    """One ingredient considered by the greedy soup: its own score, the soup's score with it, and the verdict."""

    name: str
    own_score: float
    soup_score: float
    added: bool


@dataclass
class GreedyResult:
    chosen: list[str]
    score: float
    steps: list[GreedyStep] = field(default_factory=list)


def greedy_soup(
    names: Sequence[str],
    own_scores: Mapping[str, float],
    score_soup: Callable[[list[str]], float],
    *,
    higher_is_better: bool = True,
) -> GreedyResult:
    """The model-soups greedy rule (Wortsman et al. 2022): sort the ingredients by their own held-out score, start
    from the best one, and add each next ingredient only if the held-out score of the soup with it does not drop.

    ``score_soup(names)`` scores the uniform average of the named ingredients."""
    sign = 1.0 if higher_is_better else -1.0
    order = sorted(names, key=lambda n: sign * own_scores[n], reverse=True)
    chosen, best = [order[0]], own_scores[order[0]]
    steps = [GreedyStep(order[0], best, best, True)]
    for name in order[1:]:
        candidate = score_soup([*chosen, name])
        added = sign * candidate >= sign * best
        steps.append(GreedyStep(name, own_scores[name], candidate, added))
        if added:
            chosen.append(name)
            best = candidate
    return GreedyResult(chosen, best, steps)


def state_differences(reference: State, other: State, limit: int = 3) -> list[str]:
    """Why two state dicts cannot be averaged: missing and unexpected keys, and shape mismatches (the first
    ``limit`` of each)."""
    missing = [k for k in reference if k not in other]
    extra = [k for k in other if k not in reference]
    shapes = [
        f"{k} {tuple(other[k].shape)} vs {tuple(v.shape)}"
        for k, v in reference.items()
        if k in other and other[k].shape != v.shape
    ]
    out = []
    for what, items in (("missing", missing), ("unexpected", extra), ("shape differs", shapes)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            out.append(f"{what}: {', '.join(items[:limit])}{more}")
    return out


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recompute_batchnorm(model: nn.Module, inputs: Iterable[torch.Tensor]) -> int:
    """Recompute BatchNorm running statistics from ``inputs`` (the model's main input, e.g. pixel_values of
    training batches) with torch's ``swa_utils.update_bn``: averaged weights do not match averaged statistics,
    so a soup or an SWA model with the old buffers scores far below its weights (Izmailov et al. 2018).
    Returns the number of batches used; the model is left in eval mode."""
    counted = []

    def counting(it):
        for x in it:
            counted.append(1)
            yield x

    device = next(model.parameters()).device
    torch.optim.swa_utils.update_bn(counting(inputs), model, device=device)
    model.eval()
    return len(counted)
