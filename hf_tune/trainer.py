"""HfTuneTrainer: Trainer with one override per documented hook (STYLE rule 7).

- ``compute_loss``: applies a configured classification loss (focal, class weights, label smoothing)
  to the model's logits, because Trainer only offers the model's own loss or label smoothing.
Everything else (EMA, monitoring, freezing schedules, saved config) is a TrainerCallback.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import Trainer

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class HfTuneTrainer(Trainer):
    def __init__(self, *args, loss_fn: LossFn | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
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
