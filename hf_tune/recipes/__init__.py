"""Recipe kinds. Importing this package registers every recipe class in ``RECIPES``."""

from hf_tune.recipes import image_classification, token_classification  # noqa: F401  (registers)
from hf_tune.recipes.base import RECIPES, Recipe

__all__ = ["RECIPES", "Recipe"]
