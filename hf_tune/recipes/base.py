"""The Recipe life cycle shared by every recipe kind: a Recipe *has* a Trainer (composition).

``setup`` -> ``train`` -> ``evaluate`` -> ``save`` -> ``cleanup``. Subclasses supply the task parts
(data, model, metrics, collator, prediction) through a handful of small methods.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from hf_tune.config import FINAL_MODEL_DIR, BaseConfig, ConfigError, save_config
from hf_tune.registry import Registry

METRICS_FILE = "metrics.json"

RECIPES: Registry[type[Recipe]] = Registry("recipe kind (task)")


def log(msg: str) -> None:
    """Progress messages go to stderr so stdout stays machine-readable (JSON lines)."""
    print(f"[hf_tune] {msg}", file=sys.stderr, flush=True)


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


LORA_TASKS = {"token_classification": "TOKEN_CLS", "text_classification": "SEQ_CLS"}
LORA_DEFAULT_TARGETS = ["query", "key", "value", "dense"]


def wrap_lora(model, *, r: int, alpha: int, dropout: float, target_modules: list[str] | None, task: str):
    """peft LoRA on the attention/FFN projections; the task head stays fully trainable (modules_to_save)."""
    from peft import LoraConfig, TaskType, get_peft_model

    from hf_tune.optim import head_parameter_names

    heads = sorted({n.rsplit(".", 1)[0] for n in head_parameter_names(model)})  # e.g. classifier, timm_model.fc
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules or LORA_DEFAULT_TARGETS,
        modules_to_save=heads or None,
        task_type=getattr(TaskType, LORA_TASKS[task]) if task in LORA_TASKS else None,
    )
    wrapped = get_peft_model(model, cfg)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapped.parameters())
    log(f"LoRA r={r}: {trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)")
    return wrapped


def scores_from_logits(logits, kind: str):
    """Probabilities (softmax for single-label, sigmoid for multi-label) or raw values for regression."""
    import numpy as np

    from hf_tune.metrics import softmax

    x = np.asarray(logits, dtype=np.float64)
    if kind == "single":
        return softmax(x)
    if kind == "multilabel":
        return 1.0 / (1.0 + np.exp(-x))
    return x.reshape(len(x), -1)[:, 0] if x.ndim > 1 and x.shape[-1] == 1 else x


class Recipe:
    """Base class; subclasses register with ``@RECIPES.register("<task>")``."""

    task: ClassVar[str] = ""
    pipeline_task: ClassVar[str | None] = None

    def __init__(self, cfg: BaseConfig) -> None:
        self.cfg = cfg
        self.output_dir = cfg.output_dir()
        self.trainer = None
        self.model = None
        self.datasets: dict[str, Any] = {}
        self.label_names: list[str] = []
        self._resume_from: Path | None = None

    # ---------------------------------------------------------------- life cycle
    def setup(self) -> None:
        from transformers import set_seed

        self.args = self.training_args()  # first: it initialises the (possibly distributed) process state
        self._setup_output_dir()  # before loading anything: a refused output_dir must fail fast
        set_seed(int(self.cfg.training.get("seed", 42)))
        self._setup_data()  # data before model: the label set sizes the head
        self._setup_model()
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

    def use_metric_split(self, split: str) -> None:
        """Hook for recipes whose metrics need the split's raw examples (tagging: the documents)."""

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
            self._save_extras(final)
            save_config(self.cfg, final)
            save_config(self.cfg, self.output_dir)
            text = json.dumps(metrics, indent=2, sort_keys=True)
            (final / METRICS_FILE).write_text(text)
            (self.output_dir / METRICS_FILE).write_text(text)
            (final / LOG_HISTORY).write_text(json.dumps(self.trainer.state.log_history))
            (final / DATA_SUMMARY).write_text(json.dumps(self.data_summary()))
            for name, (scores, labels, names, kind) in predictions.items():
                save_predictions(final, name, scores, labels, names, kind)
            write_report(final, title=self.cfg.recipe or self.task)
            write_model_card(
                self.cfg, final, metrics, self.hub_repo_id() if self.cfg.training.get("push_to_hub") else None
            )
        return final

    # ---------------------------------------------------------------- report and Hub
    def data_summary(self) -> dict[str, dict[str, int]]:
        """Examples per split, for the model card (``{"": {...}}``; multi-task: one entry per task)."""
        return {"": {k: len(v) for k, v in self.datasets.items() if hasattr(v, "__len__")}}

    def score_kind(self) -> str | None:
        """How validation logits become report curves: single (softmax), multilabel (sigmoid), regression,
        or None (no curves; e.g. tagging, whose report shows per-category F1)."""
        return "single"

    def validation_predictions(self) -> dict[str, tuple[Any, Any, list[str], str]]:
        """``{name: (scores, labels, class names, kind)}`` on the validation split for the report."""
        kind, ds = self.score_kind(), self.datasets.get("val")
        if kind is None or ds is None or len(ds) == 0:
            return {}
        out = self.trainer.predict(ds, metric_key_prefix="report")
        logits = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
        return {"val": (scores_from_logits(logits, kind), out.label_ids, list(self.label_names), kind)}

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
            final, self.hub_repo_id(), private=True if private is None else bool(private), token=t.get("hub_token")
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

    def cleanup(self) -> None:
        self.trainer = None

    # ---------------------------------------------------------------- helpers
    def _setup_output_dir(self) -> None:
        self._resume_from = check_output_dir(self.output_dir, resume=self.cfg.resume, overwrite=self.cfg.overwrite)
        state = self.args.distributed_state
        if self.cfg.overwrite and state.is_main_process:
            clear_run(self.output_dir)
        state.wait_for_everyone()

    def training_args(self, **overrides: Any):
        from transformers import TrainingArguments

        cpu = use_cpu_backend_for_multiprocess()
        kwargs = {**self.cfg.training, "output_dir": str(self.output_dir), **overrides}
        if cpu:
            kwargs["use_cpu"] = True
        kwargs.pop("resume_from_checkpoint", None)  # hf_tune resolves resuming itself (resume=true)
        # hf_tune pushes the finished model/ folder with its card itself (Recipe.push); Trainer's own push
        # would create the repo at start-up and upload the run folder (logs, no card) at every save.
        kwargs["push_to_hub"] = False
        if self.hf_tune_clips():
            kwargs["max_grad_norm"] = 0.0  # GradientCallback clips once instead; Trainer still logs the norm
        if self.cfg.techniques.optim.name:
            from hf_tune.optim import OPTIMIZERS

            kwargs["optim"] = OPTIMIZERS.entry(self.cfg.techniques.optim.name).meta["trainer_optim"]
        return TrainingArguments(**kwargs)

    def hf_tune_clips(self) -> bool:
        """Clipping moves from Trainer to GradientCallback for non-norm modes or per-block monitoring."""
        t = self.cfg.techniques
        return t.clipping.mode != "norm" or t.monitor.grad_norms

    def _setup_trainer(self) -> None:
        from hf_tune.callbacks import SaveResolvedConfig, route_logs_to_stderr
        from hf_tune.trainer import HfTuneTrainer

        self._apply_transfer_controls()  # after the model, before Trainer builds the optimizer from it
        opt = self._optimizer_settings()
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
            loss_fn=self._loss_fn(),
            ema=self._ema_callback(),
            evaluate_with_ema=self.cfg.techniques.ema.evaluate_with_ema,
            grad_monitor=self._grad_callback(),
            **opt,
            **self.trainer_extras(),
        )
        if self._unfreeze is not None:
            self.trainer.add_callback(self._unfreeze)
        route_logs_to_stderr(self.trainer)

    def trainer_extras(self) -> dict[str, Any]:
        """Further HfTuneTrainer arguments of a recipe kind (multi-task: sampler, loss meter, PCGrad)."""
        return {}

    def _grad_callback(self):
        from hf_tune.callbacks import GradientCallback

        t = self.cfg.techniques
        c, m = t.clipping, t.monitor
        if not (self.hf_tune_clips() or m.skip_nonfinite):
            return None
        return GradientCallback(
            mode=c.mode,
            max_norm=float(self.cfg.training.get("max_grad_norm", 1.0)),
            value=c.value,
            agc_factor=c.agc_factor,
            agc_eps=c.agc_eps,
            auto_percentile=c.auto_percentile,
            auto_window=c.auto_window,
            auto_min_history=c.auto_min_history,
            monitor=m.grad_norms,
            depth=m.depth,
            skip_nonfinite=m.skip_nonfinite,
            max_nonfinite_in_a_row=m.max_nonfinite_in_a_row,
            plot=m.plot,
            clip=self.hf_tune_clips(),
        )

    def _apply_transfer_controls(self) -> None:
        """Freeze blocks (recording them for gradual unfreezing) and/or wrap the model with LoRA."""
        from hf_tune.callbacks import UnfreezeCallback
        from hf_tune.optim import assign_block_ids, head_parameter_names

        f, lora = self.cfg.techniques.freeze, self.cfg.techniques.lora
        self._unfreeze = None
        if lora.enabled:
            self.model = wrap_lora(
                self.model,
                r=lora.r,
                alpha=lora.alpha,
                dropout=lora.dropout,
                target_modules=lora.target_modules,
                task=self.task,
            )
            return
        if not (f.embeddings or f.first_n_blocks):
            return
        named = list(self.model.named_parameters())
        ids, n_blocks = assign_block_ids([n for n, _ in named], head_parameter_names(self.model))
        top = min(f.first_n_blocks, n_blocks)
        blocks = [[p for n, p in named if ids[n] == b] for b in range(top + 1)]  # 0 = embeddings/stem
        for params in blocks:
            for p in params:
                p.requires_grad_(False)
        frozen = sum(p.numel() for params in blocks for p in params)
        log(f"frozen: embeddings/stem + {top} of {n_blocks} blocks ({frozen:,} parameters)")
        if f.unfreeze_at_steps:
            self._unfreeze = UnfreezeCallback(blocks, f.unfreeze_at_steps)

    def _optimizer_settings(self) -> dict[str, Any]:
        """HfTuneTrainer kwargs for parameter groups, optimizer hyperparameters and extra schedules."""
        from hf_tune.optim import OPTIMIZERS, head_parameter_names, param_groups

        t = self.cfg.techniques
        out: dict[str, Any] = {}
        if t.optim.name:
            entry = OPTIMIZERS.entry(t.optim.name)
            out["optimizer_kwargs"] = entry.obj(t.optim)
            out["optimizer_cls"] = entry.meta.get("cls")
        if t.lr.layer_decay is not None or t.lr.backbone_lr is not None or t.freeze.unfreeze_at_steps:
            head = head_parameter_names(self.model)
            lr, wd = float(self.args.learning_rate), float(self.args.weight_decay)
            out["param_groups_fn"] = lambda m: param_groups(
                m.named_parameters(),
                head,
                lr=lr,
                weight_decay=wd,
                layer_decay=t.lr.layer_decay,
                backbone_lr=t.lr.backbone_lr,
                no_decay_bias_norm=t.lr.no_decay_bias_norm,
            )
        if t.optim.schedule:
            o = t.optim
            out["schedule"] = (
                o.schedule,
                {
                    "step_size": o.step_size,
                    "gamma": o.gamma,
                    "milestones": o.milestones,
                    "restart_period": o.restart_period,
                    "restart_mult": o.restart_mult,
                    "min_lr_ratio": o.min_lr_ratio,
                },
            )
        return out

    def _ema_callback(self):
        from hf_tune.callbacks import EmaCallback

        e = self.cfg.techniques.ema
        if not e.enabled:
            return None
        return EmaCallback(e.decay, e.warmup, str(self._resume_from) if self._resume_from else None)

    def _loss_fn(self):
        from hf_tune.losses import balanced_class_weights, build_loss

        lc = self.cfg.techniques.loss
        weights = lc.class_weights
        if weights == "balanced":
            weights = balanced_class_weights(self.train_labels(), len(self.label_names))
            log(f"class weights (balanced): {[round(w, 3) for w in weights]}")
        elif weights is not None and len(weights) != len(self.label_names):
            raise ConfigError(
                [
                    f"techniques.loss.class_weights has {len(weights)} values for "
                    f"{len(self.label_names)} classes {self.label_names}"
                ]
            )
        return build_loss(
            lc.name,
            focal_gamma=lc.focal_gamma,
            focal_alpha=lc.focal_alpha,
            class_weights=weights,
            label_smoothing=float(self.cfg.training.get("label_smoothing_factor", 0.0)),
        )

    # ---------------------------------------------------------------- task hooks
    def train_labels(self):
        """Training label ids (for class-weight statistics)."""
        raise NotImplementedError

    def _setup_data(self) -> None:
        raise NotImplementedError

    def _setup_model(self) -> None:
        raise NotImplementedError

    def _save_extras(self, model_dir: Path) -> None:
        """Anything the final folder needs beyond weights+config (e.g. a tokenizer)."""

    def data_collator(self):
        return None

    def processing_class(self):
        return None

    def preprocess_logits(self):
        """Trainer's preprocess_logits_for_metrics (None: keep full logits)."""
        return None

    def compute_metrics(self, eval_pred) -> dict[str, float]:
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
