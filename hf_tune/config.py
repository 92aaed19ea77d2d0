"""Recipe resolution: ``recipe=NAME key=value ...`` -> one validated config of the right kind.

A run is described by a YAML recipe plus ``key=value`` overrides with dotted keys. OmegaConf parses and
merges them (so ``1e-3``, ``[1,2]`` and ``${...}`` interpolation work); the merged mapping is then checked
against the schema of its kind (``task:``; each kind's config class is registered with its recipe class in
``hf_tune.recipes``) by :mod:`hf_tune.typecheck`, and every structural and semantic problem comes back in one
:class:`~hf_tune.schema.ConfigError`.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from hf_tune.recipes import RECIPES
from hf_tune.registry import did_you_mean
from hf_tune.schema import FINAL_MODEL_DIR, RESOLVED_CONFIG_NAME, BaseConfig, ConfigError
from hf_tune.typecheck import build, check_training_args

RECIPES_DIR_ENV = "HF_TUNE_RECIPES"


def recipes_dirs() -> list[Path]:
    """Where named recipes are looked up, first match wins."""
    dirs = []
    if os.environ.get(RECIPES_DIR_ENV):
        dirs.append(Path(os.environ[RECIPES_DIR_ENV]))
    here = Path(__file__).resolve().parent
    dirs += [here.parent / "recipes", here / "_shipped_recipes"]
    return [d for d in dirs if d.is_dir()]


def available_recipes() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in recipes_dirs():
        for p in sorted(d.rglob("*.yaml")):
            found.setdefault(p.stem, p)
    return found


def resolve_recipe(name: str) -> Path:
    """Map ``recipe=NAME`` (or a path to a YAML file) to a file, or fail listing the real recipes."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError([f"recipe={name}: file not found"])
        return p
    recipes = available_recipes()
    if name not in recipes:
        raise ConfigError(
            [f"recipe={name}: unknown recipe{did_you_mean(name, list(recipes))}; available: {', '.join(recipes)}"]
        )
    return recipes[name]


def load_recipe_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a recipe YAML; a top-level ``base: NAME`` inherits another recipe and overrides it."""
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:  # yaml errors carry line numbers; keep them
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
    data = OmegaConf.to_container(raw, resolve=False) or {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: a recipe must be a mapping at the top level"])
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = resolve_recipe(str(base))
    if base_path.resolve() in seen:
        raise ConfigError([f"{path}: base recipes form a cycle through {base_path}"])
    parent = load_recipe_yaml(base_path, (*seen, path.resolve()))
    merged = OmegaConf.merge(OmegaConf.create(parent), OmegaConf.create(data))
    return OmegaConf.to_container(merged, resolve=False)  # type: ignore[return-value]


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """Split CLI arguments into the recipe name and ``key=value`` overrides."""
    recipe, overrides, errors = None, [], []
    for a in args:
        if "=" not in a:
            errors.append(f"argument {a!r}: expected key=value (e.g. training.learning_rate=3e-4)")
        elif a.startswith("recipe="):
            recipe = a.split("=", 1)[1]
        else:
            overrides.append(a)
    if errors:
        raise ConfigError(errors)
    return recipe, overrides


def merge_overrides(base: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides (values parsed as YAML) on top of ``base``."""
    try:
        dot = OmegaConf.from_dotlist(overrides)
    except Exception as exc:
        raise ConfigError([f"could not parse overrides {overrides}: {exc}"]) from exc
    merged = OmegaConf.merge(OmegaConf.create(base), dot)
    try:
        return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]
    except Exception as exc:
        raise ConfigError([f"interpolation failed: {exc}"]) from exc


def from_mapping(data: dict[str, Any], source: str = "") -> BaseConfig:
    """Validate a merged mapping into the schema of its ``task``; raise once with every error.

    Structural errors (unknown keys, wrong types) and semantic ones (conflicting settings) come together: when
    the structure is wrong, the semantic checks run on the config with the faulty keys at their defaults.
    """
    task = data.get("task")
    if task is None:
        raise ConfigError(["task: required key is missing (e.g. task: image_classification)"], source)
    if task not in RECIPES:
        raise ConfigError(
            [
                f"task: unknown recipe kind {task!r}{did_you_mean(str(task), RECIPES.names())}; "
                f"known: {', '.join(RECIPES.names())}"
            ],
            source,
        )
    cls = RECIPES.get(task).config_cls
    cfg, errors = build(cls, data)
    training, training_errors = check_training_args(data.get("training"))
    if cfg is None and errors:
        cfg, _ = build(cls, _without(data, errors))
    errors += training_errors
    if cfg is not None:
        cfg.training = training
        reported = {_error_key(e) for e in errors}
        errors += [e for e in cfg.validate() if _error_key(e) not in reported]
    if errors:
        raise ConfigError(errors, source)
    return cfg


def _error_key(message: str) -> str:
    return message.split(":", 1)[0].split(" ", 1)[0]


def _without(data: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    """``data`` without the keys the errors name (so their defaults apply)."""
    out = copy.deepcopy(data)
    for e in errors:
        *parents, leaf = re.sub(r"\[\d+\]", "", _error_key(e)).split(".")
        node = out
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def load_config(args: list[str]) -> BaseConfig:
    """``["recipe=NAME", "a.b=1", ...]`` -> validated config. Overrides beat the YAML, which beats defaults."""
    recipe, overrides = split_args(args)
    if recipe is None:
        names = ", ".join(available_recipes())
        raise ConfigError([f"recipe=NAME is required; available: {names}"])
    path = resolve_recipe(recipe)
    data = merge_overrides(load_recipe_yaml(path), overrides)
    data.setdefault("recipe", path.stem)
    return from_mapping(data, source=str(path))


def load_saved_config(path: Path, overrides: list[str] = ()) -> BaseConfig:
    """Load a resolved_config.yaml written by a run, with optional overrides (e.g. data.path=...)."""
    data = yaml.safe_load(path.read_text()) or {}
    data = merge_overrides(data, list(overrides))
    return from_mapping(data, source=str(path))


def find_model_dir(run_or_model: str | Path) -> Path:
    """A run folder (training.output_dir) or its model/ folder -> the folder holding the saved model."""
    p = Path(run_or_model)
    if not p.exists():
        raise FileNotFoundError(f"{run_or_model}: no such folder; pass a run folder (training.output_dir) or model/")
    ckpts = sorted(p.glob("checkpoint-*"))
    if ckpts and not (p / FINAL_MODEL_DIR / "metrics.json").is_file():  # the final save never completed
        raise FileNotFoundError(
            f"{run_or_model}: an interrupted run (it holds {ckpts[-1].name} but no finished {FINAL_MODEL_DIR}/); "
            f"finish it with the same hf-tune train command plus resume=true"
        )
    for d in (p / FINAL_MODEL_DIR, p):
        if (d / RESOLVED_CONFIG_NAME).is_file():
            return d
    raise FileNotFoundError(
        f"{run_or_model}: no {RESOLVED_CONFIG_NAME} here or in {p / FINAL_MODEL_DIR}; "
        f"pass a run folder (training.output_dir) or its model/ folder"
    )


def load_run_config(model_dir: Path, overrides: list[str] = (), task: str | None = None) -> BaseConfig:
    """A finished run's config with overrides, for evaluate/predict; ``task`` picks one task of a kind that
    has several (its config class routes ``data.KEY=V`` overrides, see ``BaseConfig.route_overrides``)."""
    path = Path(model_dir) / RESOLVED_CONFIG_NAME
    saved = yaml.safe_load(path.read_text()) or {}
    if saved.get("task") not in RECIPES:
        return load_saved_config(path, overrides)  # from_mapping names the unknown kind
    routed = RECIPES.get(saved["task"]).config_cls.route_overrides(saved, list(overrides), task)
    return load_saved_config(path, routed)
