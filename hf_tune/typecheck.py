"""Mapping -> typed schema dataclasses, with every problem reported in one pass (pydantic v2 underneath).

The schema stays plain ``dataclasses`` (readable, documented field by field); pydantic validates a merged
recipe mapping against them in strict JSON mode, which is exactly the YAML contract: an integer field takes
an integer (not ``"3"``, not ``true``), a number field takes an integer or a float, a mapping becomes its
nested dataclass, unknown keys are rejected. pydantic reports each problem with its location; this module
turns those into hf_tune's messages, one per key, each naming the dotted key, with a "did you mean" for
misspelled keys and ``Literal`` values.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.errors import PydanticSchemaGenerationError

from hf_tune.registry import did_you_mean

STRICT = ConfigDict(extra="forbid", strict=True)

REMOVED_TRAINING_KEYS = {
    "warmup_ratio": "removed in transformers 5: use training.warmup_steps with a float ratio, e.g. 0.1",
    "evaluation_strategy": "renamed in transformers 5: use training.eval_strategy",
    "overwrite_output_dir": "removed in transformers 5: use overwrite=true (top level)",
    "logging_dir": "removed in transformers 5: TensorBoard logs go under training.output_dir",
}

_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "dataclass_type": "a mapping",
    "model_type": "a mapping",
}


def build(cls: type, mapping: Any, prefix: str = "") -> tuple[Any, list[str]]:
    """Validate ``mapping`` into dataclass ``cls``; returns (instance or None, every problem found).

    ``prefix`` is put in front of every key in the messages (e.g. ``tasks.clauses.data``).
    """
    if mapping is None:
        mapping = {}
    try:
        return _adapter(cls).validate_json(json.dumps(mapping, default=str)), []
    except ValidationError as exc:
        return None, _messages(cls, exc.errors(), prefix)


def check_value(tp: Any, value: Any, key: str) -> tuple[Any, list[str]]:
    """Validate one value against a type annotation; types pydantic cannot describe pass unchecked (the
    library that declared them checks them itself)."""
    adapter = _value_adapter(tp)
    if adapter is None:
        return value, []
    try:
        out = adapter.validate_json(json.dumps(value, default=str))
    except ValidationError as exc:
        return value, [_message(key, tp, exc.errors(), None)]
    # keep the user's value unless validation only widened an int to a float (enums would not dump to YAML)
    return (out if isinstance(out, float) and not isinstance(out, enum.Enum) else value), []


def check_training_args(training: Any) -> tuple[dict[str, Any], list[str]]:
    """A ``training:`` mapping checked against ``transformers.TrainingArguments``' init fields and types."""
    from transformers import TrainingArguments

    if training is None:
        return {}, []
    if not isinstance(training, dict):
        return {}, [f"training: expected a mapping of TrainingArguments, got {training!r}"]
    fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    hints = _hints(TrainingArguments)
    out: dict[str, Any] = {}
    errors: list[str] = []
    for k, v in training.items():
        key = f"training.{k}"
        if k in REMOVED_TRAINING_KEYS:
            errors.append(f"{key}: {REMOVED_TRAINING_KEYS[k]}")
        elif k not in fields:
            errors.append(f"{key}: not a TrainingArguments field{did_you_mean(k, list(fields))}")
        else:
            tp = hints.get(k, Any)
            if isinstance(v, bool) and _accepts_str_not_bool(tp):
                v = "no" if v is False else "yes"  # YAML 1.1 reads `eval_strategy: no` as false
            out[k], errs = check_value(tp, v, key)
            errors += errs
    return out, errors


# --------------------------------------------------------------------------------------------------
# pydantic adapters
# --------------------------------------------------------------------------------------------------


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    for dc in _dataclasses_in(cls):
        # The schema classes are plain dataclasses; how strictly they are read is this module's decision.
        if "__pydantic_config__" not in vars(dc):
            dc.__pydantic_config__ = STRICT
    return TypeAdapter(cls)


@functools.cache
def _value_adapter(tp: Any) -> TypeAdapter | None:
    if tp is Any:
        return None
    try:
        return TypeAdapter(tp, config=STRICT)
    except (PydanticSchemaGenerationError, TypeError, NameError):
        return None


def _dataclasses_in(tp: Any, seen: set | None = None) -> set[type]:
    seen = set() if seen is None else seen
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if tp in seen:
            return seen
        seen.add(tp)
        for sub in _hints(tp).values():
            _dataclasses_in(sub, seen)
    for arg in typing.get_args(tp):
        _dataclasses_in(arg, seen)
    return seen


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _accepts_str_not_bool(tp: Any) -> bool:
    options = typing.get_args(tp) or (tp,)
    return str in options and bool not in options


# --------------------------------------------------------------------------------------------------
# pydantic errors -> one message per key
# --------------------------------------------------------------------------------------------------


def _messages(cls: type, errors: list[dict[str, Any]], prefix: str) -> list[str]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    located: dict[str, tuple[Any, type | None]] = {}
    for err in errors:
        key, tp, parent = _locate(cls, err["loc"])
        full = ".".join(p for p in (prefix, key) if p) or "config"
        grouped.setdefault(full, []).append(err)
        located.setdefault(full, (tp, parent))
    return [_message(key, located[key][0], errs, located[key][1]) for key, errs in grouped.items()]


def _message(key: str, tp: Any, errs: list[dict[str, Any]], parent: type | None) -> str:
    err = errs[0]
    kind, value = err["type"], err.get("input")
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        known = [f.name for f in dataclasses.fields(parent)] if parent else []
        return f"{key}: unknown key{did_you_mean(key.rsplit('.', 1)[-1], known)}"
    choices = _choices(tp)
    if choices is not None:
        return f"{key}: must be one of {choices}, got {value!r}{did_you_mean(str(value), [str(c) for c in choices])}"
    if len(errs) == 1 and kind in _EXPECTED:
        return f"{key}: expected {_EXPECTED[kind]}, got {value!r}"
    literals = [str(v) for a in typing.get_args(tp) if typing.get_origin(a) is Literal for v in typing.get_args(a)]
    return f"{key}: expected {_type_name(tp)}, got {value!r}{did_you_mean(str(value), literals)}"


def _locate(cls: type, loc: tuple) -> tuple[str, Any, type | None]:
    """Walk pydantic's error location through the schema: (dotted key, declared type there, the dataclass
    that holds the last field). Union member tags that pydantic inserts are consumed, not shown."""
    tp: Any = cls
    declared: Any = cls
    parent: type | None = None
    parts: list[str] = []
    for item in loc:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (typing.Union, types.UnionType) and isinstance(item, str):
            tp = next((a for a in args if _tag(a) == item.split("[", 1)[0]), Any)
            continue
        if dataclasses.is_dataclass(tp):
            parent, tp = tp, _hints(tp).get(item, Any)
            parts.append(str(item))
        elif origin in (list, tuple) and isinstance(item, int):
            if parts:
                parts[-1] += f"[{item}]"
            else:
                parts.append(f"[{item}]")
            tp = args[0] if args else Any
        elif origin is dict:
            parts.append(str(item))
            tp = args[1] if len(args) == 2 else Any
        else:
            parts.append(str(item))
            tp = Any
        declared = tp  # union member tags (skipped above) never change the declared type
    return ".".join(parts), declared, parent


def _tag(tp: Any) -> str:
    """The name pydantic gives a union member in error locations (``list``, ``literal``, ``int``...)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "literal"
    base = origin or tp
    return {list: "list", dict: "dict", bool: "bool", int: "int", float: "float", str: "str"}.get(
        base, getattr(base, "__name__", str(base)).lower()
    )


def _choices(tp: Any) -> list[Any] | None:
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [m.value for m in tp]
    return None


def _type_name(tp: Any) -> str:
    """``list[float] or 'balanced' or null`` for ``list[float] | Literal["balanced"] | None``."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    names = []
    for a in args:
        if a is type(None):
            names.append("null")
        elif typing.get_origin(a) is Literal:
            names += [repr(v) for v in typing.get_args(a)]
        else:
            names.append(str(a).replace("typing.", "") if typing.get_args(a) else getattr(a, "__name__", str(a)))
    return " or ".join(names)
