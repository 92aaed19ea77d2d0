"""What a search leaves in its folder (``training.output_dir``): the trials table (``trials.csv``, ``trials.json``),
``best_recipe.yaml`` (a complete recipe that retrains the best trial), plots and ``search_report.md``.

Everything is read back from the study, so any worker of a shared study (or ``hf-tune search`` run again) writes
the same files; each file is written under a temporary name and renamed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
from pathlib import Path
from typing import Any

import yaml

from hf_tune.schema import RESOLVED_CONFIG_NAME

TRIALS_CSV = "trials.csv"
TRIALS_JSON = "trials.json"
BEST_RECIPE = "best_recipe.yaml"
REPORT = "search_report.md"
PLOTS_DIR = "plots"
BEST_RUN_DIR = "best"
"""best_recipe.yaml trains into <search folder>/best: the best trial's own folder is never written over."""
MIN_TRIALS_FOR_IMPORTANCE = 4


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _state(trial) -> str:
    return trial.state.name.lower()


def trial_rows(plan, study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, each searched key, evaluations, duration, run folder, error."""
    from hf_tune.search_study import decode

    space = plan.search.space
    rows = []
    for t in _trials(study):
        row: dict[str, Any] = {"trial": t.number, "state": _state(t), plan.metric: t.value}
        for key, p in space.items():
            row[key] = decode(p, t.params[key]) if key in t.params else None
        steps = sorted(t.intermediate_values)
        row["evaluations"] = len(steps)
        row["last_reported"] = t.intermediate_values[steps[-1]] if steps else None
        end = t.datetime_complete
        row["duration_s"] = round((end - t.datetime_start).total_seconds(), 1) if end and t.datetime_start else None
        row["run_dir"] = t.user_attrs.get("hf_tune_run_dir")
        row["error"] = t.user_attrs.get("hf_tune_error", "")
        rows.append(row)
    return rows


def _trials(study) -> list:
    """The study's trials without the ones given up unrun in a race beyond n_trials."""
    from hf_tune.search_study import SURPLUS

    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)]


def write_tables(plan, study) -> None:
    """trials.csv, trials.json and best_recipe.yaml (after every finished trial: a long search can be read, and
    its best recipe used, while it runs)."""
    rows = trial_rows(plan, study)
    folder = plan.search_dir
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / TRIALS_JSON, json.dumps(rows, indent=1, default=str))
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    _write(folder / TRIALS_CSV, buf.getvalue())
    write_best_recipe(plan, study)


def best_trial(study):
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def best_recipe_data(plan, trial) -> dict[str, Any]:
    """The best trial's resolved config (what its run trained), retargeted to <search folder>/best and without
    the search section, so ``hf-tune train recipe=best_recipe.yaml`` trains the same run again."""
    from hf_tune.config import from_mapping
    from hf_tune.schema import to_dict
    from hf_tune.search_study import decode, with_values

    saved = Path(trial.user_attrs.get("hf_tune_run_dir", "")) / RESOLVED_CONFIG_NAME
    if saved.is_file():
        data = yaml.safe_load(saved.read_text()) or {}
    else:  # the trial's folder was moved away: rebuild it from the study's base recipe and the trial's values
        params = {k: decode(p, trial.params[k]) for k, p in plan.search.space.items() if k in trial.params}
        data = to_dict(from_mapping(with_values(plan.base, params), plan.source))
    data.pop("search", None)
    data["resume"], data["overwrite"] = False, False
    training = data.setdefault("training", {})
    training["output_dir"] = str(plan.search_dir / BEST_RUN_DIR)
    if "push_to_hub" in plan.base.get("training", {}):  # trials never push; the retrained best may
        training["push_to_hub"] = plan.base["training"]["push_to_hub"]
    else:
        training.pop("push_to_hub", None)
    return data


def write_best_recipe(plan, study) -> Path | None:
    from hf_tune.search_study import decode

    trial = best_trial(study)
    if trial is None:
        return None
    path = plan.search_dir / BEST_RECIPE
    shown = ", ".join(f"{k}={decode(p, trial.params[k])}" for k, p in plan.search.space.items() if k in trial.params)
    header = [
        f"# Launch:   hf-tune train recipe={path}",
        f"# Best trial {trial.number} of search study {plan.study_name!r} ({plan.storage}): "
        f"{plan.metric}={trial.value:.6g} ({plan.search.direction})",
        f"# Searched: {shown}",
        f"# The trial's own run: {trial.user_attrs.get('hf_tune_run_dir')}; this recipe trains it again into "
        f"training.output_dir.",
    ]
    _write(path, "\n".join(header) + "\n" + yaml.safe_dump(best_recipe_data(plan, trial), sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def write_plots(plan, study) -> tuple[list[Path], list[str]]:
    """Optimisation history, learning curves (pruned trials in grey), value against each searched key, and
    parameter importances (fANOVA) when at least 2 keys and MIN_TRIALS_FOR_IMPORTANCE complete trials exist.
    Returns (plots written, notes on plots left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = plan.search_dir / PLOTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    trials = _trials(study)
    complete = [t for t in trials if _state(t) == "complete" and _finite(t.value)]
    written, notes = [], []
    for name, draw in (
        ("optimization_history.png", _plot_history),
        ("intermediate_values.png", _plot_curves),
        ("slice.png", _plot_slices),
        ("param_importances.png", _plot_importances),
    ):
        fig, note = draw(plan, study, trials, complete, plt)
        if fig is None:
            notes += [note] if note else []
            continue
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        written.append(folder / name)
    return written, notes


def _plot_history(plan, study, trials, complete, plt):
    pruned = [(t.number, t.value) for t in trials if _state(t) == "pruned" and _finite(t.value)]
    if not complete and not pruned:
        return None, ""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter([t.number for t in complete], [t.value for t in complete], label="complete", zorder=3)
    if pruned:
        ax.scatter(*zip(*pruned, strict=True), marker="x", color="grey", label="pruned (last evaluation)")
    if complete:
        better = max if plan.search.direction == "maximize" else min
        xs, ys, best = [], [], None
        for t in sorted(complete, key=lambda t: t.number):
            best = t.value if best is None else better(best, t.value)
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(plan.metric)
    ax.set_title("optimisation history")
    ax.legend(fontsize=8)
    return fig, ""


def _plot_curves(plan, study, trials, complete, plt):
    curves = [t for t in trials if t.intermediate_values]
    if not curves:
        return None, ""
    fig, ax = plt.subplots(figsize=(7, 4))
    for t in curves:
        steps = sorted(t.intermediate_values)
        style = {"color": "grey", "ls": "--", "alpha": 0.6} if _state(t) == "pruned" else {"alpha": 0.9}
        ax.plot(steps, [t.intermediate_values[s] for s in steps], marker=".", **style)
    ax.set_xlabel("evaluation during training")
    ax.set_ylabel(plan.metric)
    ax.set_title("learning curves (pruned trials dashed grey)")
    return fig, ""


def _plot_slices(plan, study, trials, complete, plt):
    keys = [k for k in plan.search.space if any(k in t.params for t in complete)]
    if not complete or not keys:
        return None, ""
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.4), sharey=True, squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        p = plan.search.space[key]
        pts = [(t.params[key], t.value, t.number) for t in complete if key in t.params]
        if p.type == "categorical":
            order = [str(c) for c in _stored_choices(p)]
            xs = [order.index(str(v)) for v, _, _ in pts]
            ax.set_xticks(range(len(order)), order, rotation=30, fontsize=7)
        else:
            xs = [v for v, _, _ in pts]
            if p.log:
                ax.set_xscale("log")
        ax.scatter(xs, [v for _, v, _ in pts], c=[n for _, _, n in pts], cmap="viridis")
        ax.set_xlabel(key, fontsize=8)
    axes[0][0].set_ylabel(plan.metric)
    fig.suptitle("objective against each searched key (colour: trial number)", fontsize=9)
    return fig, ""


def _plot_importances(plan, study, trials, complete, plt):
    if len(plan.search.space) < 2 or len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return None, (
            f"parameter importances need >= 2 searched keys and >= {MIN_TRIALS_FOR_IMPORTANCE} complete trials "
            f"(have {len(plan.search.space)} and {len(complete)})"
        )
    importances, why = _importances(study)
    if not importances:
        return None, f"parameter importances not computed: {why}"
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(importances)))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (fANOVA, share of the objective's variance)")
    ax.tick_params(axis="y", labelsize=8)
    return fig, ""


def _stored_choices(p) -> list[Any]:
    from hf_tune.search_study import encoded_choices

    return encoded_choices(p.choices)[0]


def _importances(study) -> tuple[dict[str, float], str]:
    import optuna

    try:
        return dict(optuna.importance.get_param_importances(study)), ""
    except (ValueError, RuntimeError) as exc:  # e.g. a key that took one value in every complete trial
        return {}, str(exc).splitlines()[0]


# --------------------------------------------------------------------------------------------------
# Report and summary
# --------------------------------------------------------------------------------------------------


def counts(study) -> dict[str, int]:
    out = {"complete": 0, "pruned": 0, "fail": 0, "running": 0, "waiting": 0}
    for t in _trials(study):
        out[_state(t)] = out.get(_state(t), 0) + 1
    return out


def write_report(plan, study, plots: list[Path], notes: list[str], wall_s: float) -> Path:
    rows = trial_rows(plan, study)
    best = best_trial(study)
    n = counts(study)
    reverse = plan.search.direction == "maximize"
    ranked = sorted(
        (r for r in rows if r["state"] == "complete" and _finite(r[plan.metric])),
        key=lambda r: r[plan.metric],
        reverse=reverse,
    ) + [r for r in rows if not (r["state"] == "complete" and _finite(r[plan.metric]))]
    s = plan.search
    lines = [
        f"# Search report: {plan.study_name}",
        "",
        f"- objective: `{plan.metric}` ({s.direction}) on the validation split",
        f"- sampler `{s.sampler}`, pruner `{s.pruner}`, backend `{s.backend}`, study in `{plan.storage}`",
        f"- trials: {n['complete']} complete, {n['pruned']} pruned, {n['fail']} failed"
        + (f", {n['running']} running" if n["running"] else ""),
        f"- wall time of this command: {wall_s:.0f} s",
        "",
    ]
    if best is not None:
        from hf_tune.search_study import decode

        params = {k: decode(p, best.params[k]) for k, p in s.space.items() if k in best.params}
        lines += [
            "## Best trial",
            "",
            f"Trial {best.number}: `{plan.metric}` = {best.value:.4f}, "
            f"run folder `{best.user_attrs.get('hf_tune_run_dir')}`",
            "",
            *[f"- `{k}`: {v}" for k, v in params.items()],
            "",
            "Retrain it (same seed, same result on CPU) and evaluate it on held-back data:",
            "",
            "```bash",
            f"hf-tune train recipe={plan.search_dir / BEST_RECIPE}",
            f"hf-tune evaluate {plan.search_dir / BEST_RUN_DIR} data.path=HELD_BACK_FILE",
            "```",
            "",
        ]
    keys = ["trial", "state", plan.metric, *s.space, "evaluations", "duration_s"]
    lines += ["## Trials", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in ranked:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k in keys) + " |")
    lines += ["", f"All columns (errors, run folders): `{TRIALS_CSV}`, `{TRIALS_JSON}`.", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({PLOTS_DIR}/{p.name})" for p in plots] + [""]
    lines += [f"- {note}" for note in notes]
    path = plan.search_dir / REPORT
    _write(path, "\n".join(lines) + "\n")
    return path


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_outputs(plan, study, wall_s: float) -> Path:
    write_tables(plan, study)
    plots, notes = write_plots(plan, study)
    return write_report(plan, study, plots, notes, wall_s)


def summary(plan, study, wall_s: float) -> dict[str, Any]:
    from hf_tune.search_study import decode

    best = best_trial(study)
    out: dict[str, Any] = {
        "study": plan.study_name,
        "storage": plan.storage,
        "search_dir": str(plan.search_dir),
        "metric": plan.metric,
        "direction": plan.search.direction,
        **{f"n_{k}": v for k, v in counts(study).items()},
        "wall_s": round(wall_s, 1),
        "trials_csv": str(plan.search_dir / TRIALS_CSV),
        "trials_json": str(plan.search_dir / TRIALS_JSON),
        "report": str(plan.search_dir / REPORT),
    }
    if best is not None:
        out |= {
            "best_trial": best.number,
            "best_value": best.value,
            "best_params": {k: decode(p, best.params[k]) for k, p in plan.search.space.items() if k in best.params},
            "best_run_dir": best.user_attrs.get("hf_tune_run_dir"),
            "best_recipe": str(plan.search_dir / BEST_RECIPE),
        }
    return out
