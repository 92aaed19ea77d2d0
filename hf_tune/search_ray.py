"""``search.backend=ray``: the same search through Ray Tune, for a Ray cluster (``RAY_ADDRESS``) or a local Ray.

What stays the same: the validated plan, the space (as Optuna distributions, sampled by Optuna's sampler through
Ray's ``OptunaSearch``), each trial as ``python -m hf_tune.cli train`` in its own process writing an ordinary run
folder under ``training.output_dir``, and the outputs (:mod:`hf_tune.search_outputs`). What Ray does: it places
trials on the cluster's workers (``search.n_jobs`` at once, each with its share of CPUs and a GPU when there is
one), prunes with its scheduler (``search.pruner`` maps to MedianStoppingRule / ASHA, :data:`RAY_SCHEDULERS`), and
keeps the experiment under ``training.output_dir/ray/<study>`` so that the same command restores it.

A trial's process cannot ask Ray whether to stop; it appends each evaluation to ``search_progress.jsonl`` in its
folder (:class:`ProgressFileReporter`), the Ray trial function relays them with ``ray.tune.report``, and when the
scheduler stops the trial Ray ends the worker, which takes the trial process with it (PR_SET_PDEATHSIG, and the
orphan check in :class:`hf_tune.search_trial.SearchTrialCallback`). ``training.output_dir`` must be on storage
that every Ray node sees (NFS or similar).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from hf_tune.registry import Registry
from hf_tune.search_study import (
    PARENT_ENV,
    SAMPLERS,
    SEARCH_RECIPE,
    TRIAL_LOG,
    SearchPlan,
    decode,
    distribution,
    trial_dir,
)
from hf_tune.techniques import log

PROGRESS_FILE = "search_progress.jsonl"
FINAL_KEY = "hf_tune_final"
"""Reported once a trial's run has finished; a trial without it that did not error was stopped by the scheduler."""

RAY_SCHEDULERS: Registry[Callable[..., Any]] = Registry("Ray scheduler (search.pruner with search.backend=ray)")


@RAY_SCHEDULERS.register("median")
def _median(*, startup_trials: int, warmup_evals: int):
    from ray.tune.schedulers import MedianStoppingRule

    return MedianStoppingRule(
        time_attr="training_iteration", grace_period=max(1, warmup_evals), min_samples_required=max(1, startup_trials)
    )


@RAY_SCHEDULERS.register("successive_halving")
def _asha(*, startup_trials: int, warmup_evals: int):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=10**6, grace_period=max(1, warmup_evals), brackets=1)


@RAY_SCHEDULERS.register("hyperband")
def _hyperband(*, startup_trials: int, warmup_evals: int):
    from ray.tune.schedulers import ASHAScheduler

    # asynchronous Hyperband: several brackets of successive halving (Li et al. 2020)
    return ASHAScheduler(
        time_attr="training_iteration", max_t=10**6, grace_period=max(1, warmup_evals), reduction_factor=3, brackets=3
    )


@RAY_SCHEDULERS.register("none")
def _fifo(*, startup_trials: int, warmup_evals: int):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


class ProgressFileReporter:
    """In a trial's process under Ray: append each evaluation to search_progress.jsonl (the Ray trial function
    relays it); never prunes by itself, Ray's scheduler does."""

    def __init__(self, search, trial_number: int, output_dir: Path) -> None:
        self.path = Path(output_dir) / PROGRESS_FILE

    def report(self, evaluation: int, value: float) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"evaluation": evaluation, "value": value}) + "\n")
        return False


RAY_ID_FILE = "ray_trial_id"
"""In a trial folder: the Ray trial it belongs to (a restarted Ray trial finds its folder again)."""


def claim_folder(search_dir: Path, trial_id: str) -> tuple[int, Path]:
    """The trial folder of Ray trial ``trial_id``: its own from an earlier start, else the next free
    ``trial-NNNN`` (claimed by ``mkdir``, which is atomic on shared file systems too)."""
    for folder in sorted(search_dir.glob("trial-*")):
        if (folder / RAY_ID_FILE).is_file() and (folder / RAY_ID_FILE).read_text().strip() == trial_id:
            return int(folder.name.split("-")[-1]), folder
    number = 0
    while True:
        folder = trial_dir(search_dir, number)
        try:
            folder.mkdir()
            break
        except FileExistsError:
            number += 1
    (folder / RAY_ID_FILE).write_text(trial_id)
    return number, folder


def claimed_folders(search_dir: Path) -> dict[str, tuple[int, Path]]:
    out = {}
    for folder in search_dir.glob("trial-*"):
        if (folder / RAY_ID_FILE).is_file():
            out[(folder / RAY_ID_FILE).read_text().strip()] = (int(folder.name.split("-")[-1]), folder)
    return out


def ray_trial(config: dict[str, Any], *, plan: SearchPlan, cwd: str, cpus: int) -> None:
    """One Ray trial: run ``hf-tune train`` for it, relay its evaluations, report the final metric. It runs in
    ``cwd``, the search command's folder (Ray starts trials in folders of its own; relative paths in the recipe
    are relative to where the search was started, which every node must see under the same path)."""
    from ray import tune

    from hf_tune.search_runner import read_outcome, trial_command

    plan = replace(plan, search_dir=Path(cwd) / plan.search_dir)
    number, folder = claim_folder(plan.search_dir, tune.get_context().get_trial_id())
    (folder / PROGRESS_FILE).unlink(missing_ok=True)  # a restarted trial reports afresh
    params = {k: decode(p, config[k]) for k, p in plan.search.space.items()}
    cmd = [*trial_command(plan, number, params, folder, cpu_threads=cpus), "search.backend=ray"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{PARENT_ENV: str(os.getpid())})
    seen = 0
    with open(folder / TRIAL_LOG, "w") as sink:
        sink.write("$ " + " ".join(cmd) + "\n")
        sink.flush()
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            while True:
                done = proc.poll() is not None
                progress = folder / PROGRESS_FILE
                lines = progress.read_text().splitlines() if progress.is_file() else []
                for line in lines[seen:]:
                    row = json.loads(line)
                    tune.report({plan.metric: row["value"], "evaluation": row["evaluation"]})
                seen = len(lines)
                if done:
                    break
                time.sleep(1.0)
        finally:
            if proc.poll() is None:
                proc.kill()
    outcome = read_outcome(folder, proc.returncode, plan.metric)
    if outcome.state != "complete":
        raise RuntimeError(f"trial {number} ({folder / TRIAL_LOG}): {outcome.reason}")
    tune.report({plan.metric: outcome.value, "evaluation": seen + 1, FINAL_KEY: 1})


def run_ray_search(plan: SearchPlan) -> dict[str, Any]:
    import ray

    from hf_tune.schema import dump_yaml

    started = time.monotonic()
    plan.search_dir.mkdir(parents=True, exist_ok=True)
    (plan.search_dir / SEARCH_RECIPE).write_text(dump_yaml(plan.cfg))
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    try:
        return _fit(plan, started)
    finally:
        if started_ray:
            ray.shutdown()


def _fit(plan: SearchPlan, started: float) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from hf_tune.search_outputs import summary, write_outputs

    s = plan.search
    experiment = (plan.search_dir / "ray").resolve()
    path = experiment / plan.study_name
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // s.n_jobs)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    trial_fn = tune.with_parameters(ray_trial, plan=plan, cwd=os.getcwd(), cpus=cpus)
    trainable = tune.with_resources(trial_fn, {"cpu": cpus, "gpu": gpus})
    if tune.Tuner.can_restore(str(path)):
        log(f"search {plan.study_name}: restoring the Ray experiment in {path} (finished trials are kept)")
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=False)
    else:
        seed = s.seed if s.seed is not None else plan.cfg.training.get("seed", 42)
        sampler = SAMPLERS.get(s.sampler)(seed=seed, startup_trials=s.sampler_startup_trials, grid={})
        searcher = OptunaSearch(
            space={k: distribution(p) for k, p in s.space.items()},
            metric=plan.metric,
            mode="max" if s.direction == "maximize" else "min",
            sampler=sampler,
        )
        scheduler = RAY_SCHEDULERS.get(s.pruner)(
            startup_trials=s.pruner_startup_trials, warmup_evals=s.pruner_warmup_evals
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                metric=plan.metric,
                mode="max" if s.direction == "maximize" else "min",
                num_samples=plan.n_trials or -1,
                time_budget_s=s.timeout,
                max_concurrent_trials=s.n_jobs,
                reuse_actors=False,  # a stopped trial's worker ends, and its trial process with it
            ),
            run_config=tune.RunConfig(
                name=plan.study_name, storage_path=str(experiment), verbose=0, callbacks=[progress_lines(plan)]
            ),
        )
    results = tuner.fit()
    study = study_from_results(plan, results)
    shown = replace(plan, storage=f"ray experiment {path}")
    write_outputs(shown, study, time.monotonic() - started)
    return summary(shown, study, time.monotonic() - started)


def progress_lines(plan: SearchPlan):
    """A Ray callback that prints hf_tune's line per finished trial (stderr), as the optuna backend does."""
    from ray import tune

    class ProgressLines(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            stopped = "complete" if result.get(FINAL_KEY) else "pruned"
            value = result.get(plan.metric)
            shown = f" {plan.metric}={value:.4g}" if isinstance(value, (int, float)) else ""
            self._line(trial, trials, f"{stopped}{shown}")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, trials, "fail")

        def _line(self, trial, trials, what: str) -> None:
            number = claimed_folders(plan.search_dir).get(trial.trial_id, (trial.trial_id, None))[0]
            done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
            params = " ".join(f"{k}={v}" for k, v in (trial.config or {}).items() if k in plan.search.space)
            log(f"search {plan.study_name}: trial {number} {what} | {done} of {len(trials)} Ray trials done | {params}")

    return ProgressLines()


def study_from_results(plan: SearchPlan, results) -> Any:
    """The Ray experiment as an in-memory Optuna study (one trial per Ray trial, numbered as its folder), so the
    trials table, best recipe, plots and report are made exactly as for the optuna backend."""
    import optuna

    s = plan.search
    dists = {k: distribution(p) for k, p in s.space.items()}
    study = optuna.create_study(direction=s.direction)
    claimed = claimed_folders(plan.search_dir)
    rows = []
    for result in results:
        # Ray names a trial's result folder <trainable>_<trial id>_<index>_<params>
        found = re.match(r"ray_trial_([0-9a-f]+)_", Path(result.path).name)
        trial_id = (result.metrics or {}).get("trial_id") or (found.group(1) if found else "")
        rows.append((claimed.get(trial_id, (None, None)), result))
    unclaimed = max([n for (n, _), _ in rows if n is not None], default=-1) + 1
    for (number, folder), result in sorted(rows, key=lambda r: (r[0][0] is None, r[0][0] or 0)):
        if number is None:  # failed before it had a folder
            number, unclaimed = unclaimed, unclaimed + 1
            folder = trial_dir(plan.search_dir, number)
        progress = folder / PROGRESS_FILE
        steps = [json.loads(line) for line in progress.read_text().splitlines()] if progress.is_file() else []
        metrics = result.metrics or {}
        if result.error is not None:
            state, value = optuna.trial.TrialState.FAIL, None
        elif metrics.get(FINAL_KEY):
            state, value = optuna.trial.TrialState.COMPLETE, float(metrics[plan.metric])
        else:
            state, value = optuna.trial.TrialState.PRUNED, steps[-1]["value"] if steps else None
        config = result.config or {}
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value,
                params={k: config[k] for k in dists if k in config},
                distributions={k: d for k, d in dists.items() if k in config},
                intermediate_values={r["evaluation"]: r["value"] for r in steps},
                user_attrs={"hf_tune_run_dir": str(folder.resolve()), "ray_trial": metrics.get("trial_id", "")},
            )
        )
    return study
