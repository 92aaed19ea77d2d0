"""Multi-task recipe: several tasks, one shared encoder (MultiHeadModel), trained together by Trainer.

Each task reuses its single-task recipe for everything task-specific: data loading and splitting,
windows and span decoding for tagging, metrics and prediction output. This recipe adds what is shared:
one encoder with a head per task, the task mixture and sampler, loss weighting, per-task metrics
(``eval_<task>_<metric>``) and the multi-task save/evaluate/predict entry points.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hf_tune.config import ConfigError, MultitaskConfig, from_mapping
from hf_tune.data.images import DataError
from hf_tune.recipes.base import RECIPES, Recipe, log

HEADLINE_METRICS = {
    "token_classification": "span_f1_micro",
    "text_classification": "f1_macro",
    "image_classification": "accuracy",
}


def head_type(sub: Recipe) -> str:
    """The MultiHeadModel head a single-task recipe's data calls for."""
    d = sub.cfg.data
    if sub.task == "token_classification":
        return "token" if d.scheme == "bio" else "token_multilabel"
    if sub.task == "text_classification":
        return "regression" if d.regression else "sequence_multilabel" if d.multi_label else "sequence"
    return "sequence"


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
    """Pads a (possibly mixed) batch: inputs together, labels grouped as ``{task: tensor}`` in batch order.

    Token labels are padded to the batch's padded length with -100 (rows of -100 for multi-label tags);
    only input_ids/attention_mask travel (single-segment text, so token_type_ids are all zero anyway).
    """

    def __init__(self, names: list[str], heads: list[str], tokenizer=None) -> None:
        self.names, self.heads, self.tokenizer = names, heads, tokenizer

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
                self.names[k]: self._labels(
                    [f["labels"] for f, t in zip(features, task_ids, strict=True) if t == k], self.heads[k], length
                )
                for k in sorted(set(task_ids))
            }
        return batch

    @staticmethod
    def _labels(rows: list, head: str, length: int) -> torch.Tensor:
        if head == "token":
            out = torch.full((len(rows), length), -100, dtype=torch.long)
            for i, r in enumerate(rows):
                out[i, : len(r)] = torch.as_tensor(r)
            return out
        if head == "token_multilabel":
            k = np.asarray(rows[0]).shape[1]
            out = torch.full((len(rows), length, k), -100.0)
            for i, r in enumerate(rows):
                out[i, : len(r)] = torch.as_tensor(np.asarray(r, dtype=np.float32))
            return out
        if head == "sequence":
            return torch.as_tensor(np.asarray(rows), dtype=torch.long)
        return torch.as_tensor(np.asarray(rows, dtype=np.float32))


@RECIPES.register("multitask")
class MultitaskRecipe(Recipe):
    task = "multitask"
    cfg: MultitaskConfig

    # ---------------------------------------------------------------- sub-recipes
    def _sub_config(self, name: str):
        """The single-task config of task ``name``: its data and loss, the shared encoder's name."""
        t, m = self.cfg.tasks[name], self.cfg.model
        model: dict[str, Any] = {"name": m.name}
        if t.type == "image_classification":
            model |= {"pretrained": m.pretrained, "in_chans": m.in_chans, "image_size": m.image_size}
        mapping = {
            "task": t.type,
            "recipe": f"{self.cfg.recipe}.{name}",
            "model": model,
            "data": dict(t.data),
            "techniques": {"loss": dataclasses.asdict(t.loss)},
            "training": {"output_dir": str(self.output_dir / name)},
        }
        return from_mapping(mapping, source=f"tasks.{name}")

    def _make_subs(self) -> None:
        from hf_tune.recipes import RECIPES as ALL

        self.names = list(self.cfg.tasks)
        self.subs = {n: ALL.get(self.cfg.tasks[n].type)(self._sub_config(n)) for n in self.names}

    def headline(self, name: str) -> str:
        """The metric that summarises task ``name`` (tasks.NAME.metric, else its recipe kind's usual one)."""
        t = self.cfg.tasks[name]
        return t.metric or HEADLINE_METRICS[t.type]

    # ---------------------------------------------------------------- data
    def _setup_data(self) -> None:
        self._make_subs()
        for n, sub in self.subs.items():
            log(f"task {n} ({self.cfg.tasks[n].type}):")
            sub._setup_data()
        self.tokenizer = next((getattr(s, "tokenizer", None) for s in self.subs.values()), None)
        if any(self.cfg.tasks[n].type == "image_classification" for n in self.names):
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
    def _setup_model(self) -> None:
        from hf_tune.multihead import MultiHeadModel

        m = self.cfg.model
        tasks = {
            n: {
                "head": head_type(sub),
                "labels": list(sub.label_names),
                "loss_weight": self.cfg.tasks[n].loss_weight,
            }
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
        for n, sub in self.subs.items():
            if kind == "image":
                sub.build_datasets(enc_cfg["pretrained_cfg"])
            self.model.set_task_loss(n, sub._loss_fn())
        self._task_datasets()
        total = sum(p.numel() for p in self.model.parameters())
        heads = {n: t["head"] for n, t in tasks.items()}
        log(f"MultiHeadModel: {kind} encoder {m.name}, heads {heads}, {total:,} parameters")

    def _build_encoder(self) -> tuple[str, nn.Module, dict[str, Any]]:
        from transformers import AutoModel

        from hf_tune.modeling import GRAY_MEAN_STD, load_pretrained

        m = self.cfg.model
        if self.tokenizer is not None:
            encoder = load_pretrained(AutoModel, m.name)
            return "text", encoder, encoder.config.to_dict()
        import timm

        from hf_tune.data.images import pretrained_cfg

        model_args = {"in_chans": m.in_chans, "drop_rate": m.drop_rate}
        encoder = timm.create_model(m.name, pretrained=m.pretrained, num_classes=0, **model_args)
        mean, std = (
            (tuple(encoder.pretrained_cfg["mean"]), tuple(encoder.pretrained_cfg["std"]))
            if m.pretrained
            else GRAY_MEAN_STD
        )
        cfg = {
            "architecture": m.name,
            "model_args": model_args,
            "num_features": encoder.num_features,
            "pretrained_cfg": pretrained_cfg(m.image_size, m.in_chans, mean, std),
        }
        return "image", encoder, cfg

    def _loss_fn(self):
        return None  # per-task losses live in the model (set_task_loss); the trainer records them

    # ---------------------------------------------------------------- trainer pieces
    def _setup_trainer(self) -> None:
        super()._setup_trainer()
        from hf_tune.callbacks import DwaCallback

        if self.cfg.multitask.weighting == "dwa":
            mt = self.cfg.multitask
            self.trainer.add_callback(DwaCallback(self._meter, self.names, mt.dwa_interval, mt.dwa_temperature))

    def trainer_extras(self) -> dict[str, Any]:
        from hf_tune.multitask import TaskLossMeter, TaskSampler, sampling_probabilities

        mt = self.cfg.multitask
        sizes = self.datasets["train"].sizes
        probs = sampling_probabilities(mt.sampling, sizes, mt.temperature)
        log(
            "task sampling "
            + mt.sampling
            + ": "
            + ", ".join(f"{n}={p:.3f}" for n, p in zip(self.names, probs, strict=True))
        )
        self._meter = TaskLossMeter(self.names)
        sampler = TaskSampler(
            sizes,
            probs,
            round_robin_batch=self.args.per_device_train_batch_size if mt.sampling == "round_robin" else None,
            seed=int(self.args.seed),
            epoch_size=mt.epoch_size,
        )
        return {"train_sampler": sampler, "task_meter": self._meter, "pcgrad": mt.pcgrad}

    def data_collator(self):
        heads = [self.model.config.tasks[n]["head"] for n in self.names]
        return MultiTaskCollator(self.names, heads, self.tokenizer)

    def processing_class(self):
        return self.tokenizer

    def preprocess_logits(self):
        def reduce(logits, labels):
            return {
                n: self.subs[n]._reduce_logits(v, None) if self.cfg.tasks[n].type == "token_classification" else v
                for n, v in logits.items()
            }

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
        return {n: {k: len(v) for k, v in s.datasets.items() if hasattr(v, "__len__")} for n, s in self.subs.items()}

    def validation_predictions(self) -> dict[str, tuple[Any, Any, list[str], str]]:
        from hf_tune.recipes.base import scores_from_logits

        out = {}
        for n in self.names:
            kind, ds = self.subs[n].score_kind(), self.datasets.get("val", {}).get(n)
            if kind is None or ds is None:
                continue
            pred = self.trainer.predict(ds, metric_key_prefix=f"report_{n}")
            names = list(self.model.config.tasks[n]["labels"]) or ["value"]
            out[n] = (scores_from_logits(pred.predictions[n], kind), pred.label_ids[n], names, kind)
        return out

    def _save_extras(self, model_dir: Path) -> None:
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(model_dir))

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
        model = (model or self.load_model(model_dir)).eval()
        self._make_subs()
        out: dict[str, Any] = {}
        for n in self._selected(task):
            res = self.subs[n].evaluate_saved(model_dir, model=TaskHeadView(model, n))
            out[n] = res
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
        model = (model or self.load_model(model_dir)).eval()
        self._make_subs()
        names = self._selected(task)
        for n in names:
            for row in self.subs[n].predict(model_dir, source, batch_size, model=TaskHeadView(model, n)):
                yield row if task is not None else {"task": n, **row}
