"""Image classification with any timm model, wrapped as a transformers model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_tune.config import ImageClassificationConfig
from hf_tune.data.images import (
    IMAGE_EXTENSIONS,
    DataError,
    ImageSource,
    ImageSplit,
    TransformedImages,
    carve_splits,
    check_labels,
    eval_transform,
    limit,
    load_image_source,
    train_transform,
)
from hf_tune.metrics import compute_classification_metrics, softmax
from hf_tune.modeling import build_timm_classifier
from hf_tune.recipes.base import RECIPES, Recipe, log


def resolve_label_names(configured: list[str] | None, source: ImageSource, path: str | None) -> list[str]:
    """Class names in id order: configured > source's own > '0'..'k-1' from the largest label id."""
    if configured and source.label_names and [c.lower() for c in configured] != [c.lower() for c in source.label_names]:
        raise DataError(
            f"data.labels={configured} does not match the classes found in {path}: "
            f"{source.label_names}; fix data.labels or the folder names"
        )
    if configured:
        return list(configured)
    if source.label_names:
        return list(source.label_names)
    top = max(int(s.labels.max()) for s in source.splits.values() if len(s))
    return [str(i) for i in range(top + 1)]


@RECIPES.register("image_classification")
class ImageClassificationRecipe(Recipe):
    task = "image_classification"
    pipeline_task = "image-classification"
    cfg: ImageClassificationConfig

    def _load_splits(self, known_labels: list[str] | None = None) -> dict[str, ImageSplit]:
        """Load and split ``cfg.data``; ``known_labels`` (a saved model's classes) bounds the label ids."""
        d = self.cfg.data
        source = load_image_source(
            d.path, d.format, image_column=d.image_column, label_column=d.label_column, verify=d.verify_images
        )
        self.label_names = known_labels or resolve_label_names(d.labels, source, d.path)
        splits = carve_splits(source.splits, d.split_ratios, d.split_seed)
        check_labels(splits, len(self.label_names), d.path or d.format)
        return splits

    def _setup_data(self) -> None:
        d, m = self.cfg.data, self.cfg.model
        splits = self._load_splits()
        splits["train"] = limit(splits["train"], d.max_train_samples, d.split_seed)
        for s in ("val", "test"):
            if s in splits:
                splits[s] = limit(splits[s], d.max_eval_samples, d.split_seed)
        self._splits = splits
        log(
            f"data: {d.path or d.format} -> "
            + ", ".join(f"{k}={len(v)}" for k, v in splits.items())
            + f"; classes={self.label_names}"
        )
        self._mode = "L" if m.in_chans == 1 else "RGB"

    def _setup_model(self) -> None:
        m = self.cfg.model
        self.model = build_timm_classifier(
            m.name,
            len(self.label_names),
            dict(enumerate(self.label_names)),
            pretrained=m.pretrained,
            in_chans=m.in_chans,
            image_size=m.image_size,
            drop_rate=m.drop_rate,
            drop_path_rate=m.drop_path_rate,
        )
        self.build_datasets(self.model.config.pretrained_cfg)

    def build_datasets(self, pcfg: dict[str, Any]) -> None:
        """Train/eval datasets with transforms from a model's data config (``pretrained_cfg``)."""
        # Transforms come from the model's saved data config, so eval here == pipeline() later.
        d = self.cfg.data
        ev = eval_transform(pcfg)
        a = d.augmentation
        tr = (
            train_transform(pcfg, a.scale, a.ratio, a.hflip, a.color_jitter, a.auto_augment, a.re_prob)
            if d.augment
            else ev
        )
        self.datasets = {
            name: TransformedImages(
                s,
                tr if name == "train" else ev,
                self._mode,
                cache_mb=0.0 if name == "train" and d.augment else d.cache_mb,
            )
            for name, s in self._splits.items()
        }

    def train_labels(self):
        return self._splits["train"].labels

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        return compute_classification_metrics(eval_pred)

    # ---------------------------------------------------------------- saved-model entry points
    @classmethod
    def load_model(cls, model_dir: Path):
        from transformers import TimmWrapperForImageClassification

        return TimmWrapperForImageClassification.from_pretrained(str(model_dir))

    def eval_dataset(self, split: str, model_dir: Path) -> tuple[str, Any]:
        splits = self._load_splits(known_labels=self.label_names)
        if split == "auto":
            split = next((s for s in ("test", "val") if s in splits), "train")
        if split not in splits:
            raise DataError(f"data.split={split}: {self.cfg.data.path} has splits {sorted(splits)}")
        mode = "L" if self.model.config.pretrained_cfg["input_size"][0] == 1 else "RGB"
        ds = TransformedImages(splits[split], eval_transform(self.model.config.pretrained_cfg), mode)
        return split, ds

    def predict(self, model_dir: Path, source: str, batch_size: int = 32, model=None) -> Iterator[dict[str, Any]]:
        model = (model or self.load_model(model_dir)).eval()
        pcfg = model.config.pretrained_cfg
        tf, mode = eval_transform(pcfg), "L" if pcfg["input_size"][0] == 1 else "RGB"
        split = _predict_inputs(source, self.cfg.data.split)
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        for start in range(0, len(split), batch_size):
            idx = range(start, min(start + batch_size, len(split)))
            x = torch.stack([tf(split.image(i).convert(mode)) for i in idx])
            with torch.no_grad():
                probs = softmax(model(pixel_values=x).logits.float().numpy())
            for i, p in zip(idx, probs, strict=True):
                k = int(np.argmax(p))
                yield {
                    "input": split.ids[i],
                    "label": names[k],
                    "score": float(p[k]),
                    "scores": {n: float(v) for n, v in zip(names, p, strict=True)},
                }


def _predict_inputs(source: str, split: str) -> ImageSplit:
    """An image file, a folder of images (recursive), or a dataset file (its ``split``)."""
    p = Path(source)
    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageSplit([str(p)], np.zeros(1), ids=[str(p)])
    if p.is_dir() and not (p / "dataset_dict.json").exists():
        files = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"{source}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
        return ImageSplit(files, np.zeros(len(files)), ids=files)
    splits = load_image_source(source).splits
    name = next((s for s in ("test", "val", "train") if s in splits), None) if split == "auto" else split
    if name not in splits:
        raise DataError(f"data.split={split}: {source} has splits {sorted(splits)}")
    return splits[name]
