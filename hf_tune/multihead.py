"""MultiHeadModel: one shared encoder, one small head per task, as a regular transformers model.

The encoder exists once (a BERT-family ``AutoModel`` or a timm backbone without classifier) and the
heads sit in an ``nn.ModuleDict`` keyed by task name, so there are no tied copies: ``save_pretrained``
writes plain safetensors, ``from_pretrained`` / ``push_to_hub`` work, and loading needs only this module
(``import hf_tune.multihead`` also registers it with ``AutoConfig`` / ``AutoModel``).

A batch may mix tasks: ``task_ids`` (one per example) routes each row's encoder output to its task's
head; labels come as ``{task: tensor}`` holding that task's rows in batch order. The loss is the
:class:`~hf_tune.multitask.TaskLossWeighting` combination of per-task mean losses, which the output
also carries (``task_losses``) so they can be logged one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from hf_tune.heads import HEADS
from hf_tune.multitask import TaskLossWeighting
from hf_tune.registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class MultiHeadConfig(PretrainedConfig):
    """Config of a :class:`MultiHeadModel`.

    Args:
        encoder: the encoder's own config as a dict (text: a transformers config with ``model_type``;
            image: ``{"architecture", "model_args", "num_features", "pretrained_cfg"}`` for timm).
        encoder_kind: ``text`` or ``image``.
        tasks: ``{name: {"head": a name in hf_tune.heads.HEADS, "labels": [...], "loss_weight": float}}``.
        head_dropout: dropout before every head.
        pooling: how sequence heads read a text encoder: ``mean`` over non-padding tokens or ``cls``.
        loss_weighting: ``fixed``, ``uncertainty`` or ``dwa`` (see hf_tune.multitask.WEIGHTINGS).
        task_order: task names in task-id order (default: the order of ``tasks``).
    """

    model_type = "hf_tune_multihead"
    keys_to_ignore_at_inference = ["task_losses", "task_terms"]

    def __init__(
        self,
        encoder: dict[str, Any] | None = None,
        encoder_kind: str = "text",
        tasks: dict[str, dict[str, Any]] | None = None,
        head_dropout: float = 0.1,
        pooling: str = "mean",
        loss_weighting: str = "fixed",
        task_order: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.encoder = encoder or {}
        self.encoder_kind = encoder_kind
        self.tasks = tasks or {}
        # config.json is written with sorted keys, so the task-id order is stored explicitly
        self.task_order = list(task_order or self.tasks)
        self.head_dropout = head_dropout
        self.pooling = pooling
        self.loss_weighting = loss_weighting
        super().__init__(**kwargs)

    @property
    def task_names(self) -> list[str]:
        return list(self.task_order)


@dataclass
class MultiHeadOutput(ModelOutput):
    """``logits`` is ``{task: tensor}`` for the tasks present in the batch, rows in batch order."""

    loss: torch.Tensor | None = None
    logits: dict[str, torch.Tensor] | None = None
    task_losses: dict[str, torch.Tensor] | None = None
    task_terms: dict[str, torch.Tensor] | None = None


# --------------------------------------------------------------------------------------------------
# Encoder kinds: how to build one from its config dict and how to run it
# --------------------------------------------------------------------------------------------------

ENCODERS: Registry[dict[str, Callable]] = Registry("encoder kind")


def _build_text(cfg: dict[str, Any]) -> tuple[nn.Module, int]:
    config = AutoConfig.for_model(**cfg)
    return AutoModel.from_config(config), config.hidden_size


def _run_text(encoder, pooling: str, input_ids=None, attention_mask=None, token_type_ids=None, **_):
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    hidden = encoder(**kwargs).last_hidden_state
    if pooling == "cls":
        return hidden, hidden[:, 0]
    mask = attention_mask if attention_mask is not None else torch.ones(hidden.shape[:2], device=hidden.device)
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return hidden, (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def _build_image(cfg: dict[str, Any]) -> tuple[nn.Module, int]:
    import timm

    model = timm.create_model(cfg["architecture"], pretrained=False, num_classes=0, **cfg.get("model_args", {}))
    return model, model.num_features


def _run_image(encoder, pooling: str, pixel_values=None, **_):
    return None, encoder(pixel_values)


ENCODERS.add("text", {"build": _build_text, "run": _run_text})
ENCODERS.add("image", {"build": _build_image, "run": _run_image})


class MultiHeadModel(PreTrainedModel):
    config_class = MultiHeadConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False

    def __init__(self, config: MultiHeadConfig) -> None:
        super().__init__(config)
        if config.encoder_kind not in ENCODERS:
            raise ValueError(f"encoder_kind {config.encoder_kind!r}: known {ENCODERS.names()}")
        self.encoder, hidden = ENCODERS.get(config.encoder_kind)["build"](config.encoder)
        self.heads = nn.ModuleDict(
            {
                name: nn.Sequential(nn.Dropout(config.head_dropout), nn.Linear(hidden, self.num_outputs(name)))
                for name in config.task_names
            }
        )
        self.loss_weighting = TaskLossWeighting(
            config.task_names,
            config.loss_weighting,
            [config.tasks[n].get("loss_weight", 1.0) for n in config.task_names],
        )
        self._loss_overrides: dict[str, LossFn] = {}
        if config.encoder_kind == "image":
            self.main_input_name = "pixel_values"
        self.post_init()

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_encoder(cls, encoder: nn.Module, kind: str, encoder_config: dict[str, Any], **config_kwargs: Any):
        """A new model around a pretrained ``encoder`` (its weights are copied in; heads start fresh)."""
        model = cls(MultiHeadConfig(encoder=encoder_config, encoder_kind=kind, **config_kwargs))
        model.encoder.load_state_dict(encoder.state_dict())
        return model

    def _init_weights(self, module: nn.Module) -> None:
        # Only the heads are new; encoder weights are overwritten by from_encoder / from_pretrained.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def head(self, task: str):
        return HEADS.get(self.config.tasks[task]["head"])

    def num_outputs(self, task: str) -> int:
        return self.head(task).num_outputs(self.config.tasks[task].get("labels") or [])

    def set_task_loss(self, task: str, fn: LossFn | None) -> None:
        """Replace a task's standard loss for training (e.g. focal loss, class weights)."""
        if fn is None:
            self._loss_overrides.pop(task, None)
        else:
            self._loss_overrides[task] = fn

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        labels: dict[str, torch.Tensor] | None = None,
        task: str | None = None,
        return_dict: bool | None = None,
    ) -> MultiHeadOutput:
        """Run the encoder once on the whole batch and each head on its task's rows.

        Args:
            task_ids: task index per example (task-id order = ``config.tasks`` order).
            labels: ``{task: labels for that task's rows, in batch order}``.
            task: shorthand for "every row is this task" (inference).
        """
        names = self.config.task_names
        inputs = input_ids if input_ids is not None else pixel_values
        if task is not None:
            task_ids = torch.full((inputs.shape[0],), names.index(task), device=inputs.device)
        elif task_ids is None:
            if len(names) != 1:
                raise ValueError(f"pass task_ids (one per example) or task=NAME; tasks: {names}")
            task_ids = torch.zeros(inputs.shape[0], dtype=torch.long, device=inputs.device)
        hidden, pooled = ENCODERS.get(self.config.encoder_kind)["run"](
            self.encoder,
            self.config.pooling,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
        )
        logits: dict[str, torch.Tensor] = {}
        for k, name in enumerate(names):
            rows = (task_ids == k).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            features = hidden[rows] if self.head(name).token_level else pooled[rows]
            logits[name] = self.heads[name](features)
        loss = task_losses = terms = None
        if labels is not None:
            task_losses = {n: self._task_loss(n, logits[n], labels[n]) for n in logits if n in labels}
            if task_losses:
                terms = self.loss_weighting.terms(task_losses)
                loss = torch.stack(list(terms.values())).sum()
        return MultiHeadOutput(loss=loss, logits=logits, task_losses=task_losses, task_terms=terms)

    def _task_loss(self, task: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        fn = self._loss_overrides.get(task)
        if fn is not None:
            return fn(logits, labels)
        return self.head(task).loss(logits, labels)


AutoConfig.register(MultiHeadConfig.model_type, MultiHeadConfig)
AutoModel.register(MultiHeadConfig, MultiHeadModel)
