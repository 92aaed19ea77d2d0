"""HfTuneTrainer: Trainer with one override per documented hook (STYLE rule 7).

- ``create_optimizer``: builds hf_tune's parameter groups (layer-wise / backbone LRs with explicit ``lr``,
  frozen parameters included for later unfreezing) with the optimizer class Trainer picks for ``optim``;
  a pre-built optimizer would be refused under FSDP, this hook is not.
- ``create_scheduler``: hf_tune's extra schedules (step, multistep, exponential, cosine restarts).
- ``compute_loss``: applies a configured classification loss (focal, class weights, label smoothing)
  to the model's logits, because Trainer only offers the model's own loss or label smoothing.
- ``evaluate``: runs on the EMA weights when an EmaCallback is attached with evaluate_with_ema, because
  no callback fires before evaluation starts.
- ``log``: adds the gradient monitor's metrics (per-block norms, skipped steps) and the per-task losses of
  a multi-task model to Trainer's logs so they reach log_history and every reporting integration.
- ``_get_train_sampler``: a multi-task run's task sampler (proportional, temperature, uniform, round-robin)
  replaces the random sampler; Trainer and accelerate still build, shard and resume the DataLoader.
- ``compute_loss`` (multi-task): records per-task losses and, with PCGrad, returns a loss whose gradient on
  the shared encoder is the projected one.
Everything else (EMA updates, clipping, freezing schedules, saved config) is a TrainerCallback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from transformers import Trainer

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GroupFn = Callable[[torch.nn.Module], list[dict[str, Any]]]


class HfTuneTrainer(Trainer):
    def __init__(
        self,
        *args,
        loss_fn: LossFn | None = None,
        ema=None,
        evaluate_with_ema: bool = False,
        param_groups_fn: GroupFn | None = None,
        optimizer_kwargs: dict[str, Any] | None = None,
        optimizer_cls: type | None = None,
        schedule: tuple[str, dict[str, Any]] | None = None,
        grad_monitor=None,
        train_sampler=None,
        task_meter=None,
        pcgrad: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        if loss_fn is not None:
            # Our loss is a per-micro-batch mean: have Trainer divide it by the accumulation steps
            # (it skips that for models that accept loss kwargs, e.g. BERT, assuming they normalise).
            self.model_accepts_loss_kwargs = False
        self.ema, self.evaluate_with_ema = ema, evaluate_with_ema
        self.param_groups_fn, self.optimizer_kwargs, self.schedule = param_groups_fn, optimizer_kwargs or {}, schedule
        self.optimizer_cls = optimizer_cls
        self.grad_monitor = grad_monitor
        self.train_sampler, self.task_meter, self.pcgrad = train_sampler, task_meter, pcgrad
        self._pcgrad_rng = np.random.default_rng(int(self.args.seed))
        for cb in (ema, grad_monitor):
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
        if self.schedule is None:
            return super().create_scheduler(num_training_steps, optimizer)
        from hf_tune.optim import build_schedule

        if self.lr_scheduler is None:
            name, kwargs = self.schedule
            warmup = self.args.get_warmup_steps(num_training_steps)
            self.lr_scheduler = build_schedule(name, optimizer or self.optimizer, warmup, **kwargs)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _get_train_sampler(self, train_dataset=None):
        if self.train_sampler is not None:
            return self.train_sampler
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.task_meter is not None and "labels" in inputs:
            return self._multitask_loss(model, inputs, return_outputs)
        if self.loss_fn is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = self.loss_fn(outputs.logits, labels)
        outputs.loss = loss
        return (loss, outputs) if return_outputs else loss

    def _multitask_loss(self, model, inputs, return_outputs):
        from hf_tune.multitask import pcgrad_surrogate

        outputs = model(**inputs)
        loss = outputs.loss
        if model.training:
            self.task_meter.add(outputs.task_losses)
            if self.pcgrad:
                shared = [p for p in self.accelerator.unwrap_model(model).encoder.parameters() if p.requires_grad]
                loss = pcgrad_surrogate(list(outputs.task_terms.values()), shared, self._pcgrad_rng)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.grad_monitor is not None and "loss" in logs:
            logs = {**logs, **self.grad_monitor.take_logs()}
        if self.task_meter is not None and "loss" in logs:
            weights = self.accelerator.unwrap_model(self.model).loss_weighting.effective_weights()
            logs = {**logs, **self.task_meter.take_logs(), **{f"weight_{n}": round(w, 5) for n, w in weights.items()}}
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


def _default_groups(weight_decay: float, lr: float) -> GroupFn:
    from hf_tune.optim import param_groups

    return lambda model: param_groups(model.named_parameters(), set(), lr=lr, weight_decay=weight_decay)
