"""Gradient clipping math as pure functions over parameter lists (norm clipping itself is Trainer's).

- value clipping: clamp every gradient element to [-v, v] (changes the update direction);
- AGC (Brock et al. 2021, NFNets): per output unit, scale the gradient so that
  ||g|| <= factor * max(||W||, eps) (unit-wise norms over all dims but the first);
- auto threshold: clip the global norm at a percentile of the recent pre-clip norm history.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch


def _grads(params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    return [p for p in params if p.grad is not None]


def global_grad_norm(params: Iterable[torch.nn.Parameter]) -> float:
    """L2 norm over all gradients together (what Trainer logs as ``grad_norm``)."""
    grads = [p.grad.detach() for p in _grads(params)]
    if not grads:
        return 0.0
    # torch's fused (foreach) kernel: one pass, no per-tensor Python loop on the hot path
    return float(torch.nn.utils.get_total_norm(grads, norm_type=2.0))


def clip_by_value_(params: Iterable[torch.nn.Parameter], value: float) -> None:
    """Clamp every gradient element to [-value, value] in place."""
    torch.nn.utils.clip_grad_value_(_grads(params), value)


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """Norm per output unit: over all dims but the first (vectors and scalars: the whole tensor)."""
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


def adaptive_clip_(params: Iterable[torch.nn.Parameter], factor: float = 0.01, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping in place: g <- g * min(1, factor * max(|W|, eps) / |g|) per unit."""
    for p in _grads(params):
        w_norm = unitwise_norm(p.detach().float()).clamp_(min=eps)
        g = p.grad.detach()
        g_norm = unitwise_norm(g.float())
        max_norm = w_norm * factor
        scale = torch.where(g_norm > max_norm, max_norm / g_norm.clamp(min=1e-6), torch.ones_like(g_norm))
        g.mul_(scale.to(g.dtype))


def percentile_threshold(history: Sequence[float], percentile: float, min_history: int, fallback: float) -> float:
    """The auto-clip threshold: ``percentile`` of the finite norms seen so far, or ``fallback`` until
    ``min_history`` of them exist (early norms are unrepresentative)."""
    finite = [h for h in history if np.isfinite(h)]
    if len(finite) < min_history:
        return fallback
    return float(np.percentile(finite, percentile))
