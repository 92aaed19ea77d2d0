"""Image classification with any timm model, wrapped as a transformers model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_tune.data.images import (
    IMAGE_EXTENSIONS,
    ImageSource,
    ImageSplit,
    TransformedImages,
    check_labels,
    concat_splits,
    eval_transform,
    limit,
    load_image_source,
    relabel_by_name,
    take_stratified,
    train_transform,
)
from hf_tune.data.splits import carve, select
from hf_tune.errors import DataError
from hf_tune.heads import HEADS, Head
from hf_tune.modeling import build_timm_classifier
from hf_tune.recipes.base import Recipe, SmokeRun, register_kind
from hf_tune.schema import BaseConfig, DataSplitsConfig, KindSpec
from hf_tune.techniques import log

# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    """Training-time augmentation, passed to timm.data.create_transform(is_training=True)."""

    scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    """RandomResizedCrop area range."""
    ratio: list[float] = field(default_factory=lambda: [0.9, 1.1])
    hflip: float = 0.0
    """Horizontal flip probability. Off by default: anatomy (chest X-rays) and digits are not symmetric."""
    color_jitter: float = 0.0
    auto_augment: str | None = None
    """A timm auto-augment spec such as 'rand-m5-mstd0.5'."""
    re_prob: float = 0.0
    """Random erasing probability."""


@dataclass
class ImageModelConfig:
    name: str = "resnet18"
    """Any timm model name (resnet18, resnet50, test_resnet...), or an earlier image run (runs/x or its model/
    folder): its backbone is kept, and its head too when the label names are the same."""
    pretrained: bool = False
    """Load timm's pretrained weights from the Hub (needs network); false: random init."""
    pretrained_file: str | None = None
    """Offline pretrained weights: a .safetensors or PyTorch state dict (weights_only=True) saved from
    timm.create_model(model.name), any head size (the head is replaced to fit the labels, kept when it fits).
    Loaded by timm (a 3-channel stem is adapted to in_chans); images are normalised with the architecture's
    published mean/std."""
    in_chans: int = 3
    """3 keeps the model loadable by transformers' pipeline (which feeds RGB); 1 is faster for grayscale."""
    image_size: int = 224
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0


@dataclass
class ImageDataConfig(DataSplitsConfig):
    path: str | None = None
    """A MedMNIST-style .npz, an image folder, a datasets name or saved path, or a built-in source."""
    format: str = "auto"
    """Data source kind (see hf_tune.data.IMAGE_SOURCES); auto picks by path."""
    labels: list[str] | None = None
    """Class names in label-id order; None: from the source (folder names, ClassLabel) or '0'..'k-1'."""
    image_column: str = "image"
    label_column: str = "label"
    max_train_samples: int | None = None
    """Use a seeded, stratified subset of train (for quick runs)."""
    max_eval_samples: int | None = None
    augment: bool = True
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    cache_mb: float = 2048.0
    """Memory budget for caching deterministically transformed images (eval splits, and train when
    augment=false); 0 disables caching."""
    verify_images: bool = True
    """Open every image file once before training so a corrupt file fails early, by name."""


@dataclass
class ImageClassificationConfig(BaseConfig):
    spec = KindSpec(
        name="image_classification",
        modality="image",
        headline_metric="accuracy",
        pipeline_tag="image-classification",
        example_input='"chest_xray.png"',
    )
    model: ImageModelConfig = field(default_factory=ImageModelConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)

    def validate(self) -> list[str]:
        errors = super().validate() + self.data.split_errors()
        if self.model.in_chans not in (1, 3):
            errors.append(f"model.in_chans must be 1 or 3, got {self.model.in_chans}")
        if self.model.image_size < 8:
            errors.append(f"model.image_size must be >= 8, got {self.model.image_size}")
        m = self.model
        if m.pretrained and m.pretrained_file:
            errors.append("model.pretrained and model.pretrained_file both choose the weights: keep one")
        if m.pretrained_file and Path(m.name).is_dir():
            errors.append(f"model.pretrained_file: model.name={m.name} is a saved model, which has its own weights")
        d = self.data
        if d.format == "sklearn_digits" and d.path not in (None, "sklearn:digits", "sklearn_digits"):
            errors.append(
                f"data.path={d.path} would be ignored: data.format=sklearn_digits is scikit-learn's bundled digits; "
                f"set data.format=auto (or npz, imagefolder, hf) to read {d.path}"
            )
        a = self.data.augmentation
        if len(a.scale) != 2 or not 0 < a.scale[0] <= a.scale[1] <= 1:
            errors.append(f"data.augmentation.scale must be [lo, hi] with 0 < lo <= hi <= 1, got {a.scale}")
        return errors


# --------------------------------------------------------------------------------------------------
# Recipe
# --------------------------------------------------------------------------------------------------


def resolve_label_names(configured: list[str] | None, source: ImageSource, path: str | None) -> list[str]:
    """Class names in id order: configured > source's own > '0'..'k-1' from the largest label id. A source that
    names its classes is relabelled to the configured order by name, so only names missing from data.labels
    are an error."""
    if configured and source.label_names:
        known = {c.lower() for c in configured}
        missing = [n for n in source.label_names if n.lower() not in known]
        if missing:
            raise DataError(
                f"data.labels={configured} does not list the classes {missing} found in {path}; add them to "
                f"data.labels or rename the folders"
            )
    if configured:
        return list(configured)
    if source.label_names:
        return list(source.label_names)
    top = max(int(s.labels.max()) for s in source.splits.values() if len(s))
    return [str(i) for i in range(top + 1)]


@register_kind
class ImageClassificationRecipe(Recipe):
    config_cls = ImageClassificationConfig
    cfg: ImageClassificationConfig

    @property
    def head(self) -> Head:
        return HEADS.get("single_label")

    def _source_splits(self, reference: list[str] | None = None) -> tuple[dict[str, ImageSplit], ImageSource]:
        """Every split the sources give (``path`` plus ``val_path``/``test_path``), before carving. Sources that
        name their classes (folders, ClassLabel) are relabelled by name to ``reference`` (the model's classes
        at evaluation; at training ``data.labels`` or the main source's own names)."""
        d = self.cfg.data
        kw = {"image_column": d.image_column, "label_column": d.label_column, "verify": d.verify_images}
        source = load_image_source(d.path, d.format, **kw)
        if reference is None and self.head.discrete:
            reference = list(d.labels) if d.labels else source.label_names

        def named(src: ImageSource, split: ImageSplit, where: str | None) -> ImageSplit:
            if reference is None or not src.label_names or not self.head.discrete:
                return split
            return relabel_by_name(split, src.label_names, reference, where or d.format)

        splits = {k: named(source, v, d.path) for k, v in source.splits.items()}
        for name, path in (("val", d.val_path), ("test", d.test_path)):
            if path:
                extra = load_image_source(path, d.format, **kw)
                splits[name] = concat_splits([named(extra, v, path) for v in extra.splits.values()])
        return splits, source

    def _carved(self, splits: dict[str, ImageSplit]) -> dict[str, ImageSplit]:
        d = self.cfg.data
        return carve(splits, d.split_ratios, d.split_seed, d.carve, take_stratified)

    def prepare_data(self) -> None:
        d, m = self.cfg.data, self.cfg.model
        splits, source = self._source_splits()
        discrete = self.head.discrete
        self.label_names = resolve_label_names(d.labels, source, d.path) if discrete else [d.label_column]
        splits = self._carved(splits)
        if discrete:
            check_labels(splits, len(self.label_names), d.path or d.format)
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

    def build_model(self) -> None:
        m = self.cfg.model
        self.model = build_timm_classifier(
            m.name,
            self.head.num_outputs(self.label_names),
            dict(enumerate(self.label_names)),
            pretrained=m.pretrained,
            pretrained_file=m.pretrained_file,
            in_chans=m.in_chans,
            image_size=m.image_size,
            drop_rate=m.drop_rate,
            drop_path_rate=m.drop_path_rate,
        )
        self.attach_encoder({"pretrained_cfg": self.model.config.pretrained_cfg})

    def attach_encoder(self, encoder_config: dict[str, Any]) -> None:
        """Train/eval datasets with transforms from the model's data config (``pretrained_cfg``), so
        evaluation here equals ``pipeline()`` later."""
        pcfg = encoder_config["pretrained_cfg"]
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
                cache_mb=d.cache_mb,
                random=name == "train" and d.augment,
            )
            for name, s in self._splits.items()
        }

    def train_labels(self):
        return self._splits["train"].labels

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        return self.head.metrics(logits, eval_pred.label_ids)

    # ---------------------------------------------------------------- saved-model entry points
    @classmethod
    def load_model(cls, model_dir: Path):
        from transformers import TimmWrapperForImageClassification

        return TimmWrapperForImageClassification.from_pretrained(str(model_dir))

    def eval_dataset(self, split: str, model_dir: Path) -> tuple[str, Any]:
        splits, _ = self._source_splits(reference=self.label_names if self.head.discrete else None)
        name, chosen = select(splits, split, carved=self._carved, concat=concat_splits, source=self.cfg.data.path)
        if self.head.discrete:
            check_labels({name: chosen}, len(self.label_names), self.cfg.data.path or self.cfg.data.format)
        mode = "L" if self.model.config.pretrained_cfg["input_size"][0] == 1 else "RGB"
        return name, TransformedImages(chosen, eval_transform(self.model.config.pretrained_cfg), mode)

    @classmethod
    def smoke_recipe(cls, folder: Path, text_model: str) -> dict[str, SmokeRun]:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 255, size=(24, 16, 16), dtype=np.uint8)
        path = folder / "images.npz"
        np.savez(path, train_images=images, train_labels=np.arange(24) % 2)
        args = ["recipe=quickstart", f"data.path={path}", "model.name=test_resnet", "model.image_size=16"]
        return {"single_label": SmokeRun(args, path)}

    def predict(self, model_dir: Path, source: str, batch_size: int = 32, model=None) -> Iterator[dict[str, Any]]:
        model = (model or self.inference_model(model_dir)).eval()
        pcfg = model.config.pretrained_cfg
        tf, mode = eval_transform(pcfg), "L" if pcfg["input_size"][0] == 1 else "RGB"
        split = self._predict_inputs(source)
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        for start in range(0, len(split), batch_size):
            idx = range(start, min(start + batch_size, len(split)))
            x = torch.stack([tf(split.image(i).convert(mode)) for i in idx])
            with torch.no_grad():
                logits = model(pixel_values=x).logits.float().numpy()
            for i, row in zip(idx, logits, strict=True):
                yield {"input": split.ids[i], **self.head.format_prediction(row, names)}

    def training_set(self, model) -> TransformedImages:
        self.model = model
        self.prepare_data()
        self.attach_encoder({"pretrained_cfg": model.config.pretrained_cfg})  # transforms of the saved model
        return self.datasets["train"]

    def _predict_inputs(self, source: str) -> ImageSplit:
        """An image file, a folder of images (recursive), or a dataset file (its ``data.split``)."""
        p = Path(source)
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            return ImageSplit([str(p)], np.zeros(1), ids=[str(p)])
        if p.is_dir() and not (p / "dataset_dict.json").exists():
            files = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise DataError(f"{source}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
            return ImageSplit(files, np.zeros(len(files)), ids=files)
        splits = load_image_source(source).splits
        return select(splits, self.cfg.data.split, carved=self._carved, concat=concat_splits, source=source)[1]
