"""TEMPORARY: the old walker behind the new API, until typecheck.py lands."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, Literal

from hf_tune.registry import did_you_mean


def build(cls, mapping, prefix=""):
    errors = []
    out = _build(cls, mapping, errors, prefix)
    return (out if not errors else None), errors


def check_training_args(training):
    errors = []
    out = _check_training_args(training, errors)
    return out, errors


_REMOVED_TRAINING_KEYS = {
    "warmup_ratio": "removed in transformers 5: use training.warmup_steps with a float ratio, e.g. 0.1",
    "evaluation_strategy": "renamed in transformers 5: use training.eval_strategy",
    "overwrite_output_dir": "removed in transformers 5: use overwrite=true (top level)",
    "logging_dir": "removed in transformers 5: TensorBoard logs go under training.output_dir",
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check(tp: Any, value: Any, key: str, errors: list[str]) -> Any:
    """Return ``value`` converted to ``tp`` or append an error naming ``key``."""
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, errors, prefix=key)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            trial: list[str] = []
            out = _check(option, value, key, trial)
            if not trial:
                return out
        errors.append(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
        return value
    if origin is Literal:
        if value not in args:
            errors.append(
                f"{key}: must be one of {list(args)}, got {value!r}{did_you_mean(str(value), [str(a) for a in args])}"
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            errors.append(f"{key}: expected a list, got {value!r}")
            return value
        item_tp = args[0] if args else Any
        return [_check(item_tp, v, f"{key}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{key}: expected a mapping, got {value!r}")
            return value
        val_tp = args[1] if len(args) == 2 else Any
        return {k: _check(val_tp, v, f"{key}.{k}", errors) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [m.value for m in tp]
        if value in allowed or isinstance(value, tp):
            return value
        errors.append(
            f"{key}: must be one of {allowed}, got {value!r}{did_you_mean(str(value), [str(a) for a in allowed])}"
        )
        return value
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{key}: expected a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and tp in (list, dict):
        if not isinstance(value, tp):
            errors.append(f"{key}: expected a {tp.__name__}, got {value!r}")
        return value
    return value  # complex third-party types: TrainingArguments itself checks them


def _build(cls: type, mapping: Any, errors: list[str], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``mapping``, appending every problem to ``errors``."""
    where = prefix or "config"
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        errors.append(f"{where}: expected a mapping, got {mapping!r}")
        return cls() if _all_defaulted(cls) else None
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    for k in mapping:
        if k not in known:
            errors.append(f"{_join(prefix, k)}: unknown key{did_you_mean(str(k), known)}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        if f.name in mapping:
            value = mapping[f.name]
            kwargs[f.name] = _check(hints[f.name], value, key, errors)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.append(f"{key}: required key is missing")
            kwargs[f.name] = None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # only reachable after errors were recorded above
        errors.append(f"{where}: {exc}")
        return None


def _all_defaulted(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _check_training_args(training: Any, errors: list[str]) -> dict[str, Any]:
    """Check a ``training:`` mapping against TrainingArguments' own fields and annotated types."""
    from transformers import TrainingArguments

    if training is None:
        return {}
    if not isinstance(training, dict):
        errors.append(f"training: expected a mapping of TrainingArguments, got {training!r}")
        return {}
    fields = {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}
    hints = typing.get_type_hints(TrainingArguments)
    out: dict[str, Any] = {}
    for k, v in training.items():
        key = f"training.{k}"
        if k in _REMOVED_TRAINING_KEYS:
            errors.append(f"{key}: {_REMOVED_TRAINING_KEYS[k]}")
        elif k not in fields:
            errors.append(f"{key}: not a TrainingArguments field{did_you_mean(k, list(fields))}")
        else:
            tp = hints.get(k, Any)
            if isinstance(v, bool) and _accepts_str_not_bool(tp):
                v = "no" if v is False else "yes"  # YAML 1.1 reads `eval_strategy=no` as false
            out[k] = _check(tp, v, key, errors)
    return out


def _accepts_str_not_bool(tp: Any) -> bool:
    options = typing.get_args(tp) or (tp,)
    return str in options and bool not in options
