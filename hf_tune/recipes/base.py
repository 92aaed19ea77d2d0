"""The Recipe life cycle shared by every recipe kind: a Recipe *has* a Trainer (composition).

``setup`` -> ``train`` -> ``evaluate`` -> ``save`` -> ``cleanup``. Subclasses supply the task parts
(data, model, metrics, collator, prediction) through a handful of small methods.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hf_tune.heads import Head
from hf_tune.registry import Registry
from hf_tune.schema import FINAL_MODEL_DIR, BaseConfig, ConfigError, launch_errors, save_config
from hf_tune.techniques import log

METRICS_FILE = "metrics.json"

RECIPES: Registry[type[Recipe]] = Registry("recipe kind (task)")


def register_kind(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: register a recipe class under its config's ``spec.name`` (the ``task:`` value)."""
    return RECIPES.add(cls.config_cls.spec.name, cls)


def checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def check_output_dir(output_dir: Path, *, resume: bool, overwrite: bool) -> Path | None:
    """Refuse to clobber finished or interrupted runs; return the checkpoint to resume from, if any.

    A finished run has ``model/``; an interrupted one has only ``checkpoint-*`` folders.
    """
    finished = (output_dir / FINAL_MODEL_DIR).is_dir()
    ckpts = checkpoints(output_dir)
    if overwrite:
        return None
    if resume:
        if not ckpts:
            raise ConfigError(
                [
                    f"resume=true: no checkpoint-* folder in {output_dir} to resume from; "
                    f"drop resume=true to start a new run"
                ]
            )
        return ckpts[-1]
    if finished:
        raise ConfigError(
            [
                f"training.output_dir={output_dir} already holds a finished run ({FINAL_MODEL_DIR}/); "
                f"choose another training.output_dir, or pass overwrite=true to replace it"
            ]
        )
    if ckpts:
        raise ConfigError(
            [
                f"training.output_dir={output_dir} holds an interrupted run ({ckpts[-1].name}); pass "
                f"resume=true to continue it, or overwrite=true to start over"
            ]
        )
    return None


def clear_run(output_dir: Path) -> None:
    """Remove what an earlier run wrote (only the folders hf_tune/Trainer create)."""
    for p in [*checkpoints(output_dir), output_dir / FINAL_MODEL_DIR]:
        if p.is_dir():
            shutil.rmtree(p)


def use_cpu_backend_for_multiprocess() -> bool:
    """More processes than GPUs (none, or fewer than WORLD_SIZE): ask accelerate for CPU DDP over gloo.

    accelerate only picks its MULTI_CPU mode when told ``cpu``; its own MULTI_CPU launcher needs mpirun,
    so ``accelerate_configs/cpu_ddp.yaml`` uses the torchrun launcher and this fills in the rest.
    """
    import os

    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if world > 1 and world > gpus:  # e.g. cpu_ddp.yaml's 2 processes on a 1-GPU machine
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
        return True
    return False


@dataclass
class SmokeRun:
    """A seconds-long run of a kind: ``hf-tune train`` arguments and an input for ``hf-tune predict``."""

    overrides: list[str]
    predict_input: Path


class Recipe:
    """Base class of every recipe kind. A kind subclasses it, sets ``config_cls`` (whose ``spec`` says what the
    kind is) and registers with ``@register_kind``; that is the whole registration.

    Hooks a kind implements: ``prepare_data``, ``build_model``, ``head``, ``train_labels``, ``compute_metrics``,
    ``load_model``, ``eval_dataset``, ``predict`` and ``smoke_recipe``; the rest have working defaults. The
    public per-task interface that multi-task recipes use is ``prepare_data``, ``head``, ``label_names``,
    ``task_loss``, ``attach_encoder``, ``datasets``, ``preprocess_logits``, ``compute_metrics``,
    ``use_metric_split``, ``evaluate_saved`` and ``predict`` (the last two take a ``model`` view).
    """

    config_cls: ClassVar[type[BaseConfig]]

    def __init__(self, cfg: BaseConfig) -> None:
        self.cfg = cfg
        self.output_dir = cfg.output_dir()
        self.trainer = None
        self.model = None
        self.datasets: dict[str, Any] = {}
        self.label_names: list[str] = []
        self._resume_from: Path | None = None
        self._unfreeze = None

    @property
    def spec(self):
        return self.config_cls.spec

    @property
    def task(self) -> str:
        return self.spec.name

    # ---------------------------------------------------------------- life cycle
    def setup(self) -> None:
        from transformers import set_seed

        self.args = self.training_args()  # first: it initialises the (possibly distributed) process state
        self._setup_output_dir()  # before loading anything: a refused output_dir must fail fast
        set_seed(self.args.seed)
        self.prepare_data()  # data before model: the label set sizes the head
        self.build_model()
        self._setup_trainer()  # last: Trainer creates the optimizer lazily from the final model

    def train(self) -> dict[str, float]:
        if self._resume_from:
            log(f"resuming from {self._resume_from}")
        result = self.trainer.train(resume_from_checkpoint=str(self._resume_from) if self._resume_from else None)
        return dict(result.metrics)

    def evaluate(self) -> dict[str, float]:
        """Metrics on val (``eval_*``) and, when there is one, test (``test_*``)."""
        metrics: dict[str, float] = {}
        for split, prefix in (("val", "eval"), ("test", "test")):
            if split in self.datasets:
                self.use_metric_split(split)
                metrics.update(self.trainer.evaluate(self.datasets[split], metric_key_prefix=prefix))
        self.use_metric_split("val")  # Trainer's own evaluations during training run on val
        return metrics

    def save(self, metrics: dict[str, Any]) -> Path:
        """Final model + resolved config + metrics + report and model card in ``output_dir/model``.

        Every rank takes part in the validation predictions for the report (Trainer gathers them);
        rank 0 writes the files.
        """
        from hf_tune.hub import DATA_SUMMARY, write_model_card
        from hf_tune.report import LOG_HISTORY, save_predictions, write_report

        final = self.output_dir / FINAL_MODEL_DIR
        if self.trainer.ema is not None and self.cfg.techniques.ema.use_for_final_model:
            self.trainer.use_ema_weights()
        if self.cfg.techniques.lora.enabled:
            self._save_lora(final)
        else:
            self.trainer.save_model(str(final))
        predictions = self.validation_predictions()
        if self.trainer.is_world_process_zero():
            self.save_extras(final)
            save_config(self.cfg, final)
            save_config(self.cfg, self.output_dir)
            text = json.dumps(metrics, indent=2, sort_keys=True)
            (final / METRICS_FILE).write_text(text)
            (self.output_dir / METRICS_FILE).write_text(text)
            (final / LOG_HISTORY).write_text(json.dumps(self.trainer.state.log_history))
            (final / DATA_SUMMARY).write_text(json.dumps(self.data_summary()))
            for name, (scores, labels, names, head) in predictions.items():
                save_predictions(final, name, scores, labels, names, head)
            write_report(final, title=self.cfg.recipe or self.task)
            write_model_card(
                self.cfg, final, metrics, self.hub_repo_id() if self.cfg.training.get("push_to_hub") else None
            )
        return final

    def cleanup(self) -> None:
        self.trainer = None

    # ---------------------------------------------------------------- report and Hub
    def data_summary(self) -> dict[str, dict[str, int]]:
        """Examples per split, for the model card (``{"": {...}}``; multi-task: one entry per task)."""
        return {"": {k: len(v) for k, v in self.datasets.items() if hasattr(v, "__len__")}}

    def validation_predictions(self) -> dict[str, tuple[Any, Any, list[str], str]]:
        """``{name: (scores, labels, class names, head name)}`` on the validation split for the report's
        curves (heads without score plots, e.g. tagging, show per-category F1 from the metrics instead)."""
        ds = self.datasets.get("val")
        if not self.head.plots or ds is None or len(ds) == 0:
            return {}
        out = self.trainer.predict(ds, metric_key_prefix="report")
        logits = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
        return {"val": (self.head.scores(logits), out.label_ids, list(self.label_names), self.head.name)}

    def hub_repo_id(self) -> str:
        return self.cfg.training.get("hub_model_id") or self.output_dir.resolve().name

    def push(self, final: Path) -> str | None:
        """Push the final model folder when ``training.push_to_hub`` is set (private unless
        ``training.hub_private_repo=false``)."""
        from hf_tune.hub import push_model

        t = self.cfg.training
        if not t.get("push_to_hub") or not self.trainer.is_world_process_zero():
            return None
        private = t.get("hub_private_repo")
        url = push_model(
            final,
            self.hub_repo_id(),
            self.cfg,
            private=True if private is None else bool(private),
            token=t.get("hub_token"),
        )
        log(f"pushed {final} to {url}")
        return url

    def _save_lora(self, final: Path) -> None:
        """The adapter in model/adapter/ and, merged into the base weights, a standard model in model/."""
        if not self.trainer.is_world_process_zero():
            return
        peft_model = self.trainer.model
        peft_model.save_pretrained(str(final / "adapter"))
        if self.cfg.techniques.lora.merge_on_save:
            peft_model.merge_and_unload().save_pretrained(str(final))
            if self.processing_class() is not None:
                self.processing_class().save_pretrained(str(final))

    # ---------------------------------------------------------------- Trainer assembly
    def _setup_output_dir(self) -> None:
        self._resume_from = check_output_dir(self.output_dir, resume=self.cfg.resume, overwrite=self.cfg.overwrite)
        state = self.args.distributed_state
        if self.cfg.overwrite and state.is_main_process:
            clear_run(self.output_dir)
        state.wait_for_everyone()

    def training_args(self, **overrides: Any):
        """TrainingArguments from ``training:``, with what hf_tune takes over from Trainer (pushing, clipping
        in the callback, its own optimizers). The user's clipping threshold stays in ``self.max_grad_norm``."""
        from transformers import TrainingArguments

        from hf_tune.techniques import hf_tune_clips

        cpu = use_cpu_backend_for_multiprocess()
        kwargs = {**self.cfg.training, "output_dir": str(self.output_dir), **overrides}
        if cpu:
            kwargs["use_cpu"] = True
        kwargs.pop("resume_from_checkpoint", None)  # hf_tune resolves resuming itself (resume=true)
        # hf_tune pushes the finished model/ folder with its card itself (Recipe.push); Trainer's own push
        # would create the repo at start-up and upload the run folder (logs, no card) at every save.
        kwargs["push_to_hub"] = False
        if self.cfg.techniques.optim.name:
            from hf_tune.optim import OPTIMIZERS

            kwargs["optim"] = OPTIMIZERS.entry(self.cfg.techniques.optim.name).meta["trainer_optim"]
        args = TrainingArguments(**kwargs)
        self.max_grad_norm = float(args.max_grad_norm)
        t = self.cfg.techniques
        if hf_tune_clips(t.clipping, t.monitor):
            args.max_grad_norm = 0.0  # GradientCallback clips once instead; Trainer still logs the norm
        return args

    def _setup_trainer(self) -> None:
        from hf_tune.callbacks import SaveResolvedConfig, route_logs_to_stderr
        from hf_tune.techniques import (
            apply_transfer_controls,
            build_ema_callback,
            build_grad_callback,
            optimizer_settings,
        )
        from hf_tune.trainer import HfTuneTrainer

        t = self.cfg.techniques
        # after the model, before Trainer builds the optimizer from it
        self.model, self._unfreeze = apply_transfer_controls(self.model, t.freeze, t.lora, self.spec.lora_task_type)
        self.trainer = HfTuneTrainer(
            model=self.model,
            args=self.args,
            train_dataset=self.datasets.get("train"),
            eval_dataset=self.datasets.get("val"),
            data_collator=self.data_collator(),
            processing_class=self.processing_class(),
            compute_metrics=self.compute_metrics,
            preprocess_logits_for_metrics=self.preprocess_logits(),
            callbacks=[SaveResolvedConfig(self.cfg)],
            loss=self.training_loss(),
            ema=build_ema_callback(t.ema, str(self._resume_from) if self._resume_from else None),
            evaluate_with_ema=t.ema.evaluate_with_ema,
            grad_monitor=build_grad_callback(t.clipping, t.monitor, self.max_grad_norm),
            **optimizer_settings(
                self.model,
                optim=t.optim,
                lr=t.lr,
                unfreezes=bool(t.freeze.unfreeze_at_steps),
                learning_rate=float(self.args.learning_rate),
                weight_decay=float(self.args.weight_decay),
            ),
            **self.trainer_extras(),
        )
        if self._unfreeze is not None:
            self.trainer.add_callback(self._unfreeze)
        route_logs_to_stderr(self.trainer)

    def trainer_extras(self) -> dict[str, Any]:
        """Further HfTuneTrainer arguments of a recipe kind (multi-task: sampler, log sources)."""
        return {}

    def training_loss(self):
        """The HfTuneTrainer loss: the task loss on the logits, or None for the model's own loss."""
        from hf_tune.trainer import LogitsLoss

        fn = self.task_loss(float(self.args.label_smoothing_factor))
        return None if fn is None else LogitsLoss(fn)

    def task_loss(self, label_smoothing: float):
        """This task's loss ``fn(logits, labels)`` from ``techniques.loss`` (focal, class weights) and label
        smoothing, or None when the model's own loss is exactly what was asked. Heads whose loss is not a
        softmax classification (multi-label, regression) use the head's loss."""
        from hf_tune.techniques import build_class_loss

        if not self.head.uses_class_loss:
            return self.head.loss
        return build_class_loss(
            self.cfg.techniques.loss,
            label_names=self.label_names,
            train_labels=self.train_labels,
            label_smoothing=label_smoothing,
        )

    # ---------------------------------------------------------------- task hooks
    @property
    def head(self) -> Head:
        """The output head this run's data calls for (see hf_tune.heads.HEADS)."""
        raise NotImplementedError

    def train_labels(self):
        """Training label ids (for class-weight statistics)."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        """Load and split ``cfg.data``; set ``label_names`` and ``datasets`` (train/val/test)."""
        raise NotImplementedError

    def build_model(self) -> None:
        raise NotImplementedError

    def attach_encoder(self, encoder_config: dict[str, Any]) -> None:
        """Called by multi-task recipes once the shared encoder exists (image kinds build their transforms
        from its data config)."""

    def save_extras(self, model_dir: Path) -> None:
        """Anything the final folder needs beyond weights+config (e.g. a tokenizer)."""

    def data_collator(self):
        return None

    def processing_class(self):
        return None

    def preprocess_logits(self):
        """Trainer's preprocess_logits_for_metrics (None: keep full logits)."""
        return None

    def use_metric_split(self, split: str) -> None:
        """Hook for recipes whose metrics need the split's raw examples (tagging: the documents)."""

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        raise NotImplementedError

    @classmethod
    def smoke_recipe(cls, folder: Path, text_model: str) -> dict[str, SmokeRun]:
        """Tiny offline data written into ``folder`` and the ``key=value`` lines that train this kind for a few
        steps (text kinds use ``text_model``, a tiny BERT folder), one per head the kind offers. The test that
        enumerates the registries trains, reports, reloads and predicts each one, so a kind without this
        fails in CI."""
        raise NotImplementedError

    # ---------------------------------------------------------------- saved-model entry points
    @classmethod
    def load_model(cls, model_dir: Path):
        raise NotImplementedError

    def eval_dataset(self, split: str, model_dir: Path) -> tuple[str, Any]:
        """Build the dataset for ``hf-tune evaluate`` from ``cfg.data``; returns (split name, dataset)."""
        raise NotImplementedError

    def evaluate_saved(self, model_dir: Path, model=None) -> dict[str, Any]:
        """Evaluate a saved model on ``cfg.data`` (used by ``hf-tune evaluate``); ``model`` replaces the one
        in ``model_dir`` (a multi-task model's view of one task)."""
        import tempfile

        from hf_tune.callbacks import route_logs_to_stderr
        from hf_tune.trainer import HfTuneTrainer

        self.model = model if model is not None else self.load_model(model_dir)
        self.label_names = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        split, ds = self.eval_dataset(getattr(self.cfg.data, "split", "auto"), model_dir)
        with tempfile.TemporaryDirectory() as tmp:
            args = self.training_args(
                output_dir=tmp,
                report_to="none",
                push_to_hub=False,
                eval_strategy="no",
                save_strategy="no",
                load_best_model_at_end=False,
            )
            trainer = HfTuneTrainer(
                model=self.model,
                args=args,
                data_collator=self.data_collator(),
                processing_class=self.processing_class(),
                compute_metrics=self.compute_metrics,
            )
            route_logs_to_stderr(trainer)
            metrics = trainer.evaluate(ds, metric_key_prefix=split)
        keep = {
            k.removeprefix(f"{split}_"): v
            for k, v in metrics.items()
            if not k.endswith(("_runtime", "_per_second", "_preparation_time", "epoch"))
        }
        return {"split": split, "num_examples": len(ds), **keep}

    def predict(self, model_dir: Path, source: str, batch_size: int = 32, model=None) -> Iterator[dict[str, Any]]:
        """Yield one JSON-able prediction per input (used by ``hf-tune predict``); ``model`` as in
        :meth:`evaluate_saved`."""
        raise NotImplementedError


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    model_dir: Path
    output_dir: Path
    is_main_process: bool
    process_index: int


def run_training(recipe: Recipe) -> TrainResult:
    """The whole life cycle, shared by ``hf-tune train`` and ``Run.fit``: launch checks, setup, train,
    evaluate, save (model, config, metrics, report, card), push when asked, and cleanup whatever happened."""
    errors = launch_errors(recipe.cfg)
    if errors:
        raise ConfigError(errors, recipe.cfg.recipe)
    try:
        recipe.setup()
        metrics = {**recipe.train(), **recipe.evaluate()}
        final = recipe.save(metrics)
        recipe.push(final)
        trainer = recipe.trainer
        return TrainResult(
            metrics, final, recipe.output_dir, trainer.is_world_process_zero(), trainer.args.process_index
        )
    finally:
        recipe.cleanup()
