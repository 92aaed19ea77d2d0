"""Multi-task recipe: several tasks, one shared encoder (MultiHeadModel), trained together by Trainer.

Each task is a single-task recipe of its kind, built from the task's own full config (the recipe's training
settings and techniques, the task's data and loss), and used only through the public per-task interface of
:class:`~hf_tune.recipes.base.Recipe`: data loading and splitting, its head, its loss, windows and span decoding
for tagging, metrics and prediction output. This recipe adds what is shared: one encoder with a head per task,
the task mixture and sampler, loss weighting, per-task metrics (``eval_<task>_<metric>``) and the multi-task
save/evaluate/predict entry points.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from hf_tune.errors import ConfigError, DataError
from hf_tune.heads import HEADS
from hf_tune.recipes.base import RECIPES, Recipe, SmokeRun, register_kind
from hf_tune.registry import did_you_mean
from hf_tune.schema import BaseConfig, KindSpec, LossConfig, to_dict
from hf_tune.techniques import log
from hf_tune.trainer import LossInputs, TrainingLoss
from hf_tune.typecheck import build

# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------


@dataclass
class MultitaskModelConfig:
    name: str = "bert-base-uncased"
    """The shared encoder: a BERT-family Hub id / folder / pkg:<package> (text tasks), or a timm model name
    (image tasks)."""
    pretrained: bool = False
    """Image encoders only: load timm's pretrained weights from the Hub (text encoders are always pretrained)."""
    pretrained_file: str | None = None
    """Encoder weights from a .safetensors / PyTorch state dict file (see image and text model.pretrained_file)."""
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

    type: str
    """The recipe kind whose data handling, head and metrics the task reuses (``hf-tune recipes`` lists kinds;
    any kind whose spec allows multi-task). Its ``data`` keys decide the head (e.g. text_classification covers
    single-label, multi-label via data.multi_label and regression via data.regression)."""
    data: dict[str, Any] = field(default_factory=dict)
    """The data section of that recipe kind (same keys, same defaults)."""
    loss_weight: float = 1.0
    """Fixed weight of this task's loss (also the base that uncertainty/DWA weighting multiplies)."""
    metric: str | None = None
    """Headline metric for this task, e.g. span_f1 or f1_micro (logged as eval_<task>_<metric>); None: the
    recipe kind's headline metric."""
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


def _task_key(task: str, error: str) -> str:
    """``data.max_length=256: ...`` -> ``tasks.NAME.data.max_length=256: ...``: a task's data keys as the user
    writes them (``model.*`` is shared by every task and keeps its name)."""
    return re.sub(r"(?<![\w.])data\.", f"tasks.{task}.data.", error)


def _reserved_by_torch(name: str) -> bool:
    """Heads live in an nn.ModuleDict, whose keys cannot shadow Module attributes (half, train, type, ...)."""
    return hasattr(torch.nn.ModuleDict, name)


@dataclass
class MultitaskConfig(BaseConfig):
    spec = KindSpec(
        name="multitask",
        modality="text",  # per recipe: see modality(); the tasks decide
        headline_metric="loss",
        load_snippet=(
            "```python\n"
            "import hf_tune.multihead  # registers MultiHeadModel with AutoModel (pip install hf_tune)\n"
            "from transformers import AutoModel, AutoTokenizer\n\n"
            'model = AutoModel.from_pretrained("{repo}")\n'
            'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n'
            'out = model(**tokenizer(["..."], return_tensors="pt"), task="{task}")\n'
            'out.logits["{task}"]\n'
            "```\n\n"
            "or `hf-tune predict MODEL_DIR INPUT task={task}`.\n"
        ),
        multitask_task=False,
        without=("distill",),  # one teacher per task is not supported yet
    )
    model: MultitaskModelConfig = field(default_factory=MultitaskModelConfig)
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    multitask: MultitaskOptions = field(default_factory=MultitaskOptions)

    def task_config(self, name: str) -> tuple[BaseConfig | None, list[str]]:
        """Task ``name`` as a full config of its kind: the recipe's training settings and techniques (with the
        task's loss), the task's data, and the shared encoder's settings that the kind's model section has.
        Returns (config, errors), errors prefixed with ``tasks.NAME.``."""
        t = self.tasks[name]
        cls = RECIPES.get(t.type).config_cls
        model_fields = {f.name for f in dataclasses.fields(typing.get_type_hints(cls)["model"])}
        mapping = {
            "task": t.type,
            "recipe": f"{self.recipe}.{name}",
            "model": {k: v for k, v in dataclasses.asdict(self.model).items() if k in model_fields},
            "data": dict(t.data),
            "techniques": {**to_dict(self)["techniques"], "loss": dataclasses.asdict(t.loss)},
            "card": dataclasses.asdict(self.card),
        }
        cfg, errors = build(cls, mapping)
        if cfg is not None:
            cfg.training = {**self.training, "output_dir": str(self.output_dir() / name)}
            # shared settings are checked once, at the top level; what is the task's own is checked here
            errors += [e for e in cfg.validate() if e.startswith(("data", "model", "techniques.loss"))]
        return cfg, [f"tasks.{name}.{e}" for e in errors]

    def validate(self) -> list[str]:
        from hf_tune.multitask import SAMPLING, WEIGHTINGS

        errors = super().validate()
        if not self.tasks:
            errors.append("tasks: a multitask recipe needs at least one task (tasks.NAME.type, tasks.NAME.data)")
        kinds = [n for n in RECIPES.names() if RECIPES.get(n).config_cls.spec.multitask_task]
        modalities = set()
        for name, t in self.tasks.items():
            if not name.isidentifier():
                errors.append(f"tasks.{name}: task names must be identifiers (letters, digits, _)")
            elif _reserved_by_torch(name):
                errors.append(
                    f"tasks.{name}: {name!r} is a torch.nn.Module attribute; rename the task (e.g. {name}_task)"
                )
            if t.type not in kinds:
                errors.append(
                    f"tasks.{name}.type: {t.type!r} cannot be a task{did_you_mean(t.type, kinds)}; "
                    f"known: {', '.join(kinds)}"
                )
                continue
            modalities.add(RECIPES.get(t.type).config_cls.spec.modality)
            if t.loss_weight < 0:
                errors.append(f"tasks.{name}.loss_weight must be >= 0")
            sub, sub_errors = self.task_config(name)
            errors += sub_errors
            head = getattr(sub.data, "head_name", None) if sub is not None else None  # tagging kinds choose a head
            if head is not None and not HEADS.get(head()).in_multitask:
                errors.append(f"tasks.{name}: the {head()} head cannot be a multi-task head; choose another scheme")
            for key in ("max_train_eval_docs", "max_train_eval_samples"):  # single-task Recipe.training_eval_dataset
                if getattr(getattr(sub, "data", None), key, None) is not None:
                    errors.append(f"tasks.{name}.data.{key}: single-task recipes only (a task scores its whole split)")
        if len(modalities) > 1:
            errors.append("tasks: text and image tasks cannot share one encoder; use one modality per recipe")
        m = self.multitask
        for key, value, reg in (("sampling", m.sampling, SAMPLING), ("weighting", m.weighting, WEIGHTINGS)):
            if value not in reg:
                errors.append(
                    f"multitask.{key}: unknown {reg.kind} {value!r}{did_you_mean(value, reg.names())}; "
                    f"known: {', '.join(reg.names())}"
                )
        if m.temperature <= 0:
            errors.append("multitask.temperature must be > 0")
        tech = self.techniques
        if tech.loss != LossConfig():
            errors.append("techniques.loss: set the loss per task in tasks.NAME.loss for multitask recipes")
        if tech.lora.enabled:
            errors.append("techniques.lora: not supported for multitask recipes yet; use techniques.freeze")
        return errors

    def process_errors(self, world_size: int) -> list[str]:
        if self.multitask.pcgrad and world_size > 1:
            return ["multitask.pcgrad runs in a single process only (it takes per-task gradients itself)"]
        return []

    def modality(self) -> str:
        types = [t.type for t in self.tasks.values() if t.type in RECIPES]
        return RECIPES.get(types[0]).config_cls.spec.modality if types else self.spec.modality

    def headline_metrics(self) -> dict[str, str]:
        return {n: t.metric or RECIPES.get(t.type).config_cls.spec.headline_metric for n, t in self.tasks.items()}

    def data_sections(self) -> dict[str, dict[str, Any]]:
        return {n: dict(t.data) for n, t in self.tasks.items()}

    def card_settings(self) -> list[str]:
        m = self.multitask
        out = [f"- task sampling `{m.sampling}`" + (f" (T={m.temperature})" if m.sampling == "temperature" else "")]
        out.append(f"- loss weighting `{m.weighting}`" + (", PCGrad" if m.pcgrad else ""))
        for n, task in self.tasks.items():
            out.append(f"- task `{n}`: {task.type}, loss weight {task.loss_weight}, loss `{task.loss.name}`")
        return out

    @classmethod
    def route_overrides(cls, saved: dict[str, Any], overrides: list[str], task: str | None) -> list[str]:
        """``data.KEY=V`` applies to every task's data (or to ``task`` only)."""
        tasks = [task] if task else list(saved.get("tasks") or {})
        return [x for o in overrides for x in ([f"tasks.{t}.{o}" for t in tasks] if o.startswith("data.") else [o])]


# --------------------------------------------------------------------------------------------------
# Model pieces
# --------------------------------------------------------------------------------------------------


class TaskHeadView(nn.Module):
    """One task of a MultiHeadModel seen as a single-task model, so that task's recipe can evaluate and
    predict with it unchanged: ``config`` carries the task's labels, ``forward`` returns its logits."""

    def __init__(self, model: nn.Module, task: str) -> None:
        from transformers import PretrainedConfig

        super().__init__()
        self.model, self.task = model, task
        labels = model.config.tasks[task]["labels"] or ["value"]
        self.config = PretrainedConfig(id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
        if model.config.encoder_kind == "image":
            self.config.pretrained_cfg = model.config.encoder["pretrained_cfg"]

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None, labels=None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            task=self.task,
            labels=None if labels is None else {self.task: labels},
        )
        return SequenceClassifierOutput(loss=out.loss, logits=out.logits[self.task])


class MultiTaskCollator:
    """Pads a (possibly mixed) batch: inputs together, labels grouped as ``{task: tensor}`` in batch order,
    each collated by its task's head (token labels padded to the batch's padded length with -100).

    Only input_ids/attention_mask travel (single-segment text, so token_type_ids are all zero anyway).
    """

    def __init__(self, names: list[str], heads: list[str], tokenizer=None) -> None:
        self.names, self.heads, self.tokenizer = names, [HEADS.get(h) for h in heads], tokenizer

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        task_ids = [int(f["task_ids"]) for f in features]
        if "pixel_values" in features[0]:
            batch: dict[str, Any] = {
                "pixel_values": torch.stack([torch.as_tensor(f["pixel_values"]) for f in features])
            }
            length = 0
        else:
            keep = [{k: f[k] for k in ("input_ids", "attention_mask")} for f in features]
            batch = dict(self.tokenizer.pad(keep, return_tensors="pt"))
            length = batch["input_ids"].shape[1]
        batch["task_ids"] = torch.tensor(task_ids)
        if "labels" in features[0]:
            batch["labels"] = {
                self.names[k]: self.heads[k].collate(
                    [f["labels"] for f, t in zip(features, task_ids, strict=True) if t == k], length
                )
                for k in sorted(set(task_ids))
            }
        return batch


class MultitaskLoss(TrainingLoss):
    """The model's weighted sum of per-task losses; records each task's loss for the logs (and DWA) and, with
    PCGrad, returns a loss whose gradient on the shared encoder is the projected one."""

    labels_to_model = True

    def __init__(self, names: list[str], pcgrad: bool, seed: int) -> None:
        from hf_tune.multitask import TaskLossMeter

        self.meter = TaskLossMeter(names)
        self.pcgrad = pcgrad
        self.rng = np.random.default_rng(seed)
        self.model: nn.Module | None = None

    def __call__(self, batch: LossInputs) -> torch.Tensor:
        from hf_tune.multitask import pcgrad_surrogate

        model = getattr(batch.model, "module", batch.model)  # DDP wraps the model
        self.model = model
        loss = batch.outputs.loss
        if model.training:
            self.meter.add(batch.outputs.task_losses)
            if self.pcgrad:
                shared = [p for p in model.encoder.parameters() if p.requires_grad]
                loss = pcgrad_surrogate(list(batch.outputs.task_terms.values()), shared, self.rng)
        return loss

    def take_logs(self) -> dict[str, float]:
        weights = self.model.loss_weighting.effective_weights() if self.model is not None else {}
        return {**self.meter.take_logs(), **{f"weight_{n}": round(w, 5) for n, w in weights.items()}}


# --------------------------------------------------------------------------------------------------
# Recipe
# --------------------------------------------------------------------------------------------------


@register_kind
class MultitaskRecipe(Recipe):
    config_cls = MultitaskConfig
    cfg: MultitaskConfig

    # ---------------------------------------------------------------- sub-recipes
    def _make_subs(self) -> None:
        self.names = list(self.cfg.tasks)
        self.subs: dict[str, Recipe] = {}
        for n in self.names:
            cfg, errors = self.cfg.task_config(n)
            if errors:
                raise ConfigError(errors)
            self.subs[n] = RECIPES.get(cfg.task)(cfg)

    def headline(self, name: str) -> str:
        """The metric that summarises task ``name`` (tasks.NAME.metric, else its recipe kind's usual one)."""
        return self.cfg.headline_metrics()[name]

    # ---------------------------------------------------------------- data
    def prepare_data(self) -> None:
        self._make_subs()
        for n, sub in self.subs.items():
            log(f"task {n} ({self.cfg.tasks[n].type}):")
            try:
                sub.prepare_data()
            except ConfigError as exc:  # a task's own check names its key as in a single-task recipe
                raise ConfigError([_task_key(n, e) for e in exc.errors]) from None
        modality = self.cfg.modality()
        self.tokenizer = next((getattr(s, "tokenizer", None) for s in self.subs.values()), None)
        if modality != "text":
            self.tokenizer = None
        self.label_names = []

    def _task_datasets(self) -> None:
        """Mixture for training, one dataset per task for evaluation (needs the built subs' datasets)."""
        from hf_tune.multitask import TaskMixture

        ids = {n: k for k, n in enumerate(self.names)}
        for n, sub in self.subs.items():
            if len(sub.datasets.get("train", [])) == 0:
                raise DataError(f"tasks.{n}: the training split is empty")
        self.datasets = {"train": TaskMixture({n: s.datasets["train"] for n, s in self.subs.items()})}
        for split in ("val", "test"):
            per_task = {
                n: TaskMixture({n: s.datasets[split]}, task_ids={n: ids[n]})
                for n, s in self.subs.items()
                if split in s.datasets and len(s.datasets[split])
            }
            if per_task:
                self.datasets[split] = per_task
        sizes = ", ".join(f"{n}={len(s.datasets['train'])}" for n, s in self.subs.items())
        log(f"multitask: {len(self.names)} tasks, train examples {sizes}")

    # ---------------------------------------------------------------- model
    def build_model(self) -> None:
        from hf_tune.multihead import MultiHeadModel

        m = self.cfg.model
        tasks = {
            n: {"head": sub.head.name, "labels": list(sub.label_names), "loss_weight": self.cfg.tasks[n].loss_weight}
            for n, sub in self.subs.items()
        }
        kind, encoder, enc_cfg = self._build_encoder()
        self.model = MultiHeadModel.from_encoder(
            encoder,
            kind,
            enc_cfg,
            tasks=tasks,
            task_order=self.names,
            head_dropout=m.head_dropout,
            pooling=m.pooling,
            loss_weighting=self.cfg.multitask.weighting,
        )
        smoothing = float(self.args.label_smoothing_factor)
        for n, sub in self.subs.items():
            sub.attach_encoder(enc_cfg)
            self.model.set_task_loss(n, sub.task_loss(smoothing))
        self._task_datasets()
        total = sum(p.numel() for p in self.model.parameters())
        heads = {n: t["head"] for n, t in tasks.items()}
        log(f"MultiHeadModel: {kind} encoder {m.name}, heads {heads}, {total:,} parameters")

    def _build_encoder(self) -> tuple[str, nn.Module, dict[str, Any]]:
        from transformers import AutoModel

        from hf_tune.modeling import GRAY_MEAN_STD, load_pretrained

        m = self.cfg.model
        if self.cfg.modality() == "text":
            encoder = load_pretrained(AutoModel, m.name, pretrained_file=m.pretrained_file)
            return "text", encoder, encoder.config.to_dict()
        import timm

        from hf_tune.data.images import pretrained_cfg
        from hf_tune.modeling import timm_file_overlay

        model_args = {"in_chans": m.in_chans, "drop_rate": m.drop_rate}
        extra = (
            {"pretrained": True, "pretrained_cfg_overlay": timm_file_overlay(m.name, m.pretrained_file, m.in_chans)}
            if m.pretrained_file
            else {"pretrained": m.pretrained}
        )
        encoder = timm.create_model(m.name, num_classes=0, **extra, **model_args)
        encoder.pretrained_cfg.pop("state_dict", None)
        mean, std = (
            (tuple(encoder.pretrained_cfg["mean"]), tuple(encoder.pretrained_cfg["std"]))
            if m.pretrained or m.pretrained_file
            else GRAY_MEAN_STD
        )
        cfg = {
            "architecture": m.name,
            "model_args": model_args,
            "num_features": encoder.num_features,
            "pretrained_cfg": pretrained_cfg(m.image_size, m.in_chans, mean, std),
        }
        return "image", encoder, cfg

    def training_loss(self):
        self._loss = MultitaskLoss(self.names, self.cfg.multitask.pcgrad, int(self.args.seed))
        return self._loss

    # ---------------------------------------------------------------- trainer pieces
    def _setup_trainer(self) -> None:
        super()._setup_trainer()
        from hf_tune.callbacks import DwaCallback

        if self.cfg.multitask.weighting == "dwa":
            mt = self.cfg.multitask
            self.trainer.add_callback(DwaCallback(self._loss.meter, self.names, mt.dwa_interval, mt.dwa_temperature))

    def trainer_extras(self) -> dict[str, Any]:
        from hf_tune.multitask import TaskSampler, sampling_probabilities

        mt = self.cfg.multitask
        sizes = self.datasets["train"].sizes
        probs = sampling_probabilities(mt.sampling, sizes, mt.temperature)
        log(
            "task sampling "
            + mt.sampling
            + ": "
            + ", ".join(f"{n}={p:.3f}" for n, p in zip(self.names, probs, strict=True))
        )
        sampler = TaskSampler(
            sizes,
            probs,
            round_robin_batch=self.args.per_device_train_batch_size if mt.sampling == "round_robin" else None,
            seed=int(self.args.seed),
            epoch_size=mt.epoch_size,
        )
        return {"train_sampler": sampler, "log_sources": [self._loss]}

    def data_collator(self):
        heads = [self.model.config.tasks[n]["head"] for n in self.names]
        return MultiTaskCollator(self.names, heads, self.tokenizer)

    def processing_class(self):
        return self.tokenizer

    def preprocess_logits(self):
        reducers = {n: sub.preprocess_logits() for n, sub in self.subs.items()}

        def reduce(logits, labels):
            return {n: v if reducers[n] is None else reducers[n](v, None) for n, v in logits.items()}

        return reduce

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        from transformers import EvalPrediction

        preds, labels = eval_pred.predictions, eval_pred.label_ids
        out: dict[str, float] = {}
        for n in preds:  # one task per evaluation dataset; Trainer prefixes eval_<task>_
            out.update(self.subs[n].compute_metrics(EvalPrediction(predictions=preds[n], label_ids=labels[n])))
        return out

    def evaluate(self) -> dict[str, float]:
        metrics = super().evaluate()
        self._log_headlines(metrics)
        return metrics

    def _log_headlines(self, metrics: dict[str, float]) -> None:
        """One line with each task's headline metric; a tasks.NAME.metric that no evaluation produced is named
        with the metrics that exist (after training, so a warning rather than an error)."""
        parts = []
        for n in self.names:
            key = f"eval_{n}_{self.headline(n)}"
            if key in metrics:
                parts.append(f"{n} {self.headline(n)}={metrics[key]:.4f}")
            elif any(k.startswith(f"eval_{n}_") for k in metrics):
                known = sorted(k.removeprefix(f"eval_{n}_") for k in metrics if k.startswith(f"eval_{n}_"))
                log(f"warning: tasks.{n}.metric={self.headline(n)} was not computed; available: {', '.join(known)}")
        if parts:
            log("headline: " + "; ".join(parts))

    def use_metric_split(self, split: str) -> None:
        for sub in self.subs.values():
            sub.use_metric_split(split)

    def data_summary(self) -> dict[str, dict[str, int]]:
        return {n: s.data_summary()[""] for n, s in self.subs.items()}

    def validation_predictions(self) -> dict[str, tuple[Any, Any, list[str], str]]:
        out = {}
        for n in self.names:
            head, ds = self.subs[n].head, self.datasets.get("val", {}).get(n)
            if not head.plots or ds is None:
                continue
            pred = self.trainer.predict(ds, metric_key_prefix=f"report_{n}")
            names = list(self.model.config.tasks[n]["labels"]) or ["value"]
            out[n] = (head.scores(pred.predictions[n]), pred.label_ids[n], names, head.name)
        return out

    def save_extras(self, model_dir: Path) -> None:
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(model_dir))

    @classmethod
    def smoke_recipe(cls, folder: Path, text_model: str) -> dict[str, SmokeRun]:
        """One run with a task per head of every multi-task-capable text kind (the heads share the encoder)."""
        import yaml

        tasks: dict[str, Any] = {}
        for kind in RECIPES.names():
            spec = RECIPES.get(kind).config_cls.spec
            if not spec.multitask_task or spec.modality != "text":
                continue
            for head, run in RECIPES.get(kind).smoke_recipe(folder, text_model).items():
                if not HEADS.get(head).in_multitask:
                    continue
                data = {}
                predict_input = run.predict_input
                for a in run.overrides:
                    key, _, value = a.partition("=")
                    if key.startswith("data."):
                        data[key.removeprefix("data.")] = yaml.safe_load(value)
                tasks[f"t_{head}"] = {"type": kind, "data": data}
        recipe = {
            "task": "multitask",
            "description": "smoke test: every text head on one encoder",
            "model": {"name": text_model},
            "tasks": tasks,
            "training": {"report_to": "none"},
        }
        path = folder / "multitask_smoke.yaml"
        path.write_text("# Launch: hf-tune train recipe=multitask_smoke.yaml\n" + yaml.safe_dump(recipe))
        return {"multitask": SmokeRun([f"recipe={path}"], predict_input)}

    # ---------------------------------------------------------------- saved-model entry points
    @classmethod
    def load_model(cls, model_dir: Path):
        from hf_tune.multihead import MultiHeadModel

        return MultiHeadModel.from_pretrained(str(model_dir))

    def _selected(self, task: str | None) -> list[str]:
        if task is None:
            return list(self.cfg.tasks)
        if task not in self.cfg.tasks:
            raise ConfigError([f"task={task}: not a task of this model; tasks: {', '.join(self.cfg.tasks)}"])
        return [task]

    def evaluate_saved(self, model_dir: Path, model=None, task: str | None = None) -> dict[str, Any]:
        """Each selected task evaluated by its own recipe through a view of the shared model."""
        model = (model or self.inference_model(model_dir)).eval()
        self._make_subs()
        out: dict[str, Any] = {}
        for n in self._selected(task):
            out[n] = self.subs[n].evaluate_saved(model_dir, model=TaskHeadView(model, n))
        if task is not None:
            return {"task": task, **out[task]}
        flat: dict[str, Any] = {"split": "+".join(sorted({str(r.get("split")) for r in out.values()}))}
        for n, res in out.items():
            flat.update({f"{n}_{k}": v for k, v in res.items()})
        return flat

    def predict(
        self, model_dir: Path, source: str, batch_size: int = 32, model=None, task: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Predictions of the selected task, or of every task (each row then carries ``task``)."""
        model = (model or self.inference_model(model_dir)).eval()
        self._make_subs()
        for n in self._selected(task):
            for row in self.subs[n].predict(model_dir, source, batch_size, model=TaskHeadView(model, n)):
                yield row if task is not None else {"task": n, **row}
