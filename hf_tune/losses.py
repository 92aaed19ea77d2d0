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
