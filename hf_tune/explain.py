"""What a recipe's settings are and mean, from the schema itself: ``hf-tune show recipe=NAME`` (and
``hf-tune train recipe=NAME --help``) lists every key with its current value and the docstring written under
its field, so a user never has to read the source to learn what ``techniques.ema`` or ``data.window`` accept.

The docstrings are the attribute docstrings of the schema dataclasses (a string literal right below a field),
read with :mod:`ast`; ``training.*`` keys take their help text from ``TrainingArguments``' own field metadata.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import cache
from typing import Any

from hf_tune.config import available_recipes, load_recipe_yaml, merge_overrides, resolve_recipe, split_args
from hf_tune.errors import ConfigError
from hf_tune.recipes import RECIPES
from hf_tune.typecheck import build, check_training_args


@cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass and its bases (a base's docs are overridden by the subclass's)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                out[node.target.id] = " ".join(nxt.value.value.split())
    return out


@cache
def training_docs() -> dict[str, str]:
    from transformers import TrainingArguments

    return {f.name: " ".join(str(f.metadata.get("help", "")).split()) for f in dataclasses.fields(TrainingArguments)}


def describe(cfg: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, current value, docstring) for every leaf setting of a config, in schema order."""
    rows: list[tuple[str, Any, str]] = []
    docs = field_docs(type(cfg))
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        key, value = f"{prefix}{f.name}", getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe(value, key + ".")
        elif f.name == "training" and isinstance(value, dict) and not prefix:
            tdocs = training_docs()
            rows += [(f"training.{k}", v, tdocs.get(k, "")) for k, v in sorted(value.items())]
            rows.append(("training.<any TrainingArguments field>", "...", docs.get(f.name, "")))
        else:
            if isinstance(value, dict) and any(dataclasses.is_dataclass(v) for v in value.values()):  # search.space
                value = {
                    k: {n: x for n, x in dataclasses.asdict(v).items() if x not in (None, False)}
                    for k, v in value.items()
                }
            rows.append((key, value, docs.get(f.name, "") or _type_name(hints.get(f.name))))
    return rows


def _type_name(tp: Any) -> str:
    return "" if tp is None else f"type: {getattr(tp, '__name__', str(tp))}"


def resolve_for_display(args: list[str]):
    """The recipe's config with the overrides applied, checked for structure (unknown keys, types) but not for
    completeness: ``show`` works before ``data.path`` is known."""
    recipe, overrides = split_args(args)
    if recipe is None:
        raise ConfigError([f"recipe=NAME is required; available: {', '.join(available_recipes())}"])
    path = resolve_recipe(recipe)
    data = merge_overrides(load_recipe_yaml(path), overrides)
    data.setdefault("recipe", path.stem)
    task = data.get("task")
    if task not in RECIPES:
        raise ConfigError([f"task: unknown recipe kind {task!r}; known: {', '.join(RECIPES.names())}"], str(path))
    cfg, errors = build(RECIPES.get(task).config_cls, data)
    training, training_errors = check_training_args(data.get("training"))
    if errors or training_errors or cfg is None:
        raise ConfigError(errors + training_errors, str(path))
    cfg.training = training
    return cfg


def format_rows(rows: list[tuple[str, Any, str]]) -> str:
    width = min(max(len(k) for k, _, _ in rows), 44)
    lines = []
    for key, value, doc in rows:
        shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
        lines.append(f"{key:<{width}} = {shown}")
        if doc:
            lines += [" " * 4 + line for line in textwrap.wrap(doc, 112)]
    return "\n".join(lines)
