"""Hyperparameter search over whole recipes: ``hf-tune search recipe=FILE.yaml [key=value ...]``.

(Named search_study, not search: importing a submodule ``hf_tune.search`` would set the package attribute and
hide the public ``hf_tune.search()`` function for the rest of the session.)

Why not ``Trainer.hyperparameter_search``: it searches TrainingArguments fields only (model and technique keys
such as LoRA rank are skipped with a warning), runs every trial in one process (memory and threads carry over
from trial to trial), and a killed trial takes the search with it. Here the space is written in recipe keys and
checked against the kind's schema before the first trial; each trial is ``hf-tune train`` in its own process and
leaves an ordinary run folder (``trial-0003/``) under ``training.output_dir``; the study lives in Optuna storage
(SQLite by default, or an RDB URL / journal file that several workers and machines share), so running the same
command again continues it.

Order of a search: validate everything (recipe, space values, metric, budget, pruning rule) -> open the study ->
each worker slot asks a trial, runs it, tells the result (:mod:`hf_tune.search_runner`; inside a trial,
:mod:`hf_tune.search_trial` reports evaluations and prunes) -> trials table, best_recipe.yaml, plots and report
(:mod:`hf_tune.search_outputs`). Nothing is created before the validation has passed.

This module imports Optuna only inside functions: the schema reads its registries when a config validates.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_tune.errors import ConfigError
from hf_tune.registry import Registry
from hf_tune.techniques import log

LOWER_IS_BETTER = frozenset({"loss", "mse", "rmse", "mae", "perplexity"})
"""Metric names (without eval_) for which search.direction must be minimize."""
TRIAL_FILE = "search_trial.json"
"""Written by a trial's run: its study, trial number, the evaluations reported and whether it was pruned."""
TRIAL_LOG = "trial.log"
PARENT_ENV = "HF_TUNE_SEARCH_PARENT"
"""The pid of the search process, passed to its trial processes: a trial whose search died stops."""
SEARCH_RECIPE = "search_recipe.yaml"
"""The resolved recipe every trial of the study starts from (frozen at the first run of the command)."""
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
"""A RUNNING trial of another machine whose worker has not written a heartbeat for this long is marked failed."""
EXIT_PARENT_GONE = 3
SURPLUS = "hf_tune_surplus"
"""User attribute of a trial asked in a race beyond n_trials and given up unrun (left out of tables and counts)."""
FORBIDDEN_KEYS = ("task", "recipe", "resume", "overwrite", "search", "training.output_dir")
"""Keys a search space may not set: they choose what and where the run is, not how it trains."""

# --------------------------------------------------------------------------------------------------
# Registries: samplers, pruners, backends (builders with explicit keyword arguments)
# --------------------------------------------------------------------------------------------------

SAMPLERS: Registry[Callable[..., Any]] = Registry("search sampler")
PRUNERS: Registry[Callable[..., Any]] = Registry("search pruner")
BACKENDS: Registry[Callable[..., Any]] = Registry("search backend")


@SAMPLERS.register("tpe")
def tpe_sampler(*, seed: int | None, startup_trials: int | None, grid: dict[str, list[Any]]):
    import optuna

    kw = {} if startup_trials is None else {"n_startup_trials": startup_trials}
    # multivariate: learning rate and warmup interact; constant_liar: parallel workers do not pile onto one point
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, **kw)


@SAMPLERS.register("random")
def random_sampler(*, seed: int | None, startup_trials: int | None, grid: dict[str, list[Any]]):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


@SAMPLERS.register("grid")
def grid_sampler(*, seed: int | None, startup_trials: int | None, grid: dict[str, list[Any]]):
    import optuna

    return optuna.samplers.GridSampler(grid, seed=seed)


@SAMPLERS.register("cmaes", needs="cmaes")
def cmaes_sampler(*, seed: int | None, startup_trials: int | None, grid: dict[str, list[Any]]):
    import optuna

    kw = {} if startup_trials is None else {"n_startup_trials": startup_trials}
    return optuna.samplers.CmaEsSampler(seed=seed, **kw)


@PRUNERS.register("median")
def median_pruner(*, startup_trials: int, warmup_evals: int):
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_evals)


@PRUNERS.register("hyperband")
def hyperband_pruner(*, startup_trials: int, warmup_evals: int):
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup_evals), max_resource="auto")


@PRUNERS.register("successive_halving")
def successive_halving_pruner(*, startup_trials: int, warmup_evals: int):
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup_evals))


@PRUNERS.register("none")
def no_pruner(*, startup_trials: int, warmup_evals: int):
    import optuna

    return optuna.pruners.NopPruner()


def build_pruner(search) -> Any:
    return PRUNERS.get(search.pruner)(
        startup_trials=search.pruner_startup_trials, warmup_evals=search.pruner_warmup_evals
    )


# --------------------------------------------------------------------------------------------------
# The space: Optuna distributions, values to validate, overrides for a trial
# --------------------------------------------------------------------------------------------------


def _primitive(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def encoded_choices(choices: list[Any]) -> tuple[list[Any], bool]:
    """Optuna's categoricals hold None/bool/int/float/str only: lists (e.g. an augmentation scale range) are
    stored as their JSON text and decoded for the trial. Returns (choices as stored, whether encoded)."""
    if all(_primitive(c) for c in choices):
        return list(choices), False
    return [json.dumps(c) for c in choices], True


def distribution(p) -> Any:
    """The Optuna distribution of one search.space entry (already checked by SearchParam.errors)."""
    import optuna.distributions as d

    if p.type == "categorical":
        return d.CategoricalDistribution(encoded_choices(p.choices)[0])
    if p.type == "int":
        return d.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return d.FloatDistribution(float(p.low), float(p.high), log=p.log, step=p.step)


def decode(p, value: Any) -> Any:
    """A sampled (stored) value -> the recipe value."""
    if p.type == "categorical" and encoded_choices(p.choices)[1]:
        return json.loads(value)
    return value


def grid_values(p) -> list[Any] | None:
    """Every value of a parameter on a grid (categorical, int, float with step), else None."""
    if p.type == "categorical":
        return encoded_choices(p.choices)[0]
    if p.step is None and p.type == "float":
        return None
    step = p.step or 1
    n = int(math.floor((p.high - p.low) / step + 1e-9)) + 1
    values = [p.low + i * step for i in range(n)]
    return [int(v) for v in values] if p.type == "int" else [float(round(v, 12)) for v in values]


def checked_values(p) -> list[Any]:
    """The values the validator tries for one parameter: every choice, else both ends (the top of a step grid)
    and the middle (geometric for log)."""
    if p.type == "categorical":
        return list(p.choices)
    grid = grid_values(p)
    lo, hi = (grid[0], grid[-1]) if grid else (p.low, p.high)
    mid = math.sqrt(lo * hi) if p.log else (lo + hi) / 2
    if p.type == "int":
        return sorted({int(lo), int(hi), int(round(mid))})
    return sorted({float(lo), float(hi), float(mid)})


def yaml_value(v: Any) -> str:
    """A value as ``key=value`` text that OmegaConf reads back to the same value (JSON is YAML)."""
    return json.dumps(v)


def with_values(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``base`` with dotted keys set (sections created as needed); raises KeyError naming a key whose parent
    is a value, not a section."""
    out = copy.deepcopy(base)
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = out
        for i, part in enumerate(parents):
            nxt = node.setdefault(part, {})
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise KeyError(f"{'.'.join(parents[: i + 1])} is a value, not a section")
            node = nxt
        node[leaf] = value
    return out


# --------------------------------------------------------------------------------------------------
# Validation before the first trial
# --------------------------------------------------------------------------------------------------


@dataclass
class SearchPlan:
    """Everything a search needs, validated: built by :func:`prepare_search`, nothing created yet."""

    cfg: Any
    """The validated base recipe (its search section included)."""
    base: dict[str, Any]
    """The resolved recipe every trial starts from (``cfg`` as plain data)."""
    search_dir: Path
    storage: str
    study_name: str
    metric: str
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def search(self):
        return self.cfg.search

    @property
    def n_trials(self) -> int | None:
        s = self.search
        grid = grid_size(s.space) if s.sampler == "grid" else None
        if grid is not None and (s.n_trials is None or s.n_trials > grid):
            return grid
        return s.n_trials


def grid_size(space: dict[str, Any]) -> int | None:
    sizes = [grid_values(p) for p in space.values()]
    return math.prod(len(v) for v in sizes) if all(v is not None for v in sizes) else None


def prepare_search(args: list[str]) -> SearchPlan:
    """``["recipe=F", "k=v", ...]`` -> a validated plan: the recipe as for ``train`` (unknown ``search.`` keys get
    a "did you mean" there), then every value the space can produce, the objective, the budget and the pruning
    rule; all problems at once, before anything is created."""
    from hf_tune.config import load_recipe_yaml, merge_overrides, resolve_recipe, split_args
    from hf_tune.schema import to_dict

    recipe, overrides = split_args(args)
    if recipe is None:
        raise ConfigError(["recipe=FILE.yaml is required: a recipe with a search: section"])
    path = resolve_recipe(recipe)
    data = merge_overrides(load_recipe_yaml(path), overrides)
    data.setdefault("recipe", path.stem)
    source = str(path)
    cfg, errors = _validated(data, source)
    s = cfg.search
    if not s.space:
        errors.append(
            "search.space is empty: name the recipe keys to search, e.g. training.learning_rate: "
            "{type: float, low: 1.0e-4, high: 1.0e-2, log: true}"
        )
    if s.n_trials is None and s.timeout is None:
        errors.append("search.n_trials or search.timeout is required (how many trials, or how many seconds)")
    if s.trial is not None:
        errors.append("search.trial is set by hf-tune search on the runs it launches: remove it")
    if cfg.resume or cfg.overwrite:
        errors.append(
            "resume=/overwrite=: hf-tune search continues its study when the same command runs again, and every "
            "trial is a new folder; drop them"
        )
    metric, metric_errors = objective(cfg)
    errors += metric_errors
    base = to_dict(cfg)
    errors += space_errors(cfg, base, overrides)
    pruning, notes = pruning_rule(cfg)
    errors += pruning + sampler_errors(s)
    if errors:
        raise ConfigError(errors, source)
    search_dir = cfg.output_dir()
    return SearchPlan(
        cfg=cfg,
        base=base,
        search_dir=search_dir,
        storage=storage_spec(s.storage, search_dir),
        study_name=s.study_name or cfg.recipe or cfg.task,
        metric=metric,
        source=source,
        notes=notes,
    )


def _validated(data: dict[str, Any], source: str) -> tuple[Any, list[str]]:
    """The recipe validated as for ``train``; a faulty space entry does not hide the other entries' problems: it
    is reported and left out, and the rest validated again (anything wrong outside the space raises at once)."""
    from hf_tune.config import from_mapping

    errors: list[str] = []
    trimmed = copy.deepcopy(data)
    while True:
        try:
            return from_mapping(trimmed, source), errors
        except ConfigError as exc:
            bad = {e: _space_entry(e, trimmed) for e in exc.errors}
            if not any(bad.values()):
                raise ConfigError(errors + exc.errors, source) from None
            errors += [e for e, key in bad.items() if key]
            for key in set(bad.values()) - {None}:
                trimmed["search"]["space"].pop(key)


def _space_entry(error: str, data: dict[str, Any]) -> str | None:
    """The search.space entry an error is about (the longest entry key the error's key starts with), or None."""
    key = error.split(":", 1)[0].split(" ", 1)[0].removeprefix("search.space.")
    entries = ((data.get("search") or {}).get("space") or {}) if error.startswith("search.space.") else {}
    matches = [k for k in entries if key == k or key.startswith(k + ".")]
    return max(matches, key=len) if matches else None


def objective(cfg) -> tuple[str, list[str]]:
    """search.metric, or eval_ + the kind's headline metric when it has one."""
    s = cfg.search
    if s.metric:
        return s.metric, []
    heads = cfg.headline_metrics()
    if len(heads) == 1:
        task, name = next(iter(heads.items()))
        metric = f"eval_{task}_{name}" if task else f"eval_{name}"
        errs = []
        if name in LOWER_IS_BETTER and s.direction == "maximize":
            errs.append(f"search.metric defaults to {metric}, which is lower-is-better: set search.direction=minimize")
        return metric, errs
    examples = ", ".join(f"eval_{t}_{m}" for t, m in heads.items())
    return "", [f"search.metric is required for this kind (one headline metric per task), e.g. one of {examples}"]


def space_errors(cfg, base: dict[str, Any], overrides: list[str]) -> list[str]:
    """Each searched key and each value it can take, validated as a recipe of this kind (the same messages as
    ``train``), then the all-low and all-high combinations together."""
    s = cfg.search
    set_on_command_line = {o.split("=", 1)[0] for o in overrides}
    errors: dict[str, None] = {}  # ordered, no repeats
    clean: dict[str, Any] = {}
    for key, p in s.space.items():
        if p.errors(key):
            continue  # reported by the schema's own check
        forbidden = next((f for f in FORBIDDEN_KEYS if key == f or key.startswith(f + ".")), None)
        if forbidden:
            errors[f"search.space.{key}: {forbidden} cannot be searched (it says what and where the run is)"] = None
            continue
        if key in set_on_command_line:
            errors[f"search.space.{key}: also set on the command line ({key}=...); the search sets it per trial"] = None
            continue
        found = _value_errors(base, key, checked_values(p), cfg)
        errors.update(dict.fromkeys(found))
        if not found:
            clean[key] = p
    if len(clean) > 1 and not errors:
        for end in (0, -1):
            combo = {k: checked_values(p)[end] for k, p in clean.items()}
            for e in _config_errors(with_values(base, combo), cfg):
                errors[f"search.space: the combination {combo} is refused: {e}"] = None
    return list(errors)


def _value_errors(base: dict[str, Any], key: str, values: list[Any], cfg) -> list[str]:
    out: list[str] = []
    for value in values:
        try:
            data = with_values(base, {key: value})
        except KeyError as exc:
            return [f"search.space.{key}: {exc.args[0]}"]
        for e in _config_errors(data, cfg):
            where = e.split(":", 1)[0].split(" ", 1)[0]
            if where == key or key.startswith(where + "."):
                if "unknown key" in e or "not a TrainingArguments field" in e or "removed in" in e:
                    return [f"search.space.{key}: {e}" if where != key else f"search.space.{e}"]
                out.append(f"search.space.{key}: the value {value!r} is refused: {e}")
            else:
                out.append(f"search.space.{key}: with {key}={value!r}: {e}")
    return out


def _config_errors(data: dict[str, Any], cfg) -> list[str]:
    from hf_tune import calibration
    from hf_tune.config import from_mapping
    from hf_tune.recipes import RECIPES

    try:
        trial_cfg = from_mapping(data, cfg.recipe)
    except ConfigError as exc:
        return list(exc.errors)
    return calibration.head_errors(RECIPES.get(trial_cfg.task)(trial_cfg))


def pruning_rule(cfg) -> tuple[list[str], list[str]]:
    """(errors, notes): pruning acts at the evaluations Trainer runs during training, so a recipe that does not
    evaluate, or evaluates once, cannot be pruned; when the count is unknown before the data loads, say the rule."""
    s = cfg.search
    if s.pruner == "none":
        return [], []
    from hf_tune.recipes import RECIPES

    args = RECIPES.get(cfg.task)(cfg).training_args()
    strategy = getattr(args.eval_strategy, "value", args.eval_strategy)
    fix = "or set search.pruner=none"
    if strategy == "no":
        return [
            f"search.pruner={s.pruner} stops trials at the evaluations during training, but training.eval_strategy "
            f"is 'no': set training.eval_strategy=epoch (or steps with training.eval_steps), {fix}"
        ], []
    evals = None
    if strategy == "epoch" and args.max_steps <= 0:
        evals = math.ceil(args.num_train_epochs)
    elif strategy == "steps" and args.max_steps > 0:
        evals = int(args.max_steps // args.eval_steps)
    if evals is not None and evals < 2:
        return [
            f"search.pruner={s.pruner}: a trial evaluates {evals} time(s) (training.eval_strategy={strategy}), so "
            f"a pruner could only stop it at its last evaluation, when its cost is paid: evaluate more often "
            f"(more epochs, or training.eval_strategy=steps with training.eval_steps), {fix}"
        ], []
    if evals is not None and s.pruner == "median" and s.pruner_warmup_evals >= evals:
        return [f"search.pruner_warmup_evals={s.pruner_warmup_evals}: trials evaluate only {evals} times, {fix}"], []
    every = f"every {args.eval_steps} steps" if strategy == "steps" else "every epoch"
    count = f" ({evals} per trial)" if evals else ""
    return [], [
        f"pruning: {s.pruner} may stop a trial at each evaluation, {every}{count}, from evaluation "
        f"{max(1, s.pruner_warmup_evals + 1)} on"
    ]


def sampler_errors(s) -> list[str]:
    errors = []
    if s.sampler == "grid":
        missing = [k for k, p in s.space.items() if grid_values(p) is None]
        if missing:
            errors.append(f"search.sampler=grid needs a step on every float parameter: {', '.join(missing)}")
    if s.sampler in SAMPLERS:
        needs = SAMPLERS.entry(s.sampler).meta.get("needs")
        if needs and not _importable(needs):
            errors.append(f"search.sampler={s.sampler} needs the {needs} package: pip install {needs}")
    if s.backend == "ray" and not _importable("ray.tune"):
        errors.append("search.backend=ray needs Ray Tune: pip install 'ray[tune]' (or search.backend=optuna)")
    return errors


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


# --------------------------------------------------------------------------------------------------
# Storage and study
# --------------------------------------------------------------------------------------------------


def storage_spec(storage: str | None, search_dir: Path) -> str:
    """search.storage resolved: null -> SQLite file in the search folder; an RDB URL as given; a journal file
    path made absolute (trial processes and later runs of the command must find the same file)."""
    if storage is None:
        return f"sqlite:///{(search_dir / 'study.db').resolve()}"
    if "://" in storage:
        return storage
    return str(Path(storage).resolve())


def storage_file(spec: str) -> Path | None:
    """The local file behind a storage (SQLite or journal), or None for a database server."""
    if spec.startswith("sqlite:///"):
        return Path(spec.removeprefix("sqlite:///").split("?", 1)[0])
    return None if "://" in spec else Path(spec)


def open_storage(spec: str):
    import optuna

    file = storage_file(spec)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
    if "://" not in spec:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(spec))
    # several processes write one SQLite file: wait for its lock instead of failing at once
    kw = {"engine_kwargs": {"connect_args": {"timeout": 120}}} if spec.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(spec, **kw)


@contextlib.contextmanager
def study_lock(spec: str, local: threading.Lock) -> Iterator[None]:
    """Serialise "count the trials, ask one" across this command's threads and, for file storages, across every
    process on the file system (fcntl lock beside the file): workers together start exactly n_trials."""
    file = storage_file(spec)
    with local:
        if file is None:
            yield
            return
        import fcntl

        with open(f"{file}.hf_tune.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def open_study(plan: SearchPlan, storage):
    """Create the study, or load it when it exists (resume); a study begun with another objective, direction or
    base recipe is refused, since its trials would not be comparable."""
    import optuna

    s = plan.search
    seed = s.seed if s.seed is not None else plan.cfg.training.get("seed", 42)
    grid = {k: grid_values(p) for k, p in s.space.items()} if s.sampler == "grid" else {}
    sampler = SAMPLERS.get(s.sampler)(seed=seed, startup_trials=s.sampler_startup_trials, grid=grid)
    study = optuna.create_study(
        storage=storage,
        study_name=plan.study_name,
        direction=s.direction,
        sampler=sampler,
        pruner=optuna.pruners.NopPruner(),  # pruning is decided inside the trial processes
        load_if_exists=True,
    )
    base = _comparable(plan.base)
    attrs = study.user_attrs
    errors = []
    if study.direction.name.lower() != s.direction:
        errors.append(
            f"search.direction={s.direction}: study {plan.study_name!r} was begun with {study.direction.name}"
        )
    if attrs.get("hf_tune_metric", plan.metric) != plan.metric:
        errors.append(f"search.metric={plan.metric}: study {plan.study_name!r} optimises {attrs['hf_tune_metric']}")
    changed = _changed_keys(json.loads(attrs["hf_tune_base"]), json.loads(base)) if "hf_tune_base" in attrs else []
    if changed:
        errors.append(
            f"the recipe changed since study {plan.study_name!r} began ({', '.join(changed[:8])}): new trials would "
            f"not be comparable with its trials; choose another search.study_name or training.output_dir"
        )
    if errors:
        raise ConfigError(errors, plan.source)
    study.set_user_attr("hf_tune_metric", plan.metric)
    study.set_user_attr("hf_tune_base", base)
    study.set_user_attr("hf_tune_search_dir", str(plan.search_dir.resolve()))
    return study


def _comparable(base: dict[str, Any]) -> str:
    """The base recipe without what may change between runs of one study (the search budget and settings)."""
    data = {k: v for k, v in base.items() if k != "search"}
    return json.dumps(data, sort_keys=True, default=str)


def _changed_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Keys whose values differ; a key only one side has (a setting added or removed by another hf_tune version)
    is not compared, as for resume=true."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [c for k in sorted(set(a) & set(b)) for c in _changed_keys(a[k], b[k], f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def trial_dir(search_dir: Path, number: int) -> Path:
    return search_dir / f"trial-{number:04d}"


def check_trial_folders(plan: SearchPlan, study) -> None:
    """Trial folders in the search folder that this study does not know (another study's, or a deleted one's)
    would be written over: refuse before any trial."""
    known = {t.user_attrs.get("hf_tune_run_dir") for t in study.get_trials(deepcopy=False)}
    foreign = [
        p.name
        for p in sorted(plan.search_dir.glob("trial-*"))
        if p.is_dir() and str(p.resolve()) not in known and any(p.iterdir())
    ]
    if foreign:
        raise ConfigError(
            [
                f"training.output_dir={plan.search_dir} holds {', '.join(foreign[:5])} that study "
                f"{plan.study_name!r} in {plan.storage} did not run: choose another training.output_dir, or the "
                f"search.storage/search.study_name they belong to"
            ],
            plan.source,
        )


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def note_search_section(cfg) -> None:
    """``hf-tune train`` on a search recipe trains it once; say so (trial runs stay quiet)."""
    if cfg.search.space and cfg.search.trial is None:
        log(
            f"this recipe has a search: section ({len(cfg.search.space)} keys); hf-tune train trains it once with "
            f"its own values. hf-tune search recipe=... runs the search"
        )


def run_search(args: list[str]) -> dict[str, Any]:
    """``hf-tune search`` and ``hf_tune.search``: validate, open (or resume) the study, run trials, write the
    outputs; returns the summary printed as one JSON line."""
    import warnings

    import optuna

    plan = prepare_search(args)
    for note in plan.notes:
        log(note)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return BACKENDS.get(plan.search.backend)(plan)


def _run_optuna(plan: SearchPlan) -> dict[str, Any]:
    from hf_tune.schema import dump_yaml
    from hf_tune.search_outputs import summary, write_outputs

    storage = open_storage(plan.storage)
    study = open_study(plan, storage)
    check_trial_folders(plan, study)
    plan.search_dir.mkdir(parents=True, exist_ok=True)
    recipe = plan.search_dir / SEARCH_RECIPE
    tmp = recipe.with_name(f".{recipe.name}.{os.getpid()}.tmp")
    tmp.write_text(dump_yaml(plan.cfg))
    tmp.replace(recipe)
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    log(
        f"search {plan.study_name}: {plan.metric} ({plan.search.direction}), {plan.search.sampler} sampler, "
        f"{plan.search.pruner} pruner; study in {plan.storage} ({len(trials)} trials so far); runs in {plan.search_dir}"
    )
    if plan.n_trials is not None and finished >= plan.n_trials:
        log(
            f"the study already holds {finished} finished trials (search.n_trials={plan.n_trials}): "
            f"raise search.n_trials to run more"
        )
    from hf_tune.search_runner import SearchRunner

    runner = SearchRunner(plan, study, storage)
    try:
        runner.run()
    finally:
        write_outputs(plan, study, time.monotonic() - runner.started)
    return summary(plan, study, time.monotonic() - runner.started)


def _run_ray(plan: SearchPlan) -> dict[str, Any]:
    from hf_tune.search_ray import run_ray_search

    return run_ray_search(plan)


def _ray_reporter(search, trial_number: int, output_dir: Path):
    from hf_tune.search_ray import ProgressFileReporter

    return ProgressFileReporter(search, trial_number, output_dir)


def _optuna_reporter(search, trial_number: int, output_dir: Path):
    from hf_tune.search_trial import OptunaReporter

    return OptunaReporter(search, trial_number, output_dir)


BACKENDS.add("optuna", _run_optuna, reporter=_optuna_reporter)
BACKENDS.add("ray", _run_ray, reporter=_ray_reporter)
