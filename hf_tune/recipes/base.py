"""The Recipe life cycle shared by every recipe kind: a Recipe *has* a Trainer (composition).

``setup`` -> ``train`` -> ``evaluate`` -> ``save`` -> ``cleanup``. Subclasses supply the task parts
(data, model, metrics, collator, prediction) through a handful of small methods.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hf_tune.heads import Head
from hf_tune.registry import Registry
from hf_tune.schema import (
    COMPLETE_MARK,
    FINAL_MODEL_DIR,
    RESOLVED_CONFIG_NAME,
    SECRET_TRAINING_KEYS,
    BaseConfig,
    ConfigError,
    launch_errors,
    save_config,
)
from hf_tune.techniques import log

METRICS_FILE = "metrics.json"

RECIPES: Registry[type[Recipe]] = Registry("recipe kind (task)")


def register_kind(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: register a recipe class under its config's ``spec.name`` (the ``task:`` value)."""
    return RECIPES.add(cls.config_cls.spec.name, cls)


def checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoints whose save finished: marked complete (COMPLETE_MARK), or, for runs written before the mark
    existed (no checkpoint has one), holding Trainer's trainer_state.json, which Trainer writes last."""
    found = checkpoints(output_dir)
    if any((p / COMPLETE_MARK).is_file() for p in found):
        return [p for p in found if (p / COMPLETE_MARK).is_file()]
    return [p for p in found if (p / "trainer_state.json").is_file()]


def finished(output_dir: Path) -> bool:
    """The final save completed: model/ holds its metrics.json, written after the weights and config."""
    return (output_dir / FINAL_MODEL_DIR / METRICS_FILE).is_file()


def set_aside_partial_checkpoints(output_dir: Path) -> list[str]:
    """Rename checkpoint folders newer than the last complete one (a save that was killed) to
    ``checkpoint-N.partial`` so neither resume nor Trainer's rotation picks them; nothing is deleted."""
    done = complete_checkpoints(output_dir)
    last = int(done[-1].name.split("-")[-1]) if done else -1
    moved = []
    for p in checkpoints(output_dir):
        if p not in done and int(p.name.split("-")[-1]) > last:
            target = p.with_name(f"{p.name}.partial")
            if target.exists():
                shutil.rmtree(target)
            p.rename(target)
            moved.append(p.name)
    if moved:
        log(f"skipped incomplete {', '.join(moved)} (a save that did not finish; kept as *.partial)")
    return moved


def check_output_dir(output_dir: Path, *, resume: bool, overwrite: bool) -> Path | None:
    """Refuse to clobber finished or interrupted runs; return the checkpoint to resume from, if any.

    A finished run has ``model/``; an interrupted one has only ``checkpoint-*`` folders.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError([f"training.output_dir={output_dir} is a file, not a folder: choose another output_dir"])
    done = finished(output_dir)
    ckpts = complete_checkpoints(output_dir)
    if overwrite:
        return None
    if resume:
        if not ckpts:
            partial = [p.name for p in checkpoints(output_dir)]
            why = f" (only {', '.join(partial)}, whose save did not finish)" if partial else ""
            raise ConfigError(
                [
                    f"resume=true: no complete checkpoint-* folder in {output_dir} to resume from{why}; "
                    f"drop resume=true to start a new run (overwrite=true if the folder is in use)"
                ]
            )
        return ckpts[-1]
    if done:
        raise ConfigError(
            [
                f"training.output_dir={output_dir} already holds a finished run ({FINAL_MODEL_DIR}/); "
                f"choose another training.output_dir, or pass overwrite=true to replace it"
            ]
        )
    if ckpts:
        final = " (its final save did not finish)" if (output_dir / FINAL_MODEL_DIR).is_dir() else ""
        raise ConfigError(
            [
                f"training.output_dir={output_dir} holds an interrupted run{final} ({ckpts[-1].name}); pass "
                f"resume=true to continue it, or overwrite=true to start over"
            ]
        )
    return None


RESUME_FIXED_SECTIONS = ("task", "model")
"""What a resumed run may not change: the checkpoint's weights and optimizer state belong to that model."""


def resume_conflicts(checkpoint: Path, cfg: BaseConfig) -> list[str]:
    """Keys of ``task``/``model`` whose value differs from the checkpoint's resolved config, each as an error
    (keys the checkpoint's config does not have, from an older hf_tune, are not compared)."""
    import yaml

    from hf_tune.schema import to_dict

    saved_file = checkpoint / RESOLVED_CONFIG_NAME
    if not saved_file.is_file():  # checkpoints written by Trainer alone (older runs): nothing to compare
        return []
    saved, now = yaml.safe_load(saved_file.read_text()) or {}, to_dict(cfg)
    errors = []
    for section in RESUME_FIXED_SECTIONS:
        a, b = saved.get(section), now.get(section)
        pairs = (
            [(section, a, b)]
            if not isinstance(b, dict)
            else [(f"{section}.{k}", a[k], v) for k, v in b.items() if isinstance(a, dict) and k in a]
        )
        for key, old, new in pairs:
            if old != new:
                errors.append(
                    f"resume=true: {key}={new!r} differs from {checkpoint.name}'s {old!r}; a resumed run continues "
                    f"that model: drop the override, or start a new run (another training.output_dir)"
                )
    return errors


REPLACED_DIR = ".replaced_run"
"""Where ``overwrite=true`` keeps the old run until the new one has saved something (output_dir/REPLACED_DIR)."""


def old_run_parts(output_dir: Path) -> list[Path]:
    """What an earlier hf_tune run wrote in ``output_dir``: its checkpoints and model/ (each marked by a
    resolved config) and its top-level metrics and config. Raises when a checkpoint-*/model folder was not
    written by hf_tune: overwrite=true never touches what it cannot recognise."""
    partial = sorted(p for p in output_dir.glob("checkpoint-*.partial") if p.is_dir())
    folders = [p for p in [*checkpoints(output_dir), *partial, output_dir / FINAL_MODEL_DIR] if p.is_dir()]
    # a save killed half-way has Trainer's training_args.bin but not yet the resolved config
    foreign = [
        str(p) for p in folders if not (p / RESOLVED_CONFIG_NAME).is_file() and not (p / "training_args.bin").is_file()
    ]
    if foreign:
        raise ConfigError(
            [
                f"overwrite=true: {', '.join(foreign)} was not written by hf_tune (no {RESOLVED_CONFIG_NAME}); "
                f"move it out of training.output_dir={output_dir} or choose another output_dir"
            ]
        )
    files = [output_dir / n for n in (METRICS_FILE, RESOLVED_CONFIG_NAME) if (output_dir / n).is_file()]
    return folders + files


def set_aside_run(output_dir: Path) -> Path | None:
    """Move an earlier run's parts into output_dir/.replaced_run (a rename, nothing deleted yet)."""
    parts = old_run_parts(output_dir)
    if not parts:
        return None
    aside = output_dir / REPLACED_DIR
    if aside.exists():
        shutil.rmtree(aside)  # left by an earlier overwrite that saved; restore_run handles the other case
    aside.mkdir()
    for part in parts:
        part.rename(aside / part.name)
    return aside


def restore_run(output_dir: Path) -> bool:
    """Put a set-aside run back when the run that replaced it saved nothing (it failed or was killed first)."""
    aside = output_dir / REPLACED_DIR
    if not aside.is_dir() or checkpoints(output_dir) or (output_dir / FINAL_MODEL_DIR).exists():
        return False
    for part in aside.iterdir():
        if not (output_dir / part.name).exists():
            part.rename(output_dir / part.name)
    shutil.rmtree(aside, ignore_errors=True)
    return True


def discard_replaced_run(output_dir: Path) -> None:
    """The new run has saved a checkpoint or its model: the old run it replaces can go."""
    aside = output_dir / REPLACED_DIR
    if aside.is_dir():
        shutil.rmtree(aside)
        log(f"overwrite=true: the earlier run in {output_dir} is replaced")


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
    training_defaults: ClassVar[dict[str, Any]] = {}
    """TrainingArguments values this kind prefers to Trainer's own defaults; a recipe's ``training:`` wins.
    Text kinds group batches by length (``train_sampling_strategy=group_by_length``, see hf_tune.data.batching)."""

    def __init__(self, cfg: BaseConfig) -> None:
        self.cfg = cfg
        self.output_dir = cfg.output_dir()
        self.trainer = None
        self.model = None
        self.datasets: dict[str, Any] = {}
        self.label_names: list[str] = []
        self._resume_from: Path | None = None
        self._unfreeze = None
        self._started = time.monotonic()  # speed.train_minutes counts from here

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
        if self.cfg.speed.train_minutes is not None and self.args.max_steps > 0:
            log(f"speed.train_minutes is not applied: training.max_steps={self.args.max_steps} fixes the length")
        elif self.cfg.speed.train_minutes is not None:  # only kinds with KindSpec.time_budget get here
            self.fit_time_budget(self.cfg.speed.train_minutes * 60 - (time.monotonic() - self._started))
        self._setup_trainer()  # last: Trainer creates the optimizer lazily from the final model
        self._set_aside_old_run()  # only now: every check that can fail before training has passed

    def fit_time_budget(self, seconds_left: float) -> None:
        """Set ``self.args.num_train_epochs`` to what fits in ``seconds_left`` (``speed.train_minutes`` less
        the time since the recipe was built), at most the configured epochs; a resumed run keeps the epochs its
        checkpoint was planned with (see :func:`planned_epochs`). Kinds that declare ``KindSpec.time_budget``
        implement it."""
        raise NotImplementedError(f"{self.task} does not fit its training to a time budget")

    def train(self) -> dict[str, float]:
        if self._resume_from:
            log(f"resuming from {self._resume_from}")
            if 0 < self.args.max_steps <= int(self._resume_from.name.split("-")[-1]):
                return self._finish_from(self._resume_from)
        result = self.trainer.train(resume_from_checkpoint=str(self._resume_from) if self._resume_from else None)
        if self._stop.received is not None:
            from hf_tune.errors import Interrupted

            step = self.trainer.state.global_step
            raise Interrupted(
                f"training stopped by {self._stop.received} at step {step}; {self.output_dir / f'checkpoint-{step}'} "
                f"is saved. Continue with the same command plus resume=true",
                self._stop.received,
            )
        return dict(result.metrics)

    def _finish_from(self, checkpoint: Path) -> dict[str, float]:
        """Resume from a checkpoint taken at training.max_steps (the run was killed during its final save):
        nothing is left to train. Trainer would still take one more optimizer step when that step falls inside
        an epoch (it checks max_steps only after a step), so the checkpoint's weights and state are restored
        and the callbacks see a training of no steps (EMA/SWA weights come back as in the uninterrupted run)."""
        from transformers import TrainerState

        t = self.trainer
        log(f"{checkpoint.name} is at training.max_steps={self.args.max_steps}: nothing left to train")
        t._load_from_checkpoint(str(checkpoint))
        t.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
        t.control = t.callback_handler.on_train_begin(t.args, t.state, t.control)
        t.control = t.callback_handler.on_train_end(t.args, t.state, t.control)
        return {}

    def evaluate(self) -> dict[str, float]:
        """Metrics on val (``eval_*``) and, when there is one, test (``test_*``)."""
        metrics: dict[str, Any] = {}
        if self.cfg.techniques.calibration.enabled:  # first: it changes the output layer the metrics then measure
            from hf_tune.calibration import calibrate

            metrics["calibration"] = calibrate(self)
        for split, prefix in (("val", "eval"), ("test", "test")):
            if split in self.datasets:
                self.use_metric_split(split)
                metrics.update(self.trainer.evaluate(self.datasets[split], metric_key_prefix=prefix))
        self.use_metric_split("val")  # Trainer's own evaluations during training run on val
        return metrics

    def use_final_weights(self) -> None:
        """Load the weights the final model keeps into the model: the EMA weights when
        ``techniques.ema.use_for_final_model``, else the live ones as they are. Idempotent; a kind whose
        evaluation tunes settings on the weights (clause_extraction) calls it first."""
        if self.trainer.ema is not None and self.cfg.techniques.ema.use_for_final_model:
            self.trainer.use_ema_weights()

    def save(self, metrics: dict[str, Any]) -> Path:
        """Final model + resolved config + metrics + report and model card in ``output_dir/model``.

        Every rank takes part in the validation predictions for the report (Trainer gathers them);
        rank 0 writes the files.
        """
        from hf_tune.hub import DATA_SUMMARY, write_model_card
        from hf_tune.report import LOG_HISTORY, save_predictions, write_report

        final = self.output_dir / FINAL_MODEL_DIR
        self.use_final_weights()
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
            discard_replaced_run(self.output_dir)
            write_report(final, title=self.cfg.recipe or self.task)
            write_model_card(
                self.cfg, final, metrics, self.hub_repo_id() if self.cfg.training.get("push_to_hub") else None
            )
        return final

    def cleanup(self) -> None:
        if self.cfg.overwrite and getattr(self, "args", None) is not None and self.args.process_index == 0:
            if restore_run(self.output_dir):
                log(f"overwrite=true: this run saved nothing, so the earlier run in {self.output_dir} is kept")
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
        """The adapter in model/adapter/ and, merged into the base weights, a standard model in model/. Without
        merging (``merge_on_save=false``), model/ still gets the model's config.json (architecture and labels)
        and the processor: the card reads the labels there, and ``hf-tune soup`` the class to merge into."""
        if not self.trainer.is_world_process_zero():
            return
        peft_model = self.trainer.model
        peft_model.save_pretrained(str(final / "adapter"))
        if self.cfg.techniques.lora.merge_on_save:
            peft_model.merge_and_unload().save_pretrained(str(final))
        else:
            base = peft_model.get_base_model()
            base.config.architectures = [type(base).__name__]
            base.config.save_pretrained(str(final))
        if self.processing_class() is not None:
            self.processing_class().save_pretrained(str(final))

    # ---------------------------------------------------------------- Trainer assembly
    def _setup_output_dir(self) -> None:
        """Refuse a used output_dir early (before data and model load). With overwrite=true nothing is deleted
        here: an interrupted earlier overwrite is put back, and the old run is checked to be hf_tune's own;
        it is set aside when training starts (:meth:`_set_aside_old_run`)."""
        state = self.args.distributed_state
        if self.cfg.overwrite and state.is_main_process:
            restore_run(self.output_dir)
            old_run_parts(self.output_dir)
        if self.cfg.resume and state.is_main_process:
            set_aside_partial_checkpoints(self.output_dir)
        state.wait_for_everyone()
        self._resume_from = check_output_dir(self.output_dir, resume=self.cfg.resume, overwrite=self.cfg.overwrite)
        if self._resume_from is not None:
            changed = resume_conflicts(self._resume_from, self.cfg)
            if changed:
                raise ConfigError(changed, self.cfg.recipe)
        state.wait_for_everyone()

    def _set_aside_old_run(self) -> None:
        """overwrite=true, once data, model and Trainer are ready: the old run moves to .replaced_run and is
        deleted at the new run's first save (or put back by :meth:`cleanup` if that never comes)."""
        state = self.args.distributed_state
        if self.cfg.overwrite and state.is_main_process:
            set_aside_run(self.output_dir)
        state.wait_for_everyone()

    def training_args(self, **overrides: Any):
        """TrainingArguments from ``training:``, with what hf_tune takes over from Trainer (pushing, clipping
        in the callback, its own optimizers). The user's clipping threshold stays in ``self.max_grad_norm``."""
        from transformers import TrainingArguments

        from hf_tune.techniques import hf_tune_clips

        cpu = use_cpu_backend_for_multiprocess()
        kwargs = {**self.training_defaults, **self.cfg.training, "output_dir": str(self.output_dir), **overrides}
        if cpu:
            kwargs["use_cpu"] = True
        kwargs.pop("resume_from_checkpoint", None)  # hf_tune resolves resuming itself (resume=true)
        if "dataloader_pin_memory" not in kwargs:
            import torch

            # pinning helps only host-to-GPU copies; on CPU torch warns once per data loader that it is ignored
            kwargs["dataloader_pin_memory"] = torch.cuda.is_available()
        for key in SECRET_TRAINING_KEYS:  # Trainer pickles its arguments into every training_args.bin;
            kwargs.pop(key, None)  # hf_tune pushes itself and reads the token from the config in memory
        # hf_tune pushes the finished model/ folder with its card itself (Recipe.push); Trainer's own push
        # would create the repo at start-up and upload the run folder (logs, no card) at every save.
        kwargs["push_to_hub"] = False
        if self.cfg.techniques.optim.name:
            from hf_tune.optim import OPTIMIZERS

            kwargs["optim"] = OPTIMIZERS.entry(self.cfg.techniques.optim.name).meta["trainer_optim"]
        try:
            args = TrainingArguments(**kwargs)
        except (ValueError, TypeError) as exc:  # a combination TrainingArguments refuses: its message names the keys
            raise ConfigError([f"training: {exc}"], self.cfg.recipe) from None
        self.max_grad_norm = float(args.max_grad_norm)
        t = self.cfg.techniques
        if hf_tune_clips(t.clipping, t.monitor):
            args.max_grad_norm = 0.0  # GradientCallback clips once instead; Trainer still logs the norm
        if args.device.type == "cpu":
            from hf_tune.speed import apply_cpu_threads

            apply_cpu_threads(self.cfg.speed.cpu_threads)  # before any model runs: torch's pool is process-wide
        return args

    def _setup_trainer(self) -> None:
        from hf_tune.calibration import setup_errors
        from hf_tune.callbacks import MarkCheckpointComplete, SaveResolvedConfig, StopOnSignal, route_logs_to_stderr

        errors = setup_errors(self)  # first: a run that cannot be calibrated must not train (data and model known)
        if errors:
            raise ConfigError(errors, self.cfg.recipe)
        self._stop = StopOnSignal()
        from hf_tune.anchor import build_anchor_penalty, build_batchnorm_freeze
        from hf_tune.data.draws import seed_item_draws
        from hf_tune.techniques import (
            apply_transfer_controls,
            build_ema_callback,
            build_grad_callback,
            optimizer_settings,
            swa_settings,
        )
        from hf_tune.trainer import HfTuneTrainer

        t = self.cfg.techniques
        # augmentation draws per (seed, epoch, item); data_seed, like Trainer's sampler, when given
        seed_item_draws(
            self.datasets.get("train"), self.args.data_seed if self.args.data_seed is not None else self.args.seed
        )
        # the anchor is the model as built, before resuming loads a checkpoint's weights into it
        anchor = build_anchor_penalty(self.model, self.cfg, self.cfg.model.name)
        freeze_bn = build_batchnorm_freeze(self.model, t.anchor.freeze_bn_stats)
        # after the model, before Trainer builds the optimizer from it
        self.model, self._unfreeze = apply_transfer_controls(self.model, t.freeze, t.lora, self.spec.lora_task_type)
        resume = str(self._resume_from) if self._resume_from else None
        loss = self.training_loss()  # before trainer_extras: a kind's extras may log its loss's parts (multi-task)
        extras = self.trainer_extras()
        if anchor is not None:
            extras = {**extras, "penalties": [anchor], "log_sources": [*extras.get("log_sources", []), anchor]}
        self.trainer = HfTuneTrainer(
            model=self.model,
            args=self.args,
            train_dataset=self.datasets.get("train"),
            eval_dataset=self.training_eval_dataset(),
            data_collator=self.data_collator(),
            processing_class=self.processing_class(),
            compute_metrics=self.compute_metrics,
            preprocess_logits_for_metrics=self.preprocess_logits(),
            callbacks=[SaveResolvedConfig(self.cfg), self._stop],
            loss=loss,
            ema=build_ema_callback(t.ema, resume),
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
            **swa_settings(t.swa, resume),
            **extras,
        )
        for callback in (self._unfreeze, freeze_bn):
            if callback is not None:
                self.trainer.add_callback(callback)
        if self.cfg.search.trial is not None:  # launched by hf-tune search: report evaluations, stop when pruned
            from hf_tune.search_trial import build_trial_callback

            self.trainer.add_callback(build_trial_callback(self.cfg.search, self.output_dir))
        self.trainer.add_callback(MarkCheckpointComplete())  # last: after every part of a checkpoint is written
        route_logs_to_stderr(self.trainer)

    def training_eval_dataset(self):
        """What Trainer's evaluations during training score (``training.eval_strategy``): the val split; kinds
        with ``data.max_train_eval_*`` score a seeded subset then and the whole split after training."""
        return self.datasets.get("val")

    def trainer_extras(self) -> dict[str, Any]:
        """Further HfTuneTrainer arguments of a recipe kind (multi-task: sampler, log sources)."""
        return {}

    def training_loss(self):
        """The HfTuneTrainer loss: the task loss on the logits (None: the model's own loss), with a teacher's
        soft targets added when ``techniques.distill.teacher`` is set."""
        from hf_tune.trainer import LogitsLoss

        fn = self.task_loss(float(self.args.label_smoothing_factor))
        loss = None if fn is None else LogitsLoss(fn)
        d = self.cfg.techniques.distill
        if d.teacher is None:
            return loss
        from hf_tune.distill import DistillLoss, load_teacher

        teacher, adapt = load_teacher(d.teacher, self.cfg, self.model, getattr(self, "tokenizer", None))
        log(f"distillation from {d.teacher}: T={d.temperature}, alpha={d.alpha} on the labels")
        return DistillLoss(
            loss,
            self.head,
            teacher,
            temperature=d.temperature,
            alpha=d.alpha,
            hidden_weight=d.hidden_weight,
            teacher_inputs=adapt,
        )

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
        """The kind's model saved in ``model_dir`` (its ``from_pretrained``). A distillation teacher given as a
        Hub id arrives here as ``Path(hub_id)``: read local files only when they exist."""
        raise NotImplementedError

    def inference_model(self, model_dir: Path):
        """The saved model as ``evaluate`` and ``predict`` run it: :meth:`load_model`, with its Linear layers
        quantized to int8 when ``speed.int8_inference`` asks (CPU only, so refused where a GPU would run it)."""
        if not self.cfg.speed.int8_inference:
            return self.load_model(model_dir)
        import torch

        from hf_tune.errors import ConfigError
        from hf_tune.speed import int8_linear

        if torch.cuda.is_available() and not self.cfg.training.get("use_cpu"):
            raise ConfigError(
                ["speed.int8_inference runs on the CPU only: add training.use_cpu=true, or drop speed.int8_inference"]
            )
        log("speed: Linear layers quantized to int8 for inference (speed.int8_inference)")
        return int8_linear(self.load_model(model_dir))

    def eval_dataset(self, split: str, model_dir: Path) -> tuple[str, Any]:
        """Build the dataset for ``hf-tune evaluate`` from ``cfg.data``; returns (split name, dataset)."""
        raise NotImplementedError

    def evaluate_saved(self, model_dir: Path, model=None) -> dict[str, Any]:
        """Evaluate a saved model on ``cfg.data`` (used by ``hf-tune evaluate``); ``model`` replaces the one
        in ``model_dir`` (a multi-task model's view of one task)."""
        import tempfile

        from hf_tune.callbacks import route_logs_to_stderr
        from hf_tune.trainer import HfTuneTrainer

        self.model = model if model is not None else self.inference_model(model_dir)
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
                preprocess_logits_for_metrics=self.preprocess_logits(),
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

    def training_set(self, model) -> Any:
        """``cfg.data``'s training split as training draws it (augmentation included), for a finished ``model``:
        recomputing the BatchNorm statistics of averaged weights, estimating Fisher information (EWC)."""
        self.model = model
        self.prepare_data()
        return self.datasets["train"]

    def training_batches(self, model, batch_size: int, max_batches: int | None = None) -> Iterator[dict[str, Any]]:
        """Collated, shuffled (seeded by data.split_seed) batches of :meth:`training_set`."""
        import torch

        from hf_tune.data.draws import seed_item_draws

        ds = self.training_set(model)
        seed = int(getattr(getattr(self.cfg, "data", None), "split_seed", 0))
        seed_item_draws(ds, seed)
        collate = self.data_collator()
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            **({"collate_fn": collate} if collate else {}),
        )
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                return
            yield batch


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    model_dir: Path
    output_dir: Path
    is_main_process: bool
    process_index: int


def plan_training(recipe: Recipe) -> dict[str, Any]:
    """``hf-tune train --dry-run``: every check a real run makes before training (launch, output folder, data,
    labels, model), then what the run would do; nothing is trained, written over or deleted (a kind that caches
    encoder features, clause_extraction, does fill its cache)."""
    import math

    errors = launch_errors(recipe.cfg)
    if errors:
        raise ConfigError(errors, recipe.cfg.recipe)
    recipe.args = args = recipe.training_args()
    resume_from = check_output_dir(recipe.output_dir, resume=recipe.cfg.resume, overwrite=recipe.cfg.overwrite)
    recipe.prepare_data()
    recipe.build_model()  # the model is checked too (and some kinds lay out their datasets only here)
    from hf_tune.calibration import setup_errors

    if setup_errors(recipe):
        raise ConfigError(setup_errors(recipe), recipe.cfg.recipe)
    n_params = sum(p.numel() for p in recipe.model.parameters())
    n_trainable = sum(p.numel() for p in recipe.model.parameters() if p.requires_grad)
    sizes = {}
    for split, ds in recipe.datasets.items():
        if isinstance(ds, dict):  # multi-task: one dataset per task
            sizes[split] = {task: len(d) for task, d in ds.items()}
        elif hasattr(ds, "__len__"):
            sizes[split] = len(ds)
    n_train = sizes.get("train") if isinstance(sizes.get("train"), int) else None
    batch = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    steps_per_epoch = math.ceil(n_train / batch) if n_train else None
    steps = args.max_steps if args.max_steps > 0 else None
    if steps is None and steps_per_epoch:
        steps = math.ceil(steps_per_epoch * args.num_train_epochs)
    replaced = [str(p) for p in [*checkpoints(recipe.output_dir), recipe.output_dir / FINAL_MODEL_DIR] if p.exists()]
    return {
        "dry_run": True,
        "recipe": recipe.cfg.recipe,
        "task": recipe.cfg.task,
        "output_dir": str(recipe.output_dir),
        "examples": sizes,
        "parameters": n_params,
        "trainable_parameters": n_trainable,
        "effective_batch_size": batch,
        "steps_per_epoch": steps_per_epoch,
        "epochs": args.num_train_epochs if args.max_steps <= 0 else None,
        # speed.train_minutes: the epochs above are the cap; training chooses how many fit once the data is ready
        "train_minutes": recipe.cfg.speed.train_minutes if args.max_steps <= 0 else None,
        "max_steps": steps,
        "save_strategy": str(args.save_strategy.value if hasattr(args.save_strategy, "value") else args.save_strategy),
        "resume_from": str(resume_from) if resume_from else None,
        "would_replace": replaced if recipe.cfg.overwrite else [],
        "writes": [
            str(recipe.output_dir / "checkpoint-STEP"),
            str(recipe.output_dir / FINAL_MODEL_DIR),
            str(recipe.output_dir / "metrics.json"),
        ],
    }


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
    except (OSError, RuntimeError) as exc:  # disk full / permission: said as such, not as a torch traceback
        from hf_tune.errors import environment_error

        env = environment_error(exc, recipe.output_dir)
        if env is None:
            raise
        raise env from exc
    finally:
        recipe.cleanup()
