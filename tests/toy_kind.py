"""A toy recipe kind, added the way docs/extending.md says (a config class with its spec, a recipe class
registered with @register_kind, its smoke run), so the enumeration test proves the list is complete.

Image regression: predict one number per image (here, how bright it is) with a timm model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hf_tune.heads import HEADS, Head
from hf_tune.recipes import register_kind
from hf_tune.recipes.base import SmokeRun
from hf_tune.recipes.image_classification import ImageClassificationConfig, ImageClassificationRecipe
from hf_tune.schema import KindSpec


@dataclass
class ImageRegressionConfig(ImageClassificationConfig):
    spec = KindSpec(
        name="toy_image_regression",
        modality="image",
        headline_metric="mse",
        pipeline_tag="image-classification",
        example_input='"photo.png"',
    )


@register_kind
class ImageRegressionRecipe(ImageClassificationRecipe):
    config_cls = ImageRegressionConfig

    @property
    def head(self) -> Head:
        return HEADS.get("regression")

    @classmethod
    def smoke_recipe(cls, folder: Path, text_model: str) -> dict[str, SmokeRun]:
        rng = np.random.default_rng(0)
        level = np.arange(24) % 4
        images = (rng.integers(0, 40, size=(24, 16, 16)) + 50 * level[:, None, None]).astype(np.uint8)
        path = folder / "brightness.npz"
        np.savez(path, train_images=images, train_labels=level)
        args = [
            "recipe=quickstart",
            "task=toy_image_regression",
            "data.labels=null",
            f"data.path={path}",
            "model.name=test_resnet",
            "model.image_size=16",
        ]
        return {"regression": SmokeRun(args, path)}
