"""Fused models from finished runs: soups across runs, checkpoint averages within a run, WiSE-FT interpolation.

Each command loads its ingredients (run folders, their ``model/`` folders or checkpoint folders), checks that
they can be averaged (same kind, architecture and labels; a clear error naming what differs), scores them on
the held-out split of ``data.path`` through the kind's own ``evaluate_saved`` (so a soup is scored exactly as
``hf-tune evaluate`` would score it), recomputes BatchNorm statistics of averaged timm models on training
batches, and writes a normal model folder: weights, config, tokenizer/processor, ``resolved_config.yaml`` (the
reference ingredient's), ``metrics.json``, ``fusion.json`` (what was fused and every score), plots, report
and a model card. The folder loads with ``pipeline()``, ``hf-tune evaluate`` and ``hf-tune predict`` like any
other. The math is :mod:`hf_tune.fusion`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_tune.config import find_model_dir, load_run_config, load_saved_config
from hf_tune.errors import ConfigError
from hf_tune.fusion import (
    FUSION_FILE,
    average_states,
    greedy_soup,
    has_batchnorm,
    interpolate_states,
    recompute_batchnorm,
    state_differences,
)
from hf_tune.registry import Registry
from hf_tune.schema import RESOLVED_CONFIG_NAME, BaseConfig, save_config
from hf_tune.techniques import log

EMA_WEIGHTS = "ema.safetensors"
LOWER_IS_BETTER = ("loss", "perplexity", "mse", "rmse", "mae")
# what a fused folder does not take over from its reference ingredient: weights, and records of that one run
NOT_COPIED = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "training_args.bin",
    "metrics.json",
    "log_history.json",
    "report.md",
    "README.md",
    FUSION_FILE,
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
    EMA_WEIGHTS,
    "swa.safetensors",
    "hf_tune_complete.json",
)


@dataclass
class Ingredient:
    """One model to fuse: where it came from, its config and its weights (EMA weights when a checkpoint has them)."""

    name: str
    model_dir: Path
    cfg: BaseConfig
    state: dict[str, torch.Tensor]
    labels: list[str]
    architecture: str
    score: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def _recipe_class(cfg: BaseConfig):
    from hf_tune.recipes import RECIPES

    return RECIPES.get(cfg.task)


def _config_of(folder: Path) -> Path:
    """The resolved config of a model folder or a checkpoint (whose run keeps one beside it too)."""
    for f in (folder / RESOLVED_CONFIG_NAME, folder.parent / RESOLVED_CONFIG_NAME):
        if f.is_file():
            return f
    raise FileNotFoundError(f"{folder}: no {RESOLVED_CONFIG_NAME}; pass a run folder, its model/ or a checkpoint")


def model_folder(path: str | Path) -> Path:
    """A run folder -> its model/; a model or checkpoint folder as it is."""
    p = Path(path)
    if p.name.startswith("checkpoint-") and (p / "config.json").is_file():
        return p
    return find_model_dir(p)


def load_model(folder: Path, cfg: BaseConfig):
    """The kind's model from ``folder``; a LoRA run saved as an adapter only (``merge_on_save=false``) is merged
    into its base weights first, so every ingredient is a plain model."""
    adapter = folder / "adapter"
    if not (folder / "model.safetensors").is_file() and adapter.is_dir():
        return _merged_lora(folder, cfg)
    return _recipe_class(cfg).load_model(folder)


def _merged_lora(folder: Path, cfg: BaseConfig):
    import transformers
    from peft import PeftModel

    from hf_tune.modeling import resolve_model_name

    config = transformers.AutoConfig.from_pretrained(str(folder))
    arch = getattr(transformers, (config.architectures or [""])[0], None)
    if arch is None:
        raise ConfigError([f"{folder}: a LoRA adapter whose config.json names no transformers architecture"])
    base = arch.from_pretrained(resolve_model_name(cfg.model.name), config=config)
    return PeftModel.from_pretrained(base, str(folder / "adapter")).merge_and_unload()


def load_ingredient_model(path: str | Path) -> tuple[Any, BaseConfig, Path]:
    """The model in a run, model or checkpoint folder, with the config it was trained with and its folder."""
    folder = model_folder(path)
    cfg = load_saved_config(_config_of(folder))
    return load_model(folder, cfg), cfg, folder


def load_ingredient(path: str | Path) -> Ingredient:
    model, cfg, folder = load_ingredient_model(path)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ema = folder / EMA_WEIGHTS
    if ema.is_file():  # timm's checkpoint averaging takes EMA weights first; so do we
        from safetensors.torch import load_file

        state.update(load_file(str(ema)))
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)] if _has_labels(model) else []
    arch = getattr(model.config, "architecture", None) or ",".join(getattr(model.config, "architectures", None) or [])
    return Ingredient(str(path), folder, cfg, state, labels, f"{model.config.model_type}:{arch}")


def _has_labels(model) -> bool:
    return getattr(model.config, "id2label", None) is not None and getattr(model.config, "num_labels", 0) > 0


def compatibility_errors(items: Sequence[Ingredient]) -> list[str]:
    """What keeps the ingredients from being averaged, each naming the ingredient and what differs."""
    ref, errors = items[0], []
    for it in items[1:]:
        if it.cfg.task != ref.cfg.task:
            errors.append(f"{it.name}: task {it.cfg.task} differs from {ref.name}'s {ref.cfg.task}")
            continue
        if it.architecture != ref.architecture:
            errors.append(f"{it.name}: architecture {it.architecture} differs from {ref.name}'s {ref.architecture}")
        if it.labels != ref.labels:
            errors.append(f"{it.name}: labels {it.labels} differ from {ref.name}'s {ref.labels}")
        diff = state_differences(ref.state, it.state)
        if diff and it.architecture == ref.architecture:
            errors.append(f"{it.name}: weights do not match {ref.name}'s ({'; '.join(diff)})")
    return errors


# ---------------------------------------------------------------------------------------------- scoring


class Scorer:
    """Scores weights on the held-out split of the evaluation data, as ``hf-tune evaluate`` would. Fused weights
    (an average or an interpolation) of a model with BatchNorm (timm ResNets) get their statistics recomputed on
    training batches first; one model's own weights keep the statistics it was saved with, which are right for
    it, so an ingredient scores exactly what ``hf-tune evaluate`` gives it (recomputing them on augmented
    training batches had ranked a no-augmentation fine-tune 1.1 points below its real val accuracy)."""

    def __init__(self, reference: Ingredient, overrides: list[str], metric: str | None, bn_batches: int) -> None:
        self.cfg = load_run_config(reference.model_dir, overrides)
        self.reference = reference
        self.recipe = _recipe_class(self.cfg)(self.cfg)
        self.model = load_model(reference.model_dir, reference.cfg).eval()
        self.metric = metric or default_metric(self.cfg)
        self.higher_is_better = not any(w in self.metric for w in LOWER_IS_BETTER)
        self.bn_batches = bn_batches
        self._bn_inputs: list[torch.Tensor] | None = None

    def load(self, state: dict[str, torch.Tensor], *, fused: bool = True):
        self.model.load_state_dict(state)
        if fused and has_batchnorm(self.model) and self.bn_batches > 0:
            recompute_batchnorm(self.model, self._batchnorm_inputs())
        return self.model

    def _batchnorm_inputs(self) -> list[torch.Tensor]:
        if self._bn_inputs is None:  # the same training batches for every candidate, drawn once
            batches = self.recipe.training_batches(self.model, batch_size=64, max_batches=self.bn_batches)
            self._bn_inputs = [b[self.model.main_input_name] for b in batches]
            log(f"BatchNorm statistics recomputed on {len(self._bn_inputs)} training batches per candidate")
        return self._bn_inputs

    def evaluate(self, state: dict[str, torch.Tensor], *, fused: bool = True) -> dict[str, Any]:
        return self.recipe.evaluate_saved(self.reference.model_dir, model=self.load(state, fused=fused))

    def score(self, metrics: dict[str, Any]) -> float:
        if self.metric not in metrics:
            known = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
            raise ConfigError([f"metric={self.metric}: not among the evaluation's metrics ({', '.join(known)})"])
        return float(metrics[self.metric])


def default_metric(cfg: BaseConfig) -> str:
    """The kind's headline metric as ``evaluate`` reports it (multi-task: the first task's)."""
    task, name = next(iter(cfg.headline_metrics().items()))
    return f"{task}_{name}" if task else name


def _held_out(overrides: list[str]) -> list[str]:
    """Ingredients are ranked on held-out data: the validation split unless data.split says otherwise."""
    return overrides if any(o.startswith("data.split=") for o in overrides) else [*overrides, "data.split=val"]


# ---------------------------------------------------------------------------------------------- writing


def write_fused(out: Path, reference: Ingredient, model, metrics: dict[str, Any], record: dict[str, Any]) -> Path:
    """A normal model folder for fused weights: the reference's config, tokenizer/processor and resolved config,
    the new weights, the held-out metrics and what was fused (fusion.json), a report and a card."""
    from hf_tune.hub import write_model_card
    from hf_tune.report import write_report

    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for f in reference.model_dir.iterdir():
        if f.is_file() and f.name not in NOT_COPIED and not f.name.startswith(("predictions_", "eval_")):
            shutil.copy2(f, tmp / f.name)
    model.save_pretrained(str(tmp))
    save_config(reference.cfg, tmp)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (tmp / FUSION_FILE).write_text(json.dumps(record, indent=2))
    _plot_record(record, tmp / "plots")
    write_report(tmp, title=f"{record['method']} of {reference.cfg.recipe or reference.cfg.task}")
    write_model_card(reference.cfg, tmp, metrics)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # the folder appears whole or not at all
    return out


def _plot_record(record: dict[str, Any], folder: Path) -> None:
    """Ingredient scores against the fused model's (soups), or the held-out metric along alpha (interpolation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "sweep" in record and not record["sweep"]:
        return  # a single alpha: nothing to plot
    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    if record.get("sweep"):
        alphas = [r["alpha"] for r in record["sweep"]]
        ax.plot(alphas, [r["score"] for r in record["sweep"]], marker="o")
        ax.axvline(record["alpha"], ls="--", c="gray")
        ax.set_xlabel("alpha (0 = starting weights, 1 = fine-tuned)")
        name = "interpolation_sweep.png"
    else:
        rows = record["ingredients"]
        labels = [Path(r["name"]).name or r["name"] for r in rows] + [record["method"]]
        colors = ["tab:green" if r.get("in_soup") else "tab:gray" for r in rows] + ["tab:blue"]
        ax.bar(range(len(labels)), [r["score"] for r in rows] + [record["score"]], color=colors)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        lo = min([r["score"] for r in rows] + [record["score"]])
        ax.set_ylim(lo - 0.05 * abs(lo) - 1e-3, None)
        name = "soup_ingredients.png"
    ax.set_ylabel(f"{record['metric']} ({record['split']})")
    ax.set_title(f"{record['method']}: {record['metric']} on the held-out split")
    fig.tight_layout()
    fig.savefig(folder / name, dpi=110)
    plt.close(fig)


def _check_output(out: str | None, command: str) -> Path:
    if not out:
        raise ConfigError([f"{command}: output=DIR is required (where the fused model folder is written)"])
    p = Path(out)
    if p.exists() and any(p.iterdir()):
        raise ConfigError([f"output={out}: already exists and is not empty; choose another folder or remove it"])
    return p


# ---------------------------------------------------------------------------------------------- commands


def soup(
    paths: Sequence[str],
    *,
    method: str = "greedy",
    output: str | None = None,
    overrides: Sequence[str] = (),
    metric: str | None = None,
    bn_batches: int = 32,
) -> dict[str, Any]:
    """``hf-tune soup``: the uniform or greedy soup of ``paths``, written to ``output``; returns its metrics."""
    out = _check_output(output, "soup")
    method_fn = SOUP_METHODS.get(method)
    if len(paths) < 2:
        raise ConfigError([f"soup: give at least two runs or model folders to average, got {len(paths)}"])
    items = [load_ingredient(p) for p in paths]
    errors = compatibility_errors(items)
    if errors:
        raise ConfigError(errors)
    scorer = Scorer(items[0], _held_out(list(overrides)), metric, bn_batches)
    for it in items:
        it.metrics = scorer.evaluate(it.state, fused=False)
        it.score = scorer.score(it.metrics)
        log(f"ingredient {it.name}: {scorer.metric} = {it.score:.4f}")
    chosen, steps = method_fn(items, scorer)
    state = average_states([it.state for it in chosen])
    fused = len(chosen) > 1  # a greedy soup of one is that ingredient, saved as it was
    metrics = scorer.evaluate(state, fused=fused)
    score = scorer.score(metrics)
    best = max(items, key=lambda i: i.score if scorer.higher_is_better else -i.score)
    record = {
        "method": f"{method}_soup",
        "metric": scorer.metric,
        "split": metrics.get("split"),
        "data": getattr(getattr(scorer.cfg, "data", None), "path", None),
        "score": score,
        "best_ingredient": best.name,
        "best_ingredient_score": best.score,
        "ingredients": [
            {"name": it.name, "score": it.score, "in_soup": it in chosen, "model_dir": str(it.model_dir)}
            for it in items
        ],
        "steps": steps,
        "batchnorm_recomputed": fused and has_batchnorm(scorer.model) and bn_batches > 0,
    }
    write_fused(out, _reference(chosen, scorer), scorer.load(state, fused=fused), metrics, record)
    log(f"{method} soup of {len(chosen)} of {len(items)}: {scorer.metric} = {score:.4f} (best single {best.score:.4f})")
    return {"output": str(out), "method": method, "ingredients": len(chosen), **_scalar(metrics)}


def _reference(chosen: Sequence[Ingredient], scorer: Scorer) -> Ingredient:
    """The ingredient whose config and processor the fused folder takes: the best scoring one."""
    return max(chosen, key=lambda i: i.score if scorer.higher_is_better else -i.score)


SoupMethod = Callable[[Sequence[Ingredient], "Scorer"], tuple[list[Ingredient], list[dict]]]
SOUP_METHODS: Registry[SoupMethod] = Registry("soup method")
"""How ingredients are chosen: ``fn(ingredients, scorer) -> (chosen, steps)``; ``method=NAME`` on the CLI."""


@SOUP_METHODS.register("uniform")
def _uniform(items: Sequence[Ingredient], scorer: Scorer) -> tuple[list[Ingredient], list[dict]]:
    return list(items), []


@SOUP_METHODS.register("greedy")
def _greedy(items: Sequence[Ingredient], scorer: Scorer) -> tuple[list[Ingredient], list[dict]]:
    by_name = {it.name: it for it in items}

    def score_soup(names: list[str]) -> float:
        value = scorer.score(scorer.evaluate(average_states([by_name[n].state for n in names])))
        log(f"greedy soup: {len(names)} ingredients ({names[-1]} added): {scorer.metric} = {value:.4f}")
        return value

    result = greedy_soup(
        list(by_name), {n: i.score for n, i in by_name.items()}, score_soup, higher_is_better=scorer.higher_is_better
    )
    return [by_name[n] for n in result.chosen], [vars(s) for s in result.steps]


def average_checkpoints(
    run: str,
    *,
    last: int | None = None,
    top: int | None = None,
    metric: str | None = None,
    output: str | None = None,
    overrides: Sequence[str] = (),
    bn_batches: int = 32,
) -> dict[str, Any]:
    """``hf-tune average``: the uniform average of a run's last ``last`` checkpoints, or of its ``top`` best by a
    metric Trainer logged at their steps (EMA weights of a checkpoint first, as timm's avg_checkpoints)."""
    if (last is None) == (top is None):
        raise ConfigError(["average: give exactly one of last=K or top=K"])
    ckpts = checkpoints_to_average(Path(run), last=last, top=top, metric=metric)
    return soup([str(c) for c in ckpts], method="uniform", output=output, overrides=overrides, bn_batches=bn_batches)


def checkpoints_to_average(run: Path, *, last: int | None, top: int | None, metric: str | None) -> list[Path]:
    from hf_tune.recipes.base import complete_checkpoints

    ckpts = complete_checkpoints(run)
    k = last or top or 0
    if len(ckpts) < max(2, k):
        raise ConfigError(
            [
                f"average: {run} has {len(ckpts)} complete checkpoints, {max(2, k)} needed; keep more with "
                f"training.save_total_limit (and save more often with training.save_steps)"
            ]
        )
    if last is not None:
        return ckpts[-last:]
    name = metric or "eval_loss"
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    at_step = {h["step"]: h[name] for h in state.get("log_history", []) if name in h}
    scored = [(at_step[int(c.name.split("-")[-1])], c) for c in ckpts if int(c.name.split("-")[-1]) in at_step]
    if len(scored) < top:
        raise ConfigError([f"average top={top}: only {len(scored)} checkpoints have {name} logged at their step"])
    lower = any(w in name for w in LOWER_IS_BETTER)
    return [c for _, c in sorted(scored, key=lambda t: t[0], reverse=not lower)[:top]]


def interpolate(
    run: str,
    *,
    alpha: str = "0.5",
    base: str | None = None,
    output: str | None = None,
    overrides: Sequence[str] = (),
    metric: str | None = None,
    bn_batches: int = 32,
) -> dict[str, Any]:
    """``hf-tune interpolate``: WiSE-FT, ``(1 - alpha) * start + alpha * fine-tuned``, where ``start`` is the
    weights fine-tuning began from (rebuilt exactly as training built them: pretrained backbone, and a head
    that started fresh, which is kept fine-tuned) or ``base``. ``alpha=sweep`` scores 0, 0.1, ..., 1 on the
    held-out split and keeps the best."""
    out = _check_output(output, "interpolate")
    alphas = _alphas(alpha)
    tuned = load_ingredient(run)
    start, head = _start_state(tuned, base)
    keys = [k for k in tuned.state if k not in head]
    scorer = Scorer(tuned, _held_out(list(overrides)), metric, bn_batches)
    sweep = []
    for a in alphas:
        # alpha 1 is the fine-tuned model itself: its own BatchNorm statistics stay
        metrics = scorer.evaluate(interpolate_states(start, tuned.state, a, keys), fused=a < 1)
        sweep.append({"alpha": a, "score": scorer.score(metrics), "metrics": _scalar(metrics)})
        log(f"alpha {a:.2f}: {scorer.metric} = {sweep[-1]['score']:.4f}")
    best = max(sweep, key=lambda r: r["score"] if scorer.higher_is_better else -r["score"])
    state = interpolate_states(start, tuned.state, best["alpha"], keys)
    record = {
        "method": "wise_ft",
        "metric": scorer.metric,
        "split": best["metrics"].get("split"),
        "data": getattr(getattr(scorer.cfg, "data", None), "path", None),
        "alpha": best["alpha"],
        "score": best["score"],
        "fine_tuned": tuned.name,
        "start": base or f"the weights {tuned.name} started from (model.name={tuned.cfg.model.name})",
        "kept_fine_tuned": sorted(head),
        "sweep": sweep if len(sweep) > 1 else [],
    }
    write_fused(out, tuned, scorer.load(state, fused=best["alpha"] < 1), best["metrics"], record)
    return {
        "output": str(out),
        "alpha": best["alpha"],
        "sweep": [(r["alpha"], r["score"]) for r in sweep],
        **best["metrics"],
    }


def _alphas(alpha: str) -> list[float]:
    if alpha == "sweep":
        return [round(0.1 * i, 2) for i in range(11)]
    try:
        values = [float(a) for a in str(alpha).strip("[]").split(",")]
    except ValueError:
        raise ConfigError([f"alpha={alpha}: a number in [0, 1], a list such as [0.3,0.5,0.7], or sweep"]) from None
    if not all(0.0 <= a <= 1.0 for a in values):
        raise ConfigError([f"alpha={alpha}: every alpha must be in [0, 1]"])
    return values


def _start_state(tuned: Ingredient, base: str | None) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The weights a run started from, and its head's parameter names (the head stays fine-tuned: it started
    fresh, or from a head for the same labels, and interpolating it toward a random one only hurts).

    ``base`` (a model folder, run or checkpoint of the same architecture) gives the starting weights; otherwise
    the recipe rebuilds its model as training did (same config and seed: the pretrained backbone, or timm's
    random initialisation for a run from scratch)."""
    from transformers import set_seed

    from hf_tune.optim import head_parameter_names

    scratch = _recipe_class(tuned.cfg)(tuned.cfg)
    if base is not None:
        other = load_ingredient(base)
        diff = state_differences(tuned.state, other.state)
        if diff:
            raise ConfigError([f"base={base}: weights do not match {tuned.name}'s ({'; '.join(diff)})"])
        model = load_model(tuned.model_dir, tuned.cfg)
        return other.state, {k for k in head_parameter_names(model) if k in tuned.state}
    scratch.args = scratch.training_args()
    set_seed(scratch.args.seed)
    scratch.prepare_data()
    scratch.build_model()
    start = {k: v.detach().clone() for k, v in scratch.model.state_dict().items()}
    return start, {k for k in head_parameter_names(scratch.model) if k in tuned.state}


def _scalar(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}
