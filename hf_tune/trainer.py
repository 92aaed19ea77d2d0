"""HfTuneTrainer: Trainer with one override per documented hook (STYLE rule 7).

- ``evaluate``: runs on the EMA weights when an EmaCallback is attached with evaluate_with_ema, because
  no callback fires before evaluation starts.
- ``compute_loss``: applies a configured classification loss (focal, class weights, label smoothing)
  to the model's logits, because Trainer only offers the model's own loss or label smoothing.
Everything else (EMA, monitoring, freezing schedules, saved config) is a TrainerCallback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from transformers import Trainer

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class HfTuneTrainer(Trainer):
    def __init__(
        self, *args, loss_fn: LossFn | None = None, ema=None, evaluate_with_ema: bool = False, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.ema, self.evaluate_with_ema = ema, evaluate_with_ema
        if ema is not None:
            self.add_callback(ema)
        if loss_fn is not None:
            # Our loss is a per-micro-batch mean: have Trainer divide it by the accumulation steps
            # (it skips that for models that accept loss kwargs, e.g. BERT, assuming they normalise).
            self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.loss_fn is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = self.loss_fn(outputs.logits, labels)
        outputs.loss = loss
        return (loss, outputs) if return_outputs else loss

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
