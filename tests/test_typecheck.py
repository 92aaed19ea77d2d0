"""The pydantic-backed schema checker: every problem in one pass, named by key, with "did you mean"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hf_tune.typecheck import build, check_training_args


@dataclass
class Inner:
    size: int = 8
    rate: float = 0.5
    mode: Literal["fast", "slow"] = "fast"
    scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    weights: list[float] | Literal["balanced"] | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        self.checked = True


@dataclass
class Outer:
    task: str
    inner: Inner = field(default_factory=Inner)
    extra: dict[str, Any] = field(default_factory=dict)
    flag: bool = False


def test_valid_mapping_builds_nested_dataclasses_with_defaults():
    cfg, errors = build(Outer, {"task": "t", "inner": {"rate": 2, "weights": "balanced"}, "extra": {"a": [1]}})
    assert errors == []
    assert isinstance(cfg.inner, Inner) and cfg.inner.checked  # __post_init__ ran
    assert cfg.inner.rate == 2.0 and isinstance(cfg.inner.rate, float)  # an int is a number
    assert cfg.inner.size == 8 and cfg.inner.weights == "balanced" and cfg.extra == {"a": [1]}


def test_every_problem_in_one_pass():
    cfg, errors = build(
        Outer,
        {
            "inner": {"size": "8", "rate": True, "mode": "fsat", "scale": [1, "x"], "weights": "bal", "sizee": 1},
            "flag": 1,
            "unknown": 3,
        },
    )
    assert cfg is None
    assert set(errors) == {
        "task: required key is missing",
        "inner.size: expected an integer, got '8'",
        "inner.rate: expected a number, got True",
        "inner.mode: must be one of ['fast', 'slow'], got 'fsat' (did you mean \"fast\"?)",
        "inner.scale[1]: expected a number, got 'x'",
        "inner.weights: expected list[float] or 'balanced' or null, got 'bal'",
        'inner.sizee: unknown key (did you mean "size"?)',
        "flag: expected true or false, got 1",
        "unknown: unknown key",
    }


def test_prefix_names_nested_sections():
    _, errors = build(Inner, {"sise": 3}, prefix="tasks.a.data")
    assert errors == ['tasks.a.data.sise: unknown key (did you mean "size"?)']


def test_training_arguments_checked_against_transformers():
    out, errors = check_training_args(
        {"num_train_epochs": 2, "learning_rat": 1e-3, "warmup_ratio": 0.1, "eval_strategy": False, "seed": "x"}
    )
    assert out["num_train_epochs"] == 2.0 and out["eval_strategy"] == "no"  # YAML `no` is false
    assert 'training.learning_rat: not a TrainingArguments field (did you mean "learning_rate"?)' in errors
    assert any(e.startswith("training.warmup_ratio: removed in transformers 5") for e in errors)
    assert "training.seed: expected an integer, got 'x'" in errors
    assert len(errors) == 3
