"""Running a study on this machine: ``search.n_jobs`` worker slots, each asks the study for a trial, runs it as
``python -m hf_tune.cli train`` in its own process (memory, threads and GPU memory are released when it exits, and a
killed trial does not kill the search), and tells the study the outcome.

A trial's process reports its evaluations and is pruned from the inside (:mod:`hf_tune.search_trial`); this side
reads what it left (``search_trial.json``, ``metrics.json``, the exit status). Counting the finished trials and
asking a new one happen under one lock (a file lock for SQLite and journal storages), so several workers on one
study start exactly ``search.n_trials``. Each running trial carries its host, worker pid and a heartbeat in its user
attributes: a trial whose worker died (a killed search) is marked failed by the next worker that looks.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_tune.errors import ConfigError, RunError
from hf_tune.search_study import (
    HEARTBEAT_S,
    PARENT_ENV,
    SEARCH_RECIPE,
    STALE_AFTER_S,
    SURPLUS,
    TRIAL_FILE,
    TRIAL_LOG,
    SearchPlan,
    decode,
    distribution,
    study_lock,
    trial_dir,
    yaml_value,
)
from hf_tune.techniques import log


@dataclass
class TrialOutcome:
    state: str
    """complete, pruned or fail."""
    value: float | None = None
    reason: str = ""
    user_error: bool = False


class SearchRunner:
    """One ``hf-tune search`` command on a study: ``search.n_jobs`` worker threads, each running trial processes
    one after another until the study holds n_trials finished trials or the timeout has passed."""

    def __init__(self, plan: SearchPlan, study, storage) -> None:
        self.plan, self.study, self.storage = plan, study, storage
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.outputs_lock = threading.Lock()
        self.failures_in_a_row = 0
        self.user_error: str | None = None
        self.procs: dict[int, subprocess.Popen] = {}
        self.started = time.monotonic()
        self.host = socket.gethostname()

    def run(self) -> None:
        # each slot sets its event when it ends; waiting on events (not Thread.join, which a KeyboardInterrupt
        # leaves claiming the thread has ended on Python < 3.13) lets Ctrl-C wait for the trials to be told
        ended = [threading.Event() for _ in range(self.plan.search.n_jobs)]
        for slot, event in enumerate(ended):
            threading.Thread(target=self._worker, args=(slot, event), daemon=True).start()
        try:
            for event in ended:
                while not event.wait(0.5):
                    pass
        except KeyboardInterrupt:
            self.stop.set()
            for proc in list(self.procs.values()):  # a terminal's Ctrl-C reached them too; SIGTERM did not
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)  # the trial saves a checkpoint and stops (StopOnSignal)
            for event in ended:
                event.wait()
            raise
        if self.user_error:
            raise ConfigError([self.user_error], self.plan.source)
        limit = self.plan.search.max_failures_in_a_row
        if self.failures_in_a_row >= limit:
            raise RunError(f"{limit} trials in a row failed; see their {TRIAL_LOG} in {self.plan.search_dir}")

    # ---------------------------------------------------------------- one slot
    def _worker(self, slot: int, ended: threading.Event) -> None:
        try:
            while not self.stop.is_set():
                trial = self._next_trial()
                if trial is None:
                    return
                outcome = self._run_trial(trial, slot)
                self._finish(trial, outcome)
        finally:
            ended.set()

    def _next_trial(self):
        import optuna

        s = self.plan.search
        if s.timeout is not None and time.monotonic() - self.started > s.timeout:
            return None
        with study_lock(self.plan.storage, self.lock):
            self._fail_stale()
            states = [t.state for t in self.study.get_trials(deepcopy=False)]
            done = sum(st in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for st in states)
            running = states.count(optuna.trial.TrialState.RUNNING)
            n = self.plan.n_trials
            if n is not None and done + running >= n:
                return None
            dists = {k: distribution(p) for k, p in s.space.items()}
            trial = self.study.ask(fixed_distributions=dists)
            if n is not None and is_surplus(self.study, trial.number, n):
                trial.set_user_attr(SURPLUS, True)
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return None
            folder = trial_dir(self.plan.search_dir, trial.number)
            trial.set_user_attr("hf_tune_run_dir", str(folder.resolve()))
            trial.set_user_attr("hf_tune_host", self.host)
            trial.set_user_attr("hf_tune_pid", os.getpid())
            trial.set_user_attr("hf_tune_heartbeat", time.time())
        return trial

    def _fail_stale(self) -> None:
        """RUNNING trials whose worker is gone: a dead process on this machine, or no heartbeat for
        STALE_AFTER_S from another machine (a killed search leaves its trial RUNNING in the storage)."""
        import optuna

        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            a = t.user_attrs
            if a.get("hf_tune_host") == self.host:
                gone = not _alive(int(a.get("hf_tune_pid", -1)))
            else:
                gone = time.time() - float(a.get("hf_tune_heartbeat", time.time())) > STALE_AFTER_S
            if gone:
                with contextlib.suppress(Exception):  # another worker may have marked it first
                    self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                    log(f"search {self.plan.study_name}: trial {t.number} lost its worker; marked failed")

    def _run_trial(self, trial, slot: int) -> TrialOutcome:
        s = self.plan.search
        folder = trial_dir(self.plan.search_dir, trial.number)
        folder.mkdir(parents=True, exist_ok=True)
        params = {k: decode(p, trial.params[k]) for k, p in s.space.items()}
        cmd = trial_command(self.plan, trial.number, params, folder)
        with open(folder / TRIAL_LOG, "w") as sink:
            sink.write("$ " + " ".join(cmd) + "\n")
            sink.flush()
            proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=self._env(slot))
            self.procs[trial.number] = proc
            try:
                while proc.poll() is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(HEARTBEAT_S)
                    if proc.returncode is None:
                        trial.set_user_attr("hf_tune_heartbeat", time.time())
            finally:
                self.procs.pop(trial.number, None)
        return read_outcome(folder, proc.returncode, self.plan.metric)

    def _env(self, slot: int) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env[PARENT_ENV] = str(os.getpid())
        n_jobs = self.plan.search.n_jobs
        if n_jobs > 1 and "OMP_NUM_THREADS" not in os.environ:  # trials side by side share the cores
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n_jobs))
        if n_jobs > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if gpus > 1:  # one GPU per slot: trials never share a GPU's memory by accident
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
        return env

    def _finish(self, trial, outcome: TrialOutcome) -> None:
        import optuna

        states = optuna.trial.TrialState
        if outcome.reason:
            trial.set_user_attr("hf_tune_error", outcome.reason[-2000:])
        if outcome.state == "complete":
            self.study.tell(trial, outcome.value)
        else:
            self.study.tell(trial, state=states.PRUNED if outcome.state == "pruned" else states.FAIL)
        folder = trial_dir(self.plan.search_dir, trial.number)
        if outcome.state == "pruned" and self.plan.search.delete_pruned:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        with self.lock:
            self.failures_in_a_row = self.failures_in_a_row + 1 if outcome.state == "fail" else 0
            if outcome.user_error and self.user_error is None:
                self.user_error = f"trial {trial.number} ({folder / TRIAL_LOG}): {outcome.reason}"
            if outcome.user_error or self.failures_in_a_row >= self.plan.search.max_failures_in_a_row:
                self.stop.set()
        log(progress_line(self.plan, self.study, trial.number, outcome, time.monotonic() - self.started))
        from hf_tune.search_outputs import write_tables

        with self.outputs_lock:
            write_tables(self.plan, self.study)


def is_surplus(study, number: int, n: int) -> bool:
    """Whether trial ``number`` is beyond n_trials: a database server has no file lock, so two workers may ask at
    the same instant; the trial with the higher number steps back (told failed, marked surplus, left out of every
    table) when the trials before it already make up n."""
    import optuna

    keep = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    return sum(t.number < number for t in study.get_trials(deepcopy=False, states=keep)) >= n


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def trial_command(
    plan: SearchPlan, number: int, params: dict[str, Any], folder: Path, cpu_threads: int | None = None
) -> list[str]:
    """``python -m hf_tune.cli train`` on the frozen search recipe with this trial's values and folder;
    ``cpu_threads``: the trial's share of the CPU cores when trials run side by side (default: the cores of this
    machine divided by search.n_jobs), unless the recipe sets speed.cpu_threads itself."""
    pinned = {
        "training.output_dir": str(folder),
        "search.trial": number,
        "search.storage": plan.storage,
        "search.study_name": plan.study_name,
        "search.metric": plan.metric,
        "training.push_to_hub": False,  # a search pushes nothing; push the retrained best recipe
    }
    n_jobs = plan.search.n_jobs
    if cpu_threads is None and n_jobs > 1:
        cpu_threads = max(1, (os.cpu_count() or 1) // n_jobs)
    if cpu_threads is not None and getattr(getattr(plan.cfg, "speed", None), "cpu_threads", 0) is None:
        pinned["speed.cpu_threads"] = cpu_threads  # else each trial would size itself to the whole machine
    args = [f"{k}={yaml_value(v)}" for k, v in {**params, **pinned}.items()]
    return [sys.executable, "-m", "hf_tune.cli", "train", f"recipe={plan.search_dir / SEARCH_RECIPE}", *args]


def read_outcome(folder: Path, returncode: int, metric: str) -> TrialOutcome:
    """A finished trial process -> its outcome: pruned (its search_trial.json says so), complete (its metric in
    metrics.json), or failed (exit status; 2 is a user error that every trial would hit, which stops the search)."""
    if returncode != 0:
        tail = _log_tail(folder / TRIAL_LOG)
        if returncode == 2:
            return TrialOutcome("fail", reason=tail, user_error=True)
        how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit status {returncode}"
        if returncode in (130, 143):
            how = "interrupted (SIGINT/SIGTERM; a checkpoint was saved)"
        return TrialOutcome("fail", reason=f"{how}: {tail}")
    info_file = folder / TRIAL_FILE
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    if info.get("pruned"):
        return TrialOutcome("pruned")
    metrics_file = folder / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    value = metrics.get(metric)
    if not isinstance(value, (int, float)):
        known = sorted(k for k, v in metrics.items() if k.startswith("eval_") and isinstance(v, (int, float)))
        return TrialOutcome(
            "fail", reason=f"search.metric={metric} is not in the run's metrics: {known}", user_error=True
        )
    if not math.isfinite(value):
        return TrialOutcome("fail", reason=f"{metric}={value}")
    return TrialOutcome("complete", value=float(value))


def _log_tail(path: Path, lines: int = 6) -> str:
    """What a failed trial said: its error lines (``hf-tune train: error: ...``, exception lines), else its last
    lines; the command line at the top of the log is left out."""
    if not path.is_file():
        return "(no log)"
    text = [line for line in path.read_text(errors="replace").strip().splitlines()[1:] if line.strip()]
    errors = [line for line in text if "error" in line.lower() or line.startswith(("hf-tune train:", "  - "))]
    return " | ".join((errors or text)[-lines:])[-3000:]


def progress_line(plan: SearchPlan, study, number: int, outcome: TrialOutcome, elapsed: float) -> str:
    import optuna

    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)]
    n = {
        s: sum(t.state == getattr(optuna.trial.TrialState, s.upper()) for t in trials)
        for s in ("complete", "pruned", "fail")
    }
    told = next((t for t in trials if t.number == number), None)
    value = told.value if told is not None and told.value is not None else outcome.value
    shown_value = f" {plan.metric}={value:.4g}" if value is not None else ""
    if outcome.state == "pruned" and told is not None and told.intermediate_values:
        shown_value += f" at evaluation {max(told.intermediate_values)}"
    try:
        best = study.best_trial
        best_text = f" (best {best.value:.4f}, trial {best.number})"
    except ValueError:
        best_text = ""
    shown = " ".join(f"{k}={_short(v)}" for k, v in (told.params if told is not None else {}).items())
    total = f"/{plan.n_trials}" if plan.n_trials else ""
    why = f" [{outcome.reason[:160]}]" if outcome.state == "fail" else ""
    return (
        f"search {plan.study_name}: trial {number} {outcome.state}{shown_value}{best_text}{why} | "
        f"{n['complete'] + n['pruned']}{total} finished ({n['pruned']} pruned, {n['fail']} failed), "
        f"{elapsed:.0f}s | {shown}"
    )


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
