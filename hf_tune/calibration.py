"""Decision calibration for imbalanced single-label classification (``techniques.calibration``).

Why: class weights and focal loss move a model's decisions toward rare classes by a fixed amount chosen before
training; on CUAD clause types the shipped balanced weights beat plain training on macro-F1 but over-corrected
(accuracy below the majority rate). After training, additive per-class logit offsets ``b`` are fitted on the
validation split to maximise the metric the user names; ``argmax(logits + b)`` is then the decision. Because the
output layer is linear, ``logits + b`` is exactly that layer with ``b`` added to its bias, so the offsets are folded
into the saved weights: ``hf-tune evaluate``, ``hf-tune predict`` and ``transformers.pipeline()`` apply them with no
hf_tune code.

Two fits (pure functions below, each unit-tested):

- ``prior``: ``b = -strength * log(prior)``, the training class frequencies, one fitted strength (logit
  adjustment, Menon et al. 2021; a negative strength undoes an over-correction). One number: robust on a small
  validation split.
- ``offsets``: one offset per class by coordinate ascent (each class's offset in turn, the value that maximises
  the metric with the others fixed, a few sweeps). More freedom, so it can overfit a small validation split;
  ``prior+offsets`` starts it from the fitted prior correction.

Every fit includes the offsets it starts from among its candidates and only moves on a strict improvement, so the
validation metric after calibration is never below the metric before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hf_tune.registry import Registry

MetricFn = Callable[[np.ndarray, np.ndarray, int], float]
CALIBRATION_METRICS: Registry[MetricFn] = Registry("calibration metric")


def confusion(pred: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """k x k counts, rows = true class, columns = decision."""
    return np.bincount(labels * k + pred, minlength=k * k).reshape(k, k)


def _f1_per_class(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1)  # 2tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


@CALIBRATION_METRICS.register("f1_macro")
def f1_macro(pred: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean F1 over all k classes (a class never predicted nor present counts 0, as scikit-learn's macro F1 with
    labels=range(k) and zero_division=0, which hf_tune's evaluation reports)."""
    return float(_f1_per_class(confusion(pred, labels, k)).mean())


@CALIBRATION_METRICS.register("f1_weighted")
def f1_weighted(pred: np.ndarray, labels: np.ndarray, k: int) -> float:
    cm = confusion(pred, labels, k)
    support = cm.sum(1)
    return float((_f1_per_class(cm) * support).sum() / max(support.sum(), 1))


@CALIBRATION_METRICS.register("accuracy")
def accuracy(pred: np.ndarray, labels: np.ndarray, k: int) -> float:
    return float((pred == labels).mean()) if len(labels) else 0.0


@CALIBRATION_METRICS.register("balanced_accuracy")
def balanced_accuracy(pred: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean recall over the classes present in ``labels`` (scikit-learn's balanced_accuracy_score)."""
    cm = confusion(pred, labels, k)
    support = cm.sum(1)
    present = support > 0
    return float((np.diag(cm)[present] / support[present]).mean()) if present.any() else 0.0


def decide(logits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return np.argmax(np.asarray(logits, dtype=np.float64) + offsets, axis=-1)


def all_metrics(logits: np.ndarray, labels: np.ndarray, offsets: np.ndarray) -> dict[str, float]:
    k = logits.shape[-1]
    pred = decide(logits, offsets)
    return {name: round(CALIBRATION_METRICS.get(name)(pred, labels, k), 6) for name in CALIBRATION_METRICS.names()}


def log_prior(train_labels: np.ndarray, k: int) -> np.ndarray:
    """log of the training class frequencies, half a count added to every class (a class absent from training
    gets a finite, very negative value instead of -inf)."""
    counts = np.bincount(np.asarray(train_labels).reshape(-1).astype(np.int64), minlength=k)[:k] + 0.5
    return np.log(counts / counts.sum())


def candidates(center: float, half_width: float, steps: int) -> np.ndarray:
    """``steps`` values evenly spaced over [center - half_width, center + half_width], with center itself."""
    return np.unique(np.append(np.linspace(center - half_width, center + half_width, steps), center))


def fit_prior_strength(
    logits: np.ndarray, labels: np.ndarray, prior: np.ndarray, *, metric: MetricFn, max_strength: float, steps: int
) -> tuple[float, float]:
    """(strength, metric) maximising ``metric(argmax(logits - strength * prior))``; ties keep the smallest
    |strength| (0 when nothing improves)."""
    k = logits.shape[-1]
    best_s, best = 0.0, metric(decide(logits, np.zeros(k)), labels, k)
    for s in sorted(candidates(0.0, max_strength, steps), key=abs):
        score = metric(decide(logits, -s * prior), labels, k)
        if score > best + 1e-12:
            best_s, best = float(s), score
    return best_s, best


def fit_offsets(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    metric: MetricFn,
    init: np.ndarray,
    max_offset: float,
    steps: int,
    rounds: int,
) -> tuple[np.ndarray, float]:
    """Per-class offsets by coordinate ascent from ``init``: for each class, the candidate offset (within
    ``max_offset`` of ``init``) that maximises the metric with the other offsets fixed; repeated for ``rounds``
    sweeps or until a sweep changes nothing. Only strict improvements move an offset."""
    z = np.asarray(logits, dtype=np.float64)
    k = z.shape[-1]
    offsets = np.asarray(init, dtype=np.float64).copy()
    best = metric(decide(z, offsets), labels, k)
    for _ in range(rounds):
        changed = False
        for c in range(k):
            shifted = z + offsets
            shifted[:, c] = -np.inf
            rival = shifted.argmax(axis=1)  # each example's decision if class c does not win
            rival_score = shifted[np.arange(len(z)), rival]
            for v in candidates(float(init[c]), max_offset, steps):
                own = z[:, c] + v
                # class c wins where it beats the best other class (argmax breaks ties toward the lower index)
                wins = (own > rival_score) | ((own == rival_score) & (c < rival))
                score = metric(np.where(wins, c, rival), labels, k)
                if score > best + 1e-12:
                    best, offsets[c], changed = score, float(v), True
        if not changed:
            break
    return offsets, best


@dataclass
class Calibration:
    offsets: np.ndarray
    strength: float | None
    before: dict[str, float]
    after: dict[str, float]


def fit(
    logits: np.ndarray,
    labels: np.ndarray,
    train_labels: np.ndarray,
    *,
    metric: str,
    method: str,
    max_strength: float,
    max_offset: float,
    steps: int,
    rounds: int,
) -> Calibration:
    """Fit the offsets on validation ``logits``/``labels`` (training labels give the prior)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    k = z.shape[-1]
    fn = CALIBRATION_METRICS.get(metric)
    offsets, strength = np.zeros(k), None
    if method in ("prior", "prior+offsets"):
        prior = log_prior(train_labels, k)
        strength, _ = fit_prior_strength(z, y, prior, metric=fn, max_strength=max_strength, steps=steps)
        offsets = -strength * prior
    if method in ("offsets", "prior+offsets"):
        offsets, _ = fit_offsets(z, y, metric=fn, init=offsets, max_offset=max_offset, steps=steps, rounds=rounds)
    offsets = offsets - offsets.mean()  # softmax and argmax ignore a common shift; keep the bias centred
    return Calibration(offsets, strength, all_metrics(z, y, np.zeros(k)), all_metrics(z, y, offsets))


# --------------------------------------------------------------------------------------------------
# On a model: find the output layer, fold the offsets into its bias
# --------------------------------------------------------------------------------------------------


def output_layer(model) -> tuple[str, Any] | None:
    """(name, module) of the classifier's final linear layer: among the head's modules (found by
    hf_tune.optim.head_parameter_names: BERT's ``classifier``, a timm model's ``fc``/``head``), the last
    ``nn.Linear`` with num_labels outputs; under peft, the trained copy (modules_to_save), not the frozen original."""
    from torch import nn

    from hf_tune.optim import head_parameter_names

    owners = {n.rsplit(".", 1)[0] for n in head_parameter_names(model)}
    n_out = model.config.num_labels
    found = [
        (name, m)
        for name, m in model.named_modules()
        if name in owners
        and isinstance(m, nn.Linear)
        and m.out_features == n_out
        and m.bias is not None
        and "original_module" not in name.split(".")
    ]
    return found[-1] if found else None


def fold_offsets(layer, offsets: np.ndarray) -> None:
    import torch

    with torch.no_grad():
        layer.bias.add_(torch.as_tensor(offsets, dtype=layer.bias.dtype, device=layer.bias.device))


def head_errors(recipe) -> list[str]:
    """Calibration needs a single-label classification head (checked from the config, before data loads)."""
    if not recipe.cfg.techniques.calibration.enabled:
        return []
    try:
        head = recipe.head.name
    except NotImplementedError:  # multi-task: a head per task
        head = "one per task"
    if head != "single_label":
        return [
            f"techniques.calibration applies to single-label classification (image and text kinds); this run's "
            f"head is {head}: set techniques.calibration.enabled=false"
        ]
    return []


def setup_errors(recipe) -> list[str]:
    """Before training (data and model built): a validation split to fit on and an output layer with a bias."""
    if not recipe.cfg.techniques.calibration.enabled:
        return []
    errors = head_errors(recipe)
    val = recipe.datasets.get("val")
    if val is None or len(val) == 0:
        errors.append(
            "techniques.calibration fits on the validation split, and this run has none: give data.val_path or "
            "split_ratios with a validation share"
        )
    if not errors and output_layer(recipe.model) is None:
        errors.append(
            f"techniques.calibration: no linear output layer with a bias found in the head of "
            f"{type(recipe.model).__name__}"
        )
    return errors


def calibrate(recipe) -> dict[str, Any]:
    """After training: fit on the validation predictions of the final weights (the EMA weights when they are the
    final model), fold the offsets into the output layer (live and EMA copies), and return what was done for
    metrics.json and the card. Test predictions, when there is a test split, are scored before and after too."""
    from hf_tune.techniques import log

    c = recipe.cfg.techniques.calibration
    trainer = recipe.trainer
    final_is_ema = trainer.ema is not None and recipe.cfg.techniques.ema.use_for_final_model
    scored = {}
    with trainer.ema_weights() if final_is_ema else contextlib.nullcontext():
        for split in ("val", "test"):
            ds = recipe.datasets.get(split)
            if ds is not None and len(ds):
                out = trainer.predict(ds, metric_key_prefix=f"calibration_{split}")
                logits = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
                scored[split] = (np.asarray(logits, dtype=np.float64), np.asarray(out.label_ids).reshape(-1))
    z, y = scored["val"]
    result = fit(
        z,
        y,
        np.asarray(recipe.train_labels()).reshape(-1),
        metric=c.metric,
        method=c.method,
        max_strength=c.max_strength,
        max_offset=c.max_offset,
        steps=c.steps,
        rounds=c.rounds,
    )
    name, layer = output_layer(trainer.model)
    fold_offsets(layer, result.offsets)
    ema = getattr(trainer.ema, "ema", None)
    if ema is not None:  # evaluation and the final model may read the EMA copy: it gets the same offsets
        fold_offsets(dict(ema.module.named_modules())[name], result.offsets)
    names = list(recipe.label_names)
    record: dict[str, Any] = {
        "metric": c.metric,
        "method": c.method,
        "prior_strength": result.strength,
        "offsets": {n: round(float(v), 6) for n, v in zip(names, result.offsets, strict=True)},
        "folded_into": name,
        "val": {"before": result.before, "after": result.after},
    }
    if "test" in scored:
        zt, yt = scored["test"]
        record["test"] = {
            "before": all_metrics(zt, yt, np.zeros(len(names))),
            "after": all_metrics(zt, yt, result.offsets),
        }
    trainer.model.config.hf_tune_calibration = {k: record[k] for k in ("metric", "method", "prior_strength", "offsets")}
    log(
        f"calibration ({c.method}, {c.metric}): val {c.metric} {result.before[c.metric]:.4f} -> "
        f"{result.after[c.metric]:.4f}, accuracy {result.before['accuracy']:.4f} -> {result.after['accuracy']:.4f}; "
        f"offsets folded into {name}.bias"
    )
    return record


def card_lines(metrics: dict[str, Any]) -> list[str]:
    """The model card's section on the calibration a run recorded in its metrics (empty without one)."""
    rec = metrics.get("calibration")
    if not isinstance(rec, dict):
        return []
    how = f"one class-prior strength {rec['prior_strength']:+.3f}" if rec.get("prior_strength") is not None else ""
    if rec.get("method") != "prior":
        how = (how + ", then " if how else "") + "per-class offsets by coordinate ascent"
    lines = [
        "## Decision calibration",
        "",
        f"Per-class logit offsets were fitted on the validation split to maximise `{rec['metric']}` ({how}) and "
        f"added to the bias of `{rec['folded_into']}`: the saved weights include them, so `pipeline()`, "
        f"`hf-tune evaluate` and `hf-tune predict` decide with them. Validation numbers after calibration are "
        f"fitted on that split (optimistic); the test split, when there is one, is not.",
        "",
        "| split | metric | before | after |",
        "|---|---|---|---|",
    ]
    for split in ("val", "test"):
        if split in rec:
            for m, before in rec[split]["before"].items():
                lines.append(f"| {split} | {m} | {before:.4f} | {rec[split]['after'][m]:.4f} |")
    offsets = ", ".join(f"{n}: {v:+.3f}" for n, v in rec["offsets"].items())
    return [*lines, "", f"Offsets: {offsets}", ""]
