"""Recipe kinds. Importing this package registers every recipe class in ``RECIPES``."""

from hf_tune.recipes import (  # noqa: F401  (importing registers the recipe classes)
    image_classification,
    multitask,
    text_classification,
    token_classification,
)
from hf_tune.recipes.base import RECIPES, Recipe

__all__ = ["RECIPES", "Recipe"]
