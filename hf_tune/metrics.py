"""Metric functions (pure: arrays in, floats out), wrapped as Trainer ``compute_metrics``.

They compute the same quantities as the `evaluate` library's accuracy/f1/precision/recall/roc_auc
modules (which wrap scikit-learn too) without fetching metric scripts from the Hub at run time.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, macro precision/recall/F1 and ROC-AUC (binary, or one-vs-rest macro for k > 2).

    ROC-AUC is left out when the labels hold a single class, where it is undefined.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    probs = softmax(logits)
    pred = probs.argmax(-1)
    k = probs.shape[-1]
    p, r, f1, _ = precision_recall_fscore_support(labels, pred, labels=list(range(k)), average="macro", zero_division=0)
    out = {
        "accuracy": float(accuracy_score(labels, pred)),
        "f1_macro": float(f1),
        "precision_macro": float(p),
        "recall_macro": float(r),
    }
    present = np.unique(labels)
    if len(present) > 1:
        if k == 2:
            out["roc_auc"] = float(roc_auc_score(labels, probs[:, 1]))
        elif len(present) == k:
            out["roc_auc"] = float(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    return out


def compute_classification_metrics(eval_pred) -> dict[str, float]:
    """Trainer adapter for :func:`classification_metrics`."""
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    return classification_metrics(logits, eval_pred.label_ids)


def multilabel_metrics(logits: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Subset accuracy, micro/macro F1 at ``threshold`` on sigmoid outputs, and macro ROC-AUC over the
    classes that have both positive and negative examples."""
    from sklearn.metrics import f1_score

    probs = sigmoid(logits)
    y = np.asarray(labels).astype(int)
    pred = (probs >= threshold).astype(int)
    out = {
        "subset_accuracy": float((pred == y).all(axis=1).mean()),
        "f1_micro": float(f1_score(y, pred, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(y, pred, average="macro", zero_division=0)),
    }
    both = [c for c in range(y.shape[1]) if 0 < y[:, c].sum() < len(y)]
    if both:
        out["roc_auc"] = float(np.mean([roc_auc_score(y[:, c], probs[:, c]) for c in both]))
    return out


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """MSE, RMSE, MAE, R^2 and Pearson r of predictions against targets (both flattened)."""
    p = np.asarray(predictions, dtype=np.float64).reshape(-1)
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    err = p - y
    mse = float(np.mean(err**2))
    var = float(np.var(y))
    out = {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(np.mean(np.abs(err)))}
    out["r2"] = 1.0 - mse / var if var > 0 else 0.0
    if np.std(p) > 0 and np.std(y) > 0:
        out["pearson"] = float(np.corrcoef(p, y)[0, 1])
    return out


def masked_token_stats(logits, labels):
    """Per example: summed negative log-likelihood, number and number correctly predicted of the masked
    tokens (labels != -100). Run inside evaluation (Trainer's ``preprocess_logits_for_metrics``) so that only
    three numbers per example are gathered instead of a vocabulary-sized row per token."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = labels != -100
    safe = labels.clamp(min=0)
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1) * mask
    correct = (logits.argmax(-1) == labels) & mask
    return torch.stack([nll.sum(-1), mask.sum(-1).float(), correct.sum(-1).float()], dim=-1)


def masked_lm_metrics(stats: np.ndarray) -> dict[str, float]:
    """Perplexity = exp(mean NLL over all masked tokens) (token-weighted, not a mean of batch means), the
    masked-token accuracy and how many masked tokens were scored."""
    stats = np.asarray(stats, dtype=np.float64).reshape(-1, 3)
    n = float(stats[:, 1].sum())
    if n == 0:
        return {"perplexity": float("nan"), "masked_accuracy": float("nan"), "masked_tokens": 0.0}
    nll = float(stats[:, 0].sum()) / n
    return {
        "perplexity": float(np.exp(min(nll, 700.0))),
        "masked_accuracy": float(stats[:, 2].sum()) / n,
        "masked_tokens": n,
    }
