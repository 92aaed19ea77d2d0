"""HfTuneTrainer: Trainer with one override per documented hook (STYLE rule 7).

- ``create_optimizer``: builds hf_tune's parameter groups (layer-wise / backbone LRs with explicit ``lr``,
  frozen parameters included for later unfreezing) with the optimizer class Trainer picks for ``optim``;
  a pre-built optimizer would be refused under FSDP, this hook is not.
- ``create_scheduler``: hf_tune's extra schedules (step, multistep, exponential, cosine restarts), and the
  SWA learning rate from ``techniques.swa.start`` on (torch's SWALR after the recipe's schedule).
- ``compute_loss``: the one loss extension point. A :class:`TrainingLoss` gets everything a loss may need
  (:class:`LossInputs`: logits, labels, the model outputs, the inputs, the model) and ``penalties`` add terms
  (regularisers such as a pull toward earlier weights), because Trainer only offers the model's own loss or
  label smoothing.
- ``evaluate``: runs on the EMA weights when an EmaCallback is attached with evaluate_with_ema, because
  no callback fires before evaluation starts.
- ``log``: adds the logs of ``log_sources`` (the gradient monitor's per-block norms and skipped steps, a
  multi-task loss's per-task losses and weights) to Trainer's logs so they reach log_history and every
  reporting integration.
- ``_get_train_sampler``: a multi-task run's task sampler (proportional, temperature, uniform, round-robin)
  replaces the random sampler; with ``train_sampling_strategy=group_by_length`` hf_tune's length-grouped
  sampler replaces Trainer's, because Trainer's draws from the global (or an unsaved) RNG, so a resumed run
  would see other batches, and orders batches by length within each mega-batch. Trainer and accelerate still
  build, shard and resume the DataLoader.
- ``_get_eval_sampler``: with ``group_by_length``, evaluation and prediction run longest first (little padding
  per batch) instead of Trainer's random grouping, which nothing puts back in order.
- ``evaluation_loop``: results of a length-sorted evaluation are put back in input order before
  ``compute_metrics`` and in what ``evaluate``/``predict`` return (metrics that map predictions to documents by
  position, such as token classification's, stay correct).
Everything else (EMA updates, clipping, freezing schedules, saved config) is a TrainerCallback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import EvalPrediction, has_length

from hf_tune.data.batching import LengthGroupedSampler, LengthSortedSampler, in_input_order, sequence_lengths

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GroupFn = Callable[[torch.nn.Module], list[dict[str, Any]]]


@dataclass
class LossInputs:
    """What a training loss or penalty may read for one micro-batch."""

    logits: Any
    labels: Any
    outputs: Any
    inputs: dict[str, Any]
    model: torch.nn.Module


class TrainingLoss:
    """A loss for :class:`HfTuneTrainer`. ``labels_to_model``: the model receives the labels and computes
    (part of) the loss itself (multi-task models do, per task); otherwise labels are kept from the model."""

    labels_to_model: bool = False

    def run_model(self, model: torch.nn.Module, inputs: dict[str, Any], labels: Any) -> Any:
        """How the model runs on a training micro-batch (its full forward unless a loss needs less of it;
        ``inputs`` hold the labels only when ``labels_to_model``)."""
        return model(**inputs)

    def __call__(self, batch: LossInputs) -> torch.Tensor:
        raise NotImplementedError


class LogitsLoss(TrainingLoss):
    """``fn(logits, labels)``: a classification loss such as focal loss or weighted cross-entropy."""

    def __init__(self, fn: LossFn) -> None:
        self.fn = fn

    def __call__(self, batch: LossInputs) -> torch.Tensor:
        return self.fn(batch.logits, batch.labels)


class ModelLoss(TrainingLoss):
    """The model's own loss (used when only penalties are added)."""

    labels_to_model = True

    def __call__(self, batch: LossInputs) -> torch.Tensor:
        return batch.outputs.loss


Penalty = Callable[[LossInputs], torch.Tensor]


class HfTuneTrainer(Trainer):
    def __init__(
        self,
        *args,
        loss: TrainingLoss | None = None,
        penalties: list[Penalty] | None = None,
        ema=None,
        evaluate_with_ema: bool = False,
        param_groups_fn: GroupFn | None = None,
        optimizer_kwargs: dict[str, Any] | None = None,
        optimizer_cls: type | None = None,
        schedule: tuple[str, dict[str, Any]] | None = None,
        grad_monitor=None,
        train_sampler=None,
        log_sources: list[Any] | None = None,
        swa=None,
        swa_lr: float | None = None,
        swa_anneal_steps: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.penalties = list(penalties or [])
        self.training_loss = loss if loss is not None or not self.penalties else ModelLoss()
        if self.training_loss is not None and not self.training_loss.labels_to_model:
            # Our loss is a per-micro-batch mean: have Trainer divide it by the accumulation steps
            # (it skips that for models that accept loss kwargs, e.g. BERT, assuming they normalise).
            self.model_accepts_loss_kwargs = False
        self.ema, self.evaluate_with_ema = ema, evaluate_with_ema
        self.param_groups_fn, self.optimizer_kwargs, self.schedule = param_groups_fn, optimizer_kwargs or {}, schedule
        self.optimizer_cls = optimizer_cls
        self.train_sampler = train_sampler
        self.log_sources = [s for s in (grad_monitor, *(log_sources or [])) if s is not None]
        self.swa, self.swa_lr, self.swa_anneal_steps = swa, swa_lr, swa_anneal_steps
        for cb in (ema, grad_monitor, swa):
            if cb is not None:
                self.add_callback(cb)

    def create_optimizer(self, model=None):
        if self.param_groups_fn is None and not self.optimizer_kwargs:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            groups = (self.param_groups_fn or _default_groups(self.args.weight_decay, self.args.learning_rate))(
                opt_model
            )
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            if self.optimizer_cls is not None:
                cls, kwargs = self.optimizer_cls, {}
            kwargs = {**kwargs, **self.optimizer_kwargs}
            kwargs.pop("lr", None)  # every group carries its own explicit lr
            self.optimizer = cls(groups, **kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        from hf_tune.optim import build_schedule, swa_schedule

        if self.lr_scheduler is not None:
            return self.lr_scheduler
        if self.schedule is None:
            super().create_scheduler(num_training_steps, optimizer)
        else:
            name, kwargs = self.schedule
            warmup = self.args.get_warmup_steps(num_training_steps)
            self.lr_scheduler = build_schedule(name, optimizer or self.optimizer, warmup, **kwargs)
            self._created_lr_scheduler = True
        if self.swa is not None and self.swa_lr is not None:
            self.lr_scheduler = swa_schedule(
                self.lr_scheduler,
                optimizer or self.optimizer,
                start_step=self.swa.start_step(num_training_steps),
                swa_lr=self.swa_lr,
                reference_lr=float(self.args.learning_rate),
                anneal_steps=self.swa_anneal_steps,
            )
        return self.lr_scheduler

    def _get_train_sampler(self, train_dataset=None):
        if self.train_sampler is not None:
            return self.train_sampler
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and dataset is not None and has_length(dataset):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            lengths = sequence_lengths(dataset, self._length_key())
            return LengthGroupedSampler(lengths, self._train_batch_size, seed=seed)
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        # per-batch metrics and unconcatenated batches have no whole-set order to restore: they stay sequential
        per_batch = self.args.batch_eval_metrics or not self.args.eval_do_concat_batches
        sortable = eval_dataset is not None and has_length(eval_dataset) and not per_batch
        if self.args.train_sampling_strategy == "group_by_length" and sortable:
            return LengthSortedSampler(sequence_lengths(eval_dataset, self._length_key()))
        return super()._get_eval_sampler(eval_dataset)

    def _length_key(self) -> str:
        names = getattr(self.processing_class, "model_input_names", None)
        return names[0] if names else "input_ids"

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, **kwargs):
        order = getattr(_sampler_of(dataloader), "order", None)
        if order is None:
            return super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, **kwargs)
        compute = self.compute_metrics
        if compute is not None:
            # losses are per batch (repeated), not per example: they have no input order to restore
            self.compute_metrics = lambda p: compute(
                EvalPrediction(
                    predictions=in_input_order(p.predictions, order),
                    label_ids=in_input_order(p.label_ids, order),
                    inputs=in_input_order(p.inputs, order),
                    losses=p.losses,
                )
            )
        try:
            out = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, **kwargs)
        finally:
            self.compute_metrics = compute
        return out._replace(
            predictions=in_input_order(out.predictions, order), label_ids=in_input_order(out.label_ids, order)
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.training_loss is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"] if self.training_loss.labels_to_model else inputs.pop("labels")
        outputs = self.training_loss.run_model(model, inputs, labels) if model.training else model(**inputs)
        batch = LossInputs(outputs.logits, labels, outputs, inputs, model)
        loss = self.training_loss(batch)
        for penalty in self.penalties:
            loss = loss + penalty(batch)
        outputs.loss = loss
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            for source in self.log_sources:
                logs = {**logs, **source.take_logs()}
        super().log(logs, start_time)

    def evaluate(self, *args, **kwargs):
        if self.ema is None or not self.evaluate_with_ema or self.ema.ema is None:
            return super().evaluate(*args, **kwargs)
        with self.ema_weights():
            return super().evaluate(*args, **kwargs)

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Temporarily load the EMA weights into the live model."""
        live = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.ema.state_dict())
        try:
            yield
        finally:
            self.model.load_state_dict(live)

    def use_ema_weights(self) -> None:
        """Make the EMA weights the model's weights for good (final model)."""
        self.model.load_state_dict(self.ema.state_dict())


def _sampler_of(dataloader) -> Any:
    """The index sampler under a (possibly accelerate-sharded) DataLoader's batch sampler."""
    batches = getattr(dataloader, "batch_sampler", None)
    while batches is not None:
        sampler = getattr(batches, "sampler", None)
        if sampler is not None:
            return sampler
        batches = getattr(batches, "batch_sampler", None)  # accelerate's BatchSamplerShard wraps the original
    return None


def _default_groups(weight_decay: float, lr: float) -> GroupFn:
    from hf_tune.optim import param_groups

    return lambda model: param_groups(model.named_parameters(), set(), lr=lr, weight_decay=weight_decay)
