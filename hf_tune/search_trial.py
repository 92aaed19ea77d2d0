"""Inside a trial's run (``hf-tune train ... search.trial=N``, launched by ``hf-tune search``): after each evaluation
during training the objective is reported to the study and the study's pruner is asked whether to stop; the
callback is added by ``Recipe._setup_trainer`` when ``search.trial`` is set.

A pruned trial stops training at that evaluation and then finishes as every run does (final evaluation, model/,
report), so any trial, pruned or not, can be evaluated, reported or pushed like a run. What the trial reported is
written to ``search_trial.json`` in its folder for the search process to read.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from hf_tune.errors import ConfigError
from hf_tune.search_study import BACKENDS, EXIT_PARENT_GONE, PARENT_ENV, TRIAL_FILE, build_pruner, open_storage
from hf_tune.techniques import log


class OptunaReporter:
    """Reports a trial's evaluations to its study (from the trial's own process) and asks the study's pruner."""

    def __init__(self, search, trial_number: int, output_dir: Path) -> None:
        import optuna

        self.storage = open_storage(search.storage)
        self.study = optuna.load_study(
            study_name=search.study_name,
            storage=self.storage,
            pruner=build_pruner(search),
            sampler=optuna.samplers.RandomSampler(),  # this process samples nothing
        )
        study_id = self.storage.get_study_id_from_name(search.study_name)
        self.trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)
        self.active = self.storage.get_trial(self.trial_id).state == optuna.trial.TrialState.RUNNING
        if not self.active:
            log(f"search.trial={trial_number}: that trial of {search.study_name} is finished; not reporting to it")

    def report(self, evaluation: int, value: float) -> bool:
        if not self.active:
            return False
        self.storage.set_trial_intermediate_value(self.trial_id, evaluation, value)
        return bool(self.study.pruner.prune(self.study, self.storage.get_trial(self.trial_id)))


class SearchTrialCallback(TrainerCallback):
    """In a trial's run: after each evaluation during training, report the objective and stop training when the
    pruner says so (the run then finishes as usual, so a pruned trial is an ordinary finished run of fewer
    steps); the trial stops at once when its search process has died."""

    def __init__(self, reporter, *, metric: str, output_dir: Path, trial: int, study: str, parent_pid: int | None):
        self.reporter, self.metric, self.output_dir = reporter, metric, Path(output_dir)
        self.info: dict[str, Any] = {
            "study": study,
            "trial": trial,
            "metric": metric,
            "evaluations": [],
            "pruned": False,
        }
        self.parent_pid = parent_pid
        self.training = False
        if parent_pid is not None and sys.platform.startswith("linux"):
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the search process
        self._exit_if_orphaned()  # the search may have died before the line above

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        self._write()

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_step_end(self, args, state, control, **kwargs):
        self._exit_if_orphaned()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.training or not state.is_world_process_zero:
            return  # the final evaluation after training is the trial's result, read from metrics.json
        metrics = metrics or {}
        if self.metric not in metrics:
            known = sorted(k for k in metrics if k.startswith("eval_") and not k.endswith(("_runtime", "_second")))
            raise ConfigError([f"search.metric={self.metric}: not among this run's evaluation metrics {known}"])
        value = float(metrics[self.metric])
        evaluation = len(self.info["evaluations"]) + 1
        prune = self.reporter.report(evaluation, value) if math.isfinite(value) else True
        self.info["evaluations"].append({"evaluation": evaluation, "step": state.global_step, "value": value})
        if prune:
            self.info["pruned"] = True
            self.info["pruned_at"] = {"evaluation": evaluation, "step": state.global_step}
            log(f"search trial {self.info['trial']}: pruned at evaluation {evaluation} ({self.metric}={value:.4f})")
            control.should_training_stop = True
        self._write()

    def _write(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.output_dir / f".{TRIAL_FILE}.tmp"
        tmp.write_text(json.dumps(self.info, indent=1))
        tmp.replace(self.output_dir / TRIAL_FILE)

    def _exit_if_orphaned(self) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log(f"search trial {self.info['trial']}: its search process is gone; stopping")
            os._exit(EXIT_PARENT_GONE)


def build_trial_callback(search, output_dir: Path) -> SearchTrialCallback:
    """The callback of a run launched as trial ``search.trial`` (see ``Recipe._setup_trainer``)."""
    reporter = BACKENDS.entry(search.backend).meta["reporter"](search, search.trial, output_dir)
    parent = os.environ.get(PARENT_ENV)
    return SearchTrialCallback(
        reporter,
        metric=search.metric,
        output_dir=output_dir,
        trial=search.trial,
        study=search.study_name,
        parent_pid=int(parent) if parent and parent.isdigit() else None,
    )
