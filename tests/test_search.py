"""hf-tune search: the space validator, the registries, and end to end through the CLI on a tiny model (4 trials with
one pruned, best_recipe.yaml retrained to the same metric; a killed search resumed; two workers on one study)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hf_tune.cli import main
from hf_tune.errors import ConfigError

from .conftest import make_images

optuna = pytest.importorskip("optuna")

FAST_TRAINING = {
    "max_steps": 4,
    "eval_strategy": "steps",
    "eval_steps": 2,
    "save_strategy": "no",
    "logging_steps": 2,
    "per_device_train_batch_size": 8,
    "disable_tqdm": True,
    "dataloader_pin_memory": False,
    "report_to": "none",
}


def _npz(folder: Path) -> Path:
    import numpy as np

    xtr, ytr = make_images(32, seed=0)
    xva, yva = make_images(16, seed=1)
    path = folder / "tiny.npz"
    np.savez(path, train_images=xtr, train_labels=ytr, val_images=xva, val_labels=yva)
    return path


def search_yaml(folder: Path, search: dict, training: dict | None = None, name: str = "my_search") -> Path:
    """A search recipe in the shape of the issue's contract (base: quickstart), on tiny data and timm's test_resnet."""
    recipe = {
        "base": "quickstart",
        "data": {"path": str(_npz(folder)), "format": "auto"},
        "model": {"name": "test_resnet", "image_size": 16},
        "training": {**FAST_TRAINING, "output_dir": str(folder / "runs" / name), **(training or {})},
        "search": search,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


LR_SPACE = {"training.learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}


# ---------------------------------------------------------------------------------------------- validation


def test_misspelled_key_and_impossible_range_fail_before_any_trial(tmp_path, capsys):
    space = {
        "training.learning_rate": {"type": "float", "low": 1.0e-2, "high": 1.0e-4, "log": True},
        "techniques.ema.decy": {"type": "categorical", "choices": [0.99, 0.999]},
        "training.weight_decay": {"type": "float", "low": 0.0, "high": 0.1, "log": True},
        "model.image_size": {"type": "int", "low": 4, "high": 32},
        "techniques.lora.r": {"type": "int", "low": 2, "hihg": 8},
    }
    entries = (
        "search.space.training.learning_rate: low=0.01 is above high=0.0001",
        "search.space.training.weight_decay: log: true needs low > 0",
        'search.space.techniques.lora.r.hihg: unknown key (did you mean "high"?)',
    )
    values = (  # checked against the recipe once the rest of it is valid
        'search.space.techniques.ema.decy: unknown key (did you mean "decay"?)',
        "search.space.model.image_size: the value 4 is refused: model.image_size must be >= 8",
    )
    for search, expected in (
        ({"n_trials": 4, "n_trail": 3}, ['search.n_trail: unknown key (did you mean "n_trials"?)', *entries]),
        ({"n_trials": 4}, [*entries, *values]),
    ):
        path = search_yaml(tmp_path, {"metric": "eval_accuracy", **search, "space": space})
        assert main(["search", f"recipe={path}"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and f"{len(expected)} problem(s)" in err, err
        for line in expected:
            assert line in err, (line, err)
    assert not (tmp_path / "runs").exists()  # nothing created before the validation passed


def test_search_rules_are_checked_before_any_trial(tmp_path):
    from hf_tune.search_study import prepare_search

    cases = {
        "search.n_trials or search.timeout is required": ({"space": LR_SPACE}, {}),
        "training.eval_strategy is 'no'": ({"n_trials": 2, "space": LR_SPACE}, {"eval_strategy": "no"}),
        "a trial evaluates 1 time(s)": ({"n_trials": 2, "space": LR_SPACE}, {"eval_steps": 4}),
        "search.space is empty": ({"n_trials": 2}, {}),
        "search.sampler=grid needs a step": ({"n_trials": 2, "sampler": "grid", "space": LR_SPACE}, {}),
        "search.metric=test_accuracy: the objective must be a validation metric": (
            {"n_trials": 2, "metric": "test_accuracy", "space": LR_SPACE},
            {},
        ),
        "eval_loss is lower-is-better: set search.direction=minimize": (
            {"n_trials": 2, "metric": "eval_loss", "space": LR_SPACE},
            {},
        ),
        "search.sampler: unknown search sampler 'tpee' (did you mean \"tpe\"?)": (
            {"n_trials": 2, "sampler": "tpee", "space": LR_SPACE},
            {},
        ),
        "training.output_dir cannot be searched": (
            {"n_trials": 2, "space": {"training.output_dir": {"type": "categorical", "choices": ["a", "b"]}}},
            {},
        ),
    }
    for i, (expected, (search, training)) in enumerate(cases.items()):
        path = search_yaml(tmp_path, search, training, name=f"case{i}")
        with pytest.raises(ConfigError) as exc:
            prepare_search([f"recipe={path}"])
        assert expected in str(exc.value), (expected, str(exc.value))
    ok = search_yaml(tmp_path, {"n_trials": 2, "pruner": "none", "space": LR_SPACE}, {"eval_strategy": "no"})
    plan = prepare_search([f"recipe={ok}", "search.n_trials=3"])  # pruner none: no evaluation needed
    assert plan.metric == "eval_accuracy" and plan.n_trials == 3  # the kind's headline metric by default
    assert plan.storage == f"sqlite:///{(tmp_path / 'runs' / 'my_search' / 'study.db').resolve()}"
    with pytest.raises(ConfigError, match="also set on the command line"):
        prepare_search([f"recipe={ok}", "training.learning_rate=0.1"])


def test_train_on_a_search_recipe_trains_it_once(tmp_path, capsys):
    from hf_tune.config import load_config
    from hf_tune.search_study import note_search_section

    cfg = load_config([f"recipe={search_yaml(tmp_path, {'n_trials': 2, 'space': LR_SPACE})}"])
    assert cfg.search.n_trials == 2 and cfg.training["learning_rate"] == 2.0e-3  # the recipe's own value
    note_search_section(cfg)
    assert "hf-tune train trains it once" in capsys.readouterr().err


def test_space_values_and_overrides_round_trip():
    from omegaconf import OmegaConf

    from hf_tune.schema import SearchParam
    from hf_tune.search_study import checked_values, decode, distribution, encoded_choices, grid_values, yaml_value

    assert checked_values(SearchParam("float", low=1e-4, high=1e-2, log=True)) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert checked_values(SearchParam("int", low=2, high=9, step=3)) == [2, 5, 8]  # the top of the step grid
    assert grid_values(SearchParam("float", low=0.0, high=0.2, step=0.1)) == [0.0, 0.1, 0.2]
    assert grid_values(SearchParam("float", low=0.0, high=0.2)) is None
    scale = SearchParam("categorical", choices=[[0.5, 1.0], [0.8, 1.0]])
    stored, encoded = encoded_choices(scale.choices)
    assert encoded and stored == ["[0.5, 1.0]", "[0.8, 1.0]"]
    assert distribution(scale).choices == tuple(stored) and decode(scale, stored[1]) == [0.8, 1.0]
    values = {"a": 1e-05, "b": [0.5, 1.0], "c": "cosine", "d": True, "e": None, "f": 3, "g": "runs/x-1"}
    parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"{k}={yaml_value(v)}" for k, v in values.items()]))
    assert parsed == values


def test_every_sampler_and_pruner_builds():
    import importlib.util

    from hf_tune.search_study import PRUNERS, SAMPLERS

    for entry in SAMPLERS:
        needs = entry.meta.get("needs")
        if needs and importlib.util.find_spec(needs) is None:
            continue
        sampler = entry.obj(seed=0, startup_trials=3, grid={"x": [1, 2]})
        assert isinstance(sampler, optuna.samplers.BaseSampler), entry.name
    for entry in PRUNERS:
        assert isinstance(entry.obj(startup_trials=1, warmup_evals=0), optuna.pruners.BasePruner), entry.name


# ---------------------------------------------------------------------------------------------- end to end


def _study(storage: str, name: str = "my_search"):
    from hf_tune.search_study import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(storage))


@pytest.mark.slow
def test_four_trials_one_pruned_and_best_recipe_retrains_to_the_same_metric(tmp_path, capsys):
    search = {
        "metric": "eval_loss",
        "direction": "minimize",
        "n_trials": 4,
        "pruner": "median",
        "pruner_startup_trials": 1,
        "space": {
            "training.learning_rate": {"type": "categorical", "choices": [0.001, 0.5]},
            "training.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
        },
    }
    path = search_yaml(tmp_path, search)
    folder = tmp_path / "runs" / "my_search"
    # queue a sane trial and then one whose learning rate blows the loss up: the median pruner (one trial to
    # compare with) must stop the second at its first evaluation
    folder.mkdir(parents=True)
    storage = f"sqlite:///{(folder / 'study.db').resolve()}"
    queued = optuna.create_study(storage=storage, study_name="my_search", direction="minimize")
    queued.enqueue_trial({"training.learning_rate": 0.001, "training.weight_decay": 0.01})
    queued.enqueue_trial({"training.learning_rate": 0.5, "training.weight_decay": 0.01})

    assert main(["search", f"recipe={path}"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert captured.err.count("search my_search: trial ") == 4  # one progress line per finished trial
    assert summary["n_complete"] + summary["n_pruned"] == 4 and summary["n_fail"] == 0
    runs = sorted(p.name for p in folder.glob("trial-*"))
    assert runs == ["trial-0000", "trial-0001", "trial-0002", "trial-0003"]
    for run in runs:  # every trial is an ordinary finished run
        assert (folder / run / "model" / "metrics.json").is_file() and (folder / run / "resolved_config.yaml").is_file()

    study = _study(storage)
    assert [t.state.name for t in study.trials][:2] == ["COMPLETE", "PRUNED"]
    assert list(study.trials[1].intermediate_values) == [1]  # stopped at its first evaluation
    info = json.loads((folder / "trial-0001" / "search_trial.json").read_text())
    assert info["pruned"] and info["pruned_at"]["evaluation"] == 1
    rows = json.loads((folder / "trials.json").read_text())
    assert [r["state"] for r in rows][:2] == ["complete", "pruned"] and len(rows) == 4
    csv_lines = (folder / "trials.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 5 and "training.learning_rate" in csv_lines[0]
    assert (folder / "plots" / "optimization_history.png").is_file()
    assert "## Best trial" in (folder / "search_report.md").read_text()

    # best_recipe.yaml: a complete recipe, no search section, its own output folder; retraining it (CPU, same
    # seed) gives the best trial's metric again
    best = folder / "best_recipe.yaml"
    assert yaml.safe_load(best.read_text()).get("search") is None
    assert main(["train", f"recipe={best}"]) == 0
    retrained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert retrained["output_dir"] == str(folder / "best")
    assert retrained["eval_loss"] == pytest.approx(summary["best_value"], rel=1e-5)
    assert summary["best_value"] == study.best_value


def _search_process(path: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hf_tune.cli", "search", f"recipe={path}", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=path.parent)


def _processes_with(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to check the trial process died")
def test_killed_search_resumes_the_same_study(tmp_path, capsys):
    path = search_yaml(tmp_path, {"n_trials": 2, "pruner": "none", "space": LR_SPACE})
    folder = tmp_path / "runs" / "my_search"
    proc = _search_process(path)
    deadline = time.monotonic() + 300
    while not (folder / "trial-0001" / "trial.log").is_file():  # trial 0 is told, trial 1 has started
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    time.sleep(3)
    os.kill(proc.pid, signal.SIGKILL)  # mid-trial: no chance to clean up
    proc.communicate()
    deadline = time.monotonic() + 120
    while _processes_with(str(folder / "trial-0001")):  # the trial process dies with its search
        assert time.monotonic() < deadline, "trial process outlived its killed search"
        time.sleep(1)
    first = (folder / "trial-0000" / "model" / "metrics.json").stat().st_mtime_ns

    assert main(["search", f"recipe={path}"]) == 0  # the same command again
    captured = capsys.readouterr()
    assert "trial 1 lost its worker; marked failed" in captured.err
    assert "(2 trials so far)" in captured.err
    states = [t.state.name for t in _study(f"sqlite:///{(folder / 'study.db').resolve()}").trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]  # the count grew; trial 0 was not run again
    assert (folder / "trial-0000" / "model" / "metrics.json").stat().st_mtime_ns == first
    assert json.loads(captured.out.strip().splitlines()[-1])["n_complete"] == 2


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicates(tmp_path):
    journal = tmp_path / "shared" / "study.journal"
    path = search_yaml(tmp_path, {"n_trials": 3, "pruner": "none", "storage": str(journal), "space": LR_SPACE})
    workers = [_search_process(path), _search_process(path)]
    outs = [w.communicate(timeout=900) for w in workers]
    for w, (_, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, err[-3000:]
    study = _study(str(journal))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3 and [t.number for t in study.trials] == [0, 1, 2]
    folder = tmp_path / "runs" / "my_search"
    assert sorted(p.name for p in folder.glob("trial-*")) == ["trial-0000", "trial-0001", "trial-0002"]
    for t in study.trials:
        saved = yaml.safe_load((folder / f"trial-{t.number:04d}" / "resolved_config.yaml").read_text())
        assert saved["search"]["trial"] == t.number
    assert len({t.user_attrs["hf_tune_pid"] for t in study.trials}) == 2  # both workers ran trials


@pytest.mark.slow
def test_ray_backend_runs_trials_as_run_folders_and_restores(tmp_path, capsys):
    pytest.importorskip("ray.tune")
    from hf_tune.search_ray import RAY_SCHEDULERS
    from hf_tune.search_study import PRUNERS

    assert RAY_SCHEDULERS.names() == PRUNERS.names()  # every pruner has its Ray scheduler
    path = search_yaml(tmp_path, {"n_trials": 2, "pruner": "none", "backend": "ray", "space": LR_SPACE})
    folder = tmp_path / "runs" / "my_search"
    assert main(["search", f"recipe={path}"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["n_complete"] == 2 and captured.err.count("search my_search: trial ") == 2
    assert sorted(p.name for p in folder.glob("trial-*")) == ["trial-0000", "trial-0001"]
    assert (folder / "trial-0000" / "model" / "metrics.json").is_file() and (folder / "best_recipe.yaml").is_file()
    assert len((folder / "trial-0000" / "search_progress.jsonl").read_text().splitlines()) == 2  # both evaluations
    first = (folder / "trial-0000" / "model" / "metrics.json").stat().st_mtime_ns
    assert main(["search", f"recipe={path}"]) == 0  # the same command restores the finished experiment
    assert "restoring the Ray experiment" in capsys.readouterr().err
    assert (folder / "trial-0000" / "model" / "metrics.json").stat().st_mtime_ns == first
    assert sorted(p.name for p in folder.glob("trial-*")) == ["trial-0000", "trial-0001"]


def test_a_trial_asked_beyond_n_trials_in_a_race_steps_back():
    from hf_tune.search_runner import is_surplus

    study = optuna.create_study()
    done = study.ask()
    study.tell(done, 1.0)
    racing = [study.ask(), study.ask()]  # two workers asked at the same instant for the last of 2 trials
    assert not is_surplus(study, racing[0].number, 2) and is_surplus(study, racing[1].number, 2)


def test_a_study_refuses_another_objective_or_a_changed_recipe(tmp_path):
    from hf_tune.search_study import open_storage, open_study, prepare_search

    path = search_yaml(tmp_path, {"n_trials": 2, "space": LR_SPACE})
    plan = prepare_search([f"recipe={path}"])
    open_study(plan, open_storage(plan.storage))
    again = prepare_search([f"recipe={path}", "search.n_trials=5"])  # a bigger budget continues the study
    assert open_study(again, open_storage(again.storage)).study_name == "my_search"
    for override, expected in (
        ("training.weight_decay=0.3", "the recipe changed since study 'my_search' began (training.weight_decay)"),
        ("search.metric=eval_f1_macro", "search.metric=eval_f1_macro: study 'my_search' optimises eval_accuracy"),
    ):
        changed = prepare_search([f"recipe={path}", override])
        with pytest.raises(ConfigError, match=re.escape(expected)):
            open_study(changed, open_storage(changed.storage))


def test_outputs_are_written_from_the_study_alone(tmp_path):
    """Table, best recipe (rebuilt from the study's base recipe when the trial folder is gone), plots with
    parameter importances, report: from a study whose trials ran elsewhere."""
    from hf_tune.config import load_config
    from hf_tune.search_outputs import write_outputs
    from hf_tune.search_study import distribution, prepare_search

    space = {**LR_SPACE, "techniques.ema.decay": {"type": "categorical", "choices": [0.99, 0.999]}}
    plan = prepare_search([f"recipe={search_yaml(tmp_path, {'n_trials': 6, 'space': space})}"])
    dists = {k: distribution(p) for k, p in plan.search.space.items()}
    study = optuna.create_study(direction="maximize")
    for i, (lr, decay) in enumerate([(1e-4, 0.99), (3e-4, 0.999), (1e-3, 0.99), (3e-3, 0.999), (1e-2, 0.99)]):
        study.add_trial(
            optuna.trial.create_trial(
                params={"training.learning_rate": lr, "techniques.ema.decay": decay},
                distributions=dists,
                value=0.5 + 0.1 * i - 0.05 * (decay == 0.999),
                intermediate_values={1: 0.4 + 0.1 * i, 2: 0.5 + 0.1 * i},
            )
        )
    pruned = {"params": {"training.learning_rate": 2e-3, "techniques.ema.decay": 0.99}, "distributions": dists}
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, value=0.3, **pruned))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, **pruned))
    report = write_outputs(plan, study, wall_s=1.0)
    folder = plan.search_dir
    for name in ("optimization_history", "intermediate_values", "slice", "param_importances"):
        assert (folder / "plots" / f"{name}.png").is_file(), name
    rows = json.loads((folder / "trials.json").read_text())
    assert [r["state"] for r in rows] == ["complete"] * 5 + ["pruned", "fail"]
    assert "Trial 4: `eval_accuracy` = 0.9000" in report.read_text()
    best = load_config([f"recipe={folder / 'best_recipe.yaml'}"])
    assert best.training["learning_rate"] == pytest.approx(1e-2) and best.techniques.ema.decay == 0.99
    assert best.training["output_dir"] == str(folder / "best") and not best.search.space


def test_hf_tune_search_stays_the_function_after_the_search_code_is_imported():
    import hf_tune
    import hf_tune.search_study  # noqa: F401  (what loading any config with a search: section does)

    assert callable(hf_tune.search) and hf_tune.search.__module__ == "hf_tune.api"
