"""Classification losses for imbalance, as pure functions of (logits, labels).

Logits may be (N, C) for sequence/image classification or (N, T, C) for token classification; labels
equal to ``ignore_index`` (-100: padding, special tokens, non-first subwords) contribute nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from hf_tune.registry import Registry

IGNORE_INDEX = -100
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: Registry[Callable[..., torch.Tensor]] = Registry("loss")


def balanced_class_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> list[float]:
    """sklearn's 'balanced' weights n / (k * count_c); a class that never occurs gets weight 1."""
    y = np.asarray(labels).reshape(-1)
    y = y[y != IGNORE_INDEX]
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, len(y) / (num_classes * np.maximum(counts, 1)), 1.0)
    return w.tolist()


@LOSSES.register("cross_entropy")
def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean (optionally class-weighted, label-smoothed) cross-entropy over non-ignored targets."""
    c = logits.shape[-1]
    return F.cross_entropy(
        logits.reshape(-1, c).float(),
        labels.reshape(-1),
        weight=None if class_weights is None else class_weights.to(logits.device, torch.float32),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )


@LOSSES.register("focal")
def focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma: float = 2.0,
    alpha: float | None = None,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): mean over targets of -a_t (1 - p_t)^gamma log p_t.

    ``alpha`` weights class 0 (the usual "background"/"O"/"normal") by 1 - alpha and every other class
    by alpha; ``class_weights`` multiplies per class. With gamma=0, alpha=None and no weights this is
    exactly cross-entropy. Label smoothing mixes the one-hot target with the uniform distribution in the
    log-likelihood term, as torch's cross-entropy does.
    """
    c = logits.shape[-1]
    flat_logits = logits.reshape(-1, c).float()
    flat_labels = labels.reshape(-1)
    keep = flat_labels != IGNORE_INDEX
    if not keep.any():
        return flat_logits.sum() * 0.0  # keeps the graph; a batch of padding only
    logp = F.log_softmax(flat_logits[keep], dim=-1)
    y = flat_labels[keep]
    logp_t = logp.gather(1, y[:, None]).squeeze(1)
    nll = -logp_t if label_smoothing == 0 else -(1 - label_smoothing) * logp_t - label_smoothing * logp.mean(-1)
    weight = (1.0 - logp_t.exp()).clamp(min=0).pow(gamma)
    if alpha is not None:
        weight = weight * torch.where(y == 0, 1.0 - alpha, alpha)
    if class_weights is not None:
        weight = weight * class_weights.to(logits.device, torch.float32)[y]
    return (weight * nll).mean()


def build_loss(
    name: str,
    *,
    focal_gamma: float = 2.0,
    focal_alpha: float | None = None,
    class_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
) -> LossFn | None:
    """A loss closure for HfTuneTrainer, or None when the model's own loss is exactly what was asked."""
    if name == "cross_entropy" and class_weights is None and label_smoothing == 0.0:
        return None  # the model's built-in loss; Trainer's label smoother covers label_smoothing_factor
    fn = LOSSES.get(name)
    w = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
    kwargs = {"class_weights": w, "label_smoothing": label_smoothing}
    if name == "focal":
        kwargs |= {"gamma": focal_gamma, "alpha": focal_alpha}
    return partial(fn, **kwargs)


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 0.0) -> torch.Tensor:
    """Mean binary cross-entropy over labelled token rows (rows of -100 are padding/ignored tokens);
    gamma > 0 gives the sigmoid focal loss."""
    mask = labels[..., 0] != IGNORE_INDEX
    x, y = logits[mask].float(), labels[mask].float()
    if x.numel() == 0:
        return logits.sum() * 0.0
    loss = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none")
    if gamma > 0:
        p_t = torch.where(y > 0.5, x.sigmoid(), 1 - x.sigmoid())
        loss = loss * (1 - p_t).pow(gamma)
    return loss.mean()


# --------------------------------------------------------------------------------------------------
# Distillation and anti-forgetting (techniques.distill, techniques.anchor)
# --------------------------------------------------------------------------------------------------


def kd_softmax_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, the mean over the positions in ``mask``
    (every position when None). The T^2 keeps its gradient on the scale of the hard loss's (Hinton et al.)."""
    t = float(temperature)
    c = student.shape[-1]
    s, te = student.reshape(-1, c).float() / t, teacher.reshape(-1, c).float().detach() / t
    if mask is not None:
        keep = mask.reshape(-1)
        s, te = s[keep], te[keep]
    if s.shape[0] == 0:
        return student.sum() * 0.0
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(te, -1), log_target=True, reduction="none").sum(-1)
    return t * t * kl.mean()


def kd_sigmoid_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The per-output binary version for sigmoid heads: ``T^2 * BCE(sigmoid(student / T), sigmoid(teacher / T))``
    minus the teacher's own entropy, i.e. the KL between the two Bernoullis (zero when they agree)."""
    t = float(temperature)
    s, te = student.float() / t, teacher.float().detach() / t
    if mask is not None:
        s, te = s[mask], te[mask]
    if s.numel() == 0:
        return student.sum() * 0.0
    p = te.sigmoid()
    kl = F.binary_cross_entropy_with_logits(s, p, reduction="none") - F.binary_cross_entropy_with_logits(
        te, p, reduction="none"
    )
    return t * t * kl.mean()


def distillation_loss(hard: torch.Tensor, soft: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * hard + (1 - alpha) * soft``: alpha=1 is plain training on the labels."""
    return alpha * hard + (1.0 - alpha) * soft


def anchor_penalty(
    params: Sequence[torch.Tensor],
    anchors: Sequence[torch.Tensor],
    strength: float,
    weights: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """``strength / 2 * sum_i F_i (w_i - w0_i)^2``: L2-SP with ``weights`` None (F = 1), EWC with the Fisher
    diagonal. Zero at the anchor; its gradient ``strength * F * (w - w0)`` points away from it, so a step
    against the gradient moves back toward the anchor."""
    total = params[0].new_zeros(())
    for i, (w, w0) in enumerate(zip(params, anchors, strict=True)):
        d = (w - w0.to(w.device, w.dtype)).pow(2)
        if weights is not None:
            d = d * weights[i].to(w.device, w.dtype)
        total = total + d.sum()
    return 0.5 * strength * total
