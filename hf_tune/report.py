"""Run reports: plots and a ``report.md`` built only from files in a saved model folder.

At save time a recipe writes ``log_history.json`` (Trainer's logs), ``metrics.json`` and, for
classification heads, ``predictions_<name>.npz`` (validation scores and labels). :func:`write_report`
turns them into PNG plots under ``plots/`` and a ``report.md`` that links them, so ``hf-tune report RUN_DIR``
can regenerate everything later, and the same files go to the Hub with the model card.

Plots: training loss (with per-task losses for multi-task runs) and eval loss, learning rate, gradient norm
(pre-clip, as Trainer logs it), confusion matrix, ROC and precision-recall curves, per-category F1 for tagging.
The plotting functions are plain: arrays in, a PNG path out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hf_tune.heads import HEADS
from hf_tune.registry import Registry

LOG_HISTORY = "log_history.json"
PLOTS_DIR = "plots"
REPORT = "report.md"
MAX_CURVES = 10  # per-class ROC/PR curves drawn; the micro average is always drawn


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return path


def series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged key."""
    pts = [(int(h["step"]), float(h[key])) for h in history if key in h and "step" in h]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_training_curves(history: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Loss (train, eval, per task), learning rate and gradient norm against the optimizer step."""
    steps, loss = series(history, "loss")
    if not steps:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, loss, label="train loss", lw=1.5)
    for key in sorted({k for h in history for k in h if k.startswith("loss_")}):
        s, v = series(history, key)
        axes[0].plot(s, v, label=key.removeprefix("loss_"), lw=1, alpha=0.8)
    for key in sorted({k for h in history for k in h if k.startswith("eval_") and k.endswith("_loss")}):
        s, v = series(history, key)
        axes[0].plot(s, v, "o--", label=key, lw=1)
    axes[0].set(title="loss", xlabel="step")
    axes[0].legend(fontsize=7)
    s, v = series(history, "learning_rate")
    axes[1].plot(s, v, color="tab:orange")
    axes[1].set(title="learning rate", xlabel="step")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    s, v = series(history, "grad_norm")
    if s:
        axes[2].plot(s, v, color="tab:green")
        axes[2].set_yscale("log")
    axes[2].set(title="gradient L2 norm (pre-clip)", xlabel="step")
    return _save(fig, path)


def confusion(labels: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    """k x k counts, rows = true class, columns = predicted class."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (np.asarray(labels, dtype=int), np.asarray(preds, dtype=int)), 1)
    return m


def plot_confusion(labels: np.ndarray, scores: np.ndarray, names: Sequence[str], path: Path) -> Path:
    m = confusion(labels, scores.argmax(-1), len(names))
    plt = _plt()
    size = min(5.5 + 0.3 * len(names), 16)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), layout="constrained")
    im = ax.imshow(m, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set(xlabel="predicted class", ylabel="true class", title=f"confusion matrix (n={int(m.sum())})")
    ax.set_xticks(range(len(names)), names, rotation=60 if len(names) > 4 else 0, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    if len(names) <= 12:
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, int(m[i, j]), ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "k")
    return _save(fig, path)


def one_vs_rest(labels: np.ndarray, scores: np.ndarray, multilabel: bool) -> np.ndarray:
    """Binary indicator matrix (n, k) of the true classes."""
    if multilabel:
        return np.asarray(labels).astype(int)
    y = np.zeros_like(scores, dtype=int)
    y[np.arange(len(labels)), np.asarray(labels, dtype=int)] = 1
    return y


def plot_roc_pr(labels: np.ndarray, scores: np.ndarray, names: Sequence[str], path: Path, multilabel: bool) -> Path:
    """ROC and precision-recall curves: the positive class for binary tasks, else one-vs-rest per class
    (the ``MAX_CURVES`` most frequent) plus the micro average."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    y = one_vs_rest(labels, scores, multilabel)
    plt = _plt()
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(12, 5))
    if len(names) == 2 and not multilabel:
        curves = [(names[1], y[:, 1], scores[:, 1])]
    else:
        order = np.argsort(-y.sum(0))[:MAX_CURVES]
        curves = [(names[c], y[:, c], scores[:, c]) for c in order if 0 < y[:, c].sum() < len(y)]
        curves.append(("micro average", y.ravel(), scores.ravel()))
    for name, yt, st in curves:
        if yt.min() == yt.max():
            continue
        fpr, tpr, _ = roc_curve(yt, st)
        prec, rec, _ = precision_recall_curve(yt, st)
        lw = 2.2 if name == "micro average" else 1.2
        roc_ax.plot(fpr, tpr, lw=lw, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        pr_ax.plot(rec, prec, lw=lw, label=f"{name} (AP {average_precision_score(yt, st):.3f})")
    roc_ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    roc_ax.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate")
    pr_ax.set(title="precision-recall", xlabel="recall", ylabel="precision")
    for ax in (roc_ax, pr_ax):
        ax.legend(fontsize=7, loc="lower right" if ax is roc_ax else "lower left")
    return _save(fig, path)


def plot_per_category(scores: dict[str, float], path: Path, title: str) -> Path | None:
    """Horizontal bars of per-category F1, sorted."""
    if not scores:
        return None
    items = sorted(scores.items(), key=lambda kv: kv[1])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, max(3, 0.25 * len(items) + 1)))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.set(xlim=(0, 1), xlabel="F1", title=title)
    ax.tick_params(axis="y", labelsize=7)
    return _save(fig, path)


def plot_regression(labels: np.ndarray, preds: np.ndarray, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(labels.reshape(-1), preds.reshape(-1), s=8, alpha=0.6)
    lo, hi = float(min(labels.min(), preds.min())), float(max(labels.max(), preds.max()))
    ax.plot([lo, hi], [lo, hi], "k:", lw=0.8)
    ax.set(xlabel="target", ylabel="prediction", title="predictions vs targets")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Files in a model folder
# --------------------------------------------------------------------------------------------------


def save_predictions(model_dir: Path, name: str, scores, labels, names: Sequence[str], kind: str) -> Path:
    """Validation scores (probabilities, or values for regression) and labels for the report's curves;
    ``kind`` is the output head's name (hf_tune.heads), which decides the plots."""
    path = model_dir / f"predictions_{name}.npz"
    np.savez_compressed(
        path, scores=np.asarray(scores), labels=np.asarray(labels), names=np.asarray(list(names)), kind=kind
    )
    return path


ScorePlot = tuple[str, Any]  # (caption, fn(labels, scores, names, path, head name) -> path)
SCORE_PLOTS: Registry[ScorePlot] = Registry("score plot")
SCORE_PLOTS.add("confusion", ("Confusion matrix", lambda y, s, names, path, head: plot_confusion(y, s, names, path)))
SCORE_PLOTS.add(
    "roc_pr",
    (
        "ROC and precision-recall curves",
        lambda y, s, names, path, head: plot_roc_pr(y, s, names, path, multilabel=np.ndim(y) == 2),
    ),
)
SCORE_PLOTS.add("regression", ("Predictions vs targets", lambda y, s, names, path, head: plot_regression(y, s, path)))


def plots_for(model_dir: Path) -> list[tuple[str, Path]]:
    """(caption, path) of every plot that can be made from the folder's files; makes them."""
    out_dir = model_dir / PLOTS_DIR
    made: list[tuple[str, Path | None]] = []
    history_file = model_dir / LOG_HISTORY
    if history_file.is_file():
        history = json.loads(history_file.read_text())
        made.append(
            (
                "Training loss, learning rate and gradient norm",
                plot_training_curves(history, out_dir / "training_curves.png"),
            )
        )
    for f in sorted(model_dir.glob("predictions_*.npz")):
        name = f.stem.removeprefix("predictions_")
        d = np.load(f, allow_pickle=False)
        scores, labels, names, kind = d["scores"], d["labels"], [str(n) for n in d["names"]], str(d["kind"])
        label = "" if name == "val" else f" ({name})"
        for plot in HEADS.get(kind).plots:
            caption, fn = SCORE_PLOTS.get(plot)
            made.append((caption + label, fn(labels, scores, names, out_dir / f"{plot}_{name}.png", kind)))
    metrics_file = model_dir / "metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        for prefix in sorted({k.rsplit("f1_", 1)[0] for k in metrics if _is_category_f1(k)}):
            cats = {
                k[len(prefix) + 3 :]: float(v)
                for k, v in metrics.items()
                if k.startswith(prefix + "f1_") and _is_category_f1(k)
            }
            stem = prefix.strip("_") or "eval"
            made.append(
                (
                    f"Per-category span F1 ({stem})",
                    plot_per_category(cats, out_dir / f"per_category_{stem}.png", f"per-category span F1 ({stem})"),
                )
            )
    grad = model_dir.parent / "grad_norms.png"
    if grad.is_file():
        import shutil

        out_dir.mkdir(parents=True, exist_ok=True)
        made.append(("Per-block gradient norms", Path(shutil.copy(grad, out_dir / "grad_norms.png"))))
    return [(c, p) for c, p in made if p is not None]


def _is_category_f1(key: str) -> bool:
    """Per-category span F1 keys look like eval_f1_<Category> (eval_<task>_f1_<Category> for multi-task)."""
    if not key.startswith(("eval_", "test_")) or "f1_" not in key:
        return False
    tail = key.rsplit("f1_", 1)[1]
    return tail not in ("micro", "macro") and not key.endswith(("span_f1_micro", "span_f1_macro", "overlap_f1"))


def metrics_table(metrics: dict[str, Any]) -> str:
    """Markdown table of the scalar evaluation metrics (timings and per-category entries left out)."""
    rows = [
        (k, v)
        for k, v in sorted(metrics.items())
        if k.startswith(("eval_", "test_"))
        and isinstance(v, (int, float))
        and not k.endswith(("_runtime", "_per_second", "_preparation_time"))
        and not _is_category_f1(k)
    ]
    if not rows:
        return "_no evaluation metrics recorded_\n"
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def write_report(model_dir: Path, title: str | None = None) -> Path:
    """Make every plot and write ``report.md`` in ``model_dir``; returns the report's path."""
    model_dir = Path(model_dir)
    plots = plots_for(model_dir)
    metrics = json.loads((model_dir / "metrics.json").read_text()) if (model_dir / "metrics.json").is_file() else {}
    lines = [f"# {title or 'Training report'}", "", f"Model folder: `{model_dir}`", "", "## Metrics", ""]
    lines.append(metrics_table(metrics))
    train_keys = ("train_runtime", "train_samples_per_second", "train_loss", "epoch")
    if any(k in metrics for k in train_keys):
        lines += ["## Training", ""]
        lines += [f"- {k}: {metrics[k]:.4g}" for k in train_keys if isinstance(metrics.get(k), (int, float))]
        lines.append("")
    lines += ["## Plots", ""]
    for caption, path in plots:
        lines += [f"### {caption}", "", f"![{caption}]({path.relative_to(model_dir).as_posix()})", ""]
    out = model_dir / REPORT
    out.write_text("\n".join(lines))
    return out
