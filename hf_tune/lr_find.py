"""Learning-rate range test (Smith 2017, "Cyclical Learning Rates"; fastai's ``lr_find``): ``hf-tune lr-find``.

Why: too small a learning rate wastes the budget, too large a one diverges or lands in a poor minimum, and the
right value moves with the model, the data, the batch size and the optimizer groups. The test trains for at most a
few hundred steps while the learning rate grows geometrically from ``start_lr`` to ``end_lr``, records the loss,
smooths it (an exponential moving average with bias correction, as fastai) and stops once the smoothed loss has
diverged (``diverge`` times its minimum). The suggestion is the point of steepest descent of the smoothed loss
(against log LR), before its minimum; the minimum / 10 is reported beside it.

It runs on the recipe's real model, data, loss and optimizer: with layer-wise decay or a backbone LR every group
is scaled by the same factor, so the groups keep their ratios and the suggestion is for ``training.learning_rate``
(the head's rate). It writes only into its own folder (default ``<training.output_dir>_lr_find``): the plot and
the recorded curve; the recipe's run folder and its weights are not touched.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from hf_tune.errors import ConfigError

OPTIONS: dict[str, Any] = {
    "output": None,
    "start_lr": 1e-7,
    "end_lr": 10.0,
    "steps": 100,
    "smooth": 0.98,
    "diverge": 4.0,
}
"""Command options (``hf-tune lr-find recipe=... steps=200``) and their defaults."""
MAX_STEPS = 1000


def lr_schedule(start_lr: float, end_lr: float, num_steps: int) -> np.ndarray:
    """``num_steps`` learning rates from ``start_lr`` to ``end_lr`` (both included), each a constant factor
    above the one before."""
    return start_lr * (end_lr / start_lr) ** (np.arange(num_steps) / max(num_steps - 1, 1))


def smooth_losses(losses: list[float] | np.ndarray, beta: float) -> np.ndarray:
    """Exponential moving average with bias correction: ``avg_i / (1 - beta**(i+1))``, so early points are not
    pulled toward zero."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * float(loss)
        out.append(avg / (1 - beta ** (i + 1)))
    return np.asarray(out)


def has_diverged(smoothed: float, best: float, factor: float) -> bool:
    """Stop once the smoothed loss exceeds ``factor`` times its best so far (or is not finite)."""
    return not math.isfinite(smoothed) or smoothed > factor * best


def suggest(lrs: np.ndarray, smoothed: np.ndarray, skip_start: float = 0.1) -> dict[str, float]:
    """Suggestions from a recorded sweep: ``steepest`` (most negative slope of the smoothed loss against log10 LR
    between the first ``skip_start`` share of the points, where the average warms up, and the minimum),
    ``min_loss`` (LR at the minimum) and ``min_div_10`` (that / 10, at least the first LR). ``suggested`` is
    the steepest point."""
    lrs, smoothed = np.asarray(lrs, dtype=np.float64), np.asarray(smoothed, dtype=np.float64)
    if len(lrs) < 3:
        raise ValueError("the sweep recorded fewer than 3 points: raise steps or lower start_lr")
    start = min(int(len(lrs) * skip_start), len(lrs) - 3)
    low = start + int(np.argmin(smoothed[start:]))
    slope = np.gradient(smoothed, np.log10(lrs))
    window = range(start, low) if low - start >= 2 else range(start, len(lrs))
    steepest = min(window, key=lambda i: slope[i])
    return {
        "suggested": float(lrs[steepest]),
        "steepest": float(lrs[steepest]),
        "min_loss": float(lrs[low]),
        "min_div_10": float(max(lrs[low] / 10, lrs[0])),
    }


def parse_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Command options (strings from the command line, or numbers from Python) checked, each error naming it."""
    out, errors = dict(OPTIONS), []
    for key, value in opts.items():
        if key not in OPTIONS:
            errors.append(f"{key}=: not an lr-find option; options: {', '.join(OPTIONS)}")
            continue
        default = OPTIONS[key]
        try:
            out[key] = value if default is None else type(default)(value)
        except (TypeError, ValueError):
            errors.append(f"{key}={value}: expected a {type(default).__name__}")
    if not errors:
        if not 0 < out["start_lr"] < out["end_lr"]:
            errors.append(f"start_lr={out['start_lr']}, end_lr={out['end_lr']}: need 0 < start_lr < end_lr")
        if not 10 <= out["steps"] <= MAX_STEPS:
            errors.append(f"steps={out['steps']}: a range test takes 10 to {MAX_STEPS} steps")
        if not 0 <= out["smooth"] < 1:
            errors.append(f"smooth={out['smooth']}: the averaging factor must be in [0, 1)")
        if out["diverge"] <= 1:
            errors.append(f"diverge={out['diverge']}: must be > 1 (stop when the loss is that many times its best)")
    if errors:
        raise ConfigError(errors)
    return out


def lr_find(cfg, **options: Any) -> dict[str, Any]:
    """Run the range test for a validated recipe config; returns the suggestion and where the plot went."""
    o = parse_options(options)
    run_dir = cfg.output_dir()
    folder = Path(o["output"]) if o["output"] else run_dir.with_name(f"{run_dir.name}_lr_find")
    if folder.resolve() == run_dir.resolve() or any(folder.glob("checkpoint-*")) or (folder / "model").exists():
        raise ConfigError([f"output={folder}: that is a run folder; lr-find writes into a folder of its own"])
    recipe = _sweep_recipe(cfg, folder)
    try:
        recipe.setup()
        lrs, losses, stopped, ratios = _sweep(recipe, lr_schedule(o["start_lr"], o["end_lr"], o["steps"]), o)
    finally:
        recipe.cleanup()
    smoothed = smooth_losses(losses, o["smooth"])
    try:
        s = suggest(lrs, smoothed)
    except ValueError as exc:
        raise ConfigError([f"lr-find: {exc} (the loss diverged at lr={lrs[-1]:.2e})"]) from None
    folder.mkdir(parents=True, exist_ok=True)
    plot = plot_sweep(lrs, losses, smoothed, s, folder / "lr_find.png")
    record = {
        "suggested_lr": s["suggested"],
        "steepest_lr": s["steepest"],
        "min_loss_lr": s["min_loss"],
        "min_div_10_lr": s["min_div_10"],
        "recipe_learning_rate": float(recipe.args.learning_rate),
        "steps": len(lrs),
        "swept": [float(lrs[0]), float(lrs[-1])],
        "stopped": stopped,
        "group_ratios": ratios,
        "plot": str(plot),
        "output_dir": str(folder),
    }
    curve = {**record, "lrs": [float(x) for x in lrs], "losses": losses, "smoothed": [float(x) for x in smoothed]}
    (folder / "lr_find.json").write_text(json.dumps(curve, indent=1))
    record["json"] = str(folder / "lr_find.json")
    return record


def _sweep_recipe(cfg, folder: Path):
    """The recipe as for training, pointed at the lr-find folder, with nothing saved, evaluated or pushed."""
    from hf_tune.recipes import RECIPES
    from hf_tune.schema import CalibrationConfig, SearchConfig

    training = {
        **cfg.training,
        "output_dir": str(folder),
        "report_to": "none",
        "eval_strategy": "no",
        "save_strategy": "no",
        "load_best_model_at_end": False,
        "push_to_hub": False,
    }
    techniques = dataclasses.replace(cfg.techniques, calibration=CalibrationConfig())
    sweep_cfg = dataclasses.replace(
        cfg, training=training, techniques=techniques, search=SearchConfig(), resume=False, overwrite=False
    )
    return RECIPES.get(sweep_cfg.task)(sweep_cfg)


def _sweep(recipe, lrs: np.ndarray, o: dict[str, Any]) -> tuple[np.ndarray, list[float], str, list[float]]:
    """Train one optimizer step per learning rate (gradient accumulation as the recipe sets it), every group
    scaled by lr / training.learning_rate; stop when the smoothed loss diverges. Returns the rates used, their
    losses, why it stopped and the groups' LR ratios to training.learning_rate."""
    import torch

    from hf_tune.techniques import log

    trainer = recipe.trainer
    model = trainer.model
    model.train()
    optimizer = trainer.create_optimizer()
    if hasattr(optimizer, "train"):  # schedule-free optimizers have train/eval modes
        optimizer.train()
    base = float(trainer.args.learning_rate)
    scales = [float(g["lr"]) / base for g in optimizer.param_groups]
    accum = int(trainer.args.gradient_accumulation_steps)
    batches = _cycle(trainer.get_train_dataloader())
    device = trainer.args.device
    losses: list[float] = []
    avg, best, stopped = 0.0, math.inf, "end"
    for i, lr in enumerate(lrs):
        for group, scale in zip(optimizer.param_groups, scales, strict=True):
            group["lr"] = float(lr) * scale
        total = 0.0
        for _ in range(accum):
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in next(batches).items()}
            loss = trainer.compute_loss(model, inputs) / accum
            loss.backward()
            total += float(loss.detach())
        if not math.isfinite(total):
            stopped = "nonfinite"
            break
        if recipe.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], recipe.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
        avg = o["smooth"] * avg + (1 - o["smooth"]) * total
        smoothed = avg / (1 - o["smooth"] ** (i + 1))
        best = min(best, smoothed)
        if i > 0 and has_diverged(smoothed, best, o["diverge"]):
            stopped = "diverged"
            break
    log(f"lr-find: {len(losses)} steps from {lrs[0]:.1e} to {lrs[max(len(losses) - 1, 0)]:.1e} ({stopped})")
    return lrs[: len(losses)], losses, stopped, sorted({round(s, 6) for s in scales})


def _cycle(loader):
    while True:
        yield from loader


def plot_sweep(lrs: np.ndarray, losses: list[float], smoothed: np.ndarray, s: dict[str, float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(lrs, losses, alpha=0.3, label="loss")
    ax.plot(lrs, smoothed, label="smoothed loss")
    ax.axvline(s["steepest"], color="tab:red", ls="--", label=f"steepest descent {s['steepest']:.2e} (suggested)")
    ax.axvline(s["min_div_10"], color="tab:green", ls=":", label=f"minimum / 10 {s['min_div_10']:.2e}")
    ax.set_xscale("log")
    finite = smoothed[np.isfinite(smoothed)]
    raw = np.asarray(losses, dtype=np.float64)
    raw = raw[np.isfinite(raw)]
    if len(finite):  # the diverged tail would squash the curve: cap the view at 2.5x the starting loss
        low = min(finite.min(), raw.min() if len(raw) else finite.min())
        ax.set_ylim(low - 0.05 * abs(low), min(max(finite.max(), raw.max()), 2.5 * finite[0]) * 1.05)
    ax.set_xlabel("learning rate (log)")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
