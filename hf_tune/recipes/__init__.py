"""Recipe kinds. Importing this package registers every recipe class in ``RECIPES`` (one module per kind)."""

from hf_tune.recipes import (  # noqa: F401  (importing registers the recipe classes)
    clause_extraction,
    image_classification,
    masked_lm,
    multitask,
    text_classification,
    token_classification,
)
from hf_tune.recipes.base import RECIPES, Recipe, TrainResult, plan_training, register_kind, run_training

__all__ = ["RECIPES", "Recipe", "TrainResult", "plan_training", "register_kind", "run_training"]
