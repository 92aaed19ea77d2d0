"""A notebook-friendly wrapper around one recipe's life cycle (the CLI's `train` does the same steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hf_tune.config import BaseConfig, load_config


class Run:
    """One training run: ``Run(cfg).fit()`` or ``Run.from_recipe("quickstart", **overrides).fit()``."""

    def __init__(self, cfg: BaseConfig) -> None:
        from hf_tune.recipes import RECIPES

        self.cfg = cfg
        self.recipe = RECIPES.get(cfg.task)(cfg)
        self.metrics: dict[str, Any] = {}
        self.model_dir: Path | None = None

    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> Run:
        """Keyword overrides use double underscores for dots: ``training__learning_rate=1e-3``."""
        args = [f"recipe={name}"] + [f"{k.replace('__', '.')}={_yaml_value(v)}" for k, v in overrides.items()]
        return cls(load_config(args))

    def fit(self) -> dict[str, Any]:
        self.recipe.setup()
        self.metrics = {**self.recipe.train(), **self.recipe.evaluate()}
        self.model_dir = self.recipe.save(self.metrics)
        return self.metrics

    @property
    def trainer(self):
        return self.recipe.trainer


def _yaml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_yaml_value(x) for x in v) + "]"
    return str(v)
