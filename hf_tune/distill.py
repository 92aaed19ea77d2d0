"""Knowledge distillation (``techniques.distill``): a trained teacher's outputs train the student.

:class:`DistillLoss` is a :class:`~hf_tune.trainer.TrainingLoss`: it wraps the kind's own task loss (the hard
loss on the labels) and adds the head's soft-target loss against the teacher
(:meth:`hf_tune.heads.Head.distill_loss`), so every single-task kind gets distillation with no ``compute_loss``
branch. The teacher is loaded through its kind's ``load_model``, kept out of the student's parameters (it is
never saved or optimised), runs in eval mode under ``torch.no_grad`` and is moved to the student's device on
first use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hf_tune.errors import ConfigError
from hf_tune.losses import distillation_loss
from hf_tune.trainer import LossInputs, ModelLoss, TrainingLoss

InputFn = Callable[[dict[str, Any]], dict[str, Any]]


def renormalize_images(
    pixels: torch.Tensor, student_cfg: Mapping[str, Any], teacher_cfg: Mapping[str, Any]
) -> torch.Tensor:
    """Student-normalised images -> the teacher's preprocessing: undo the student's mean/std, match the teacher's
    channels (grey repeated to RGB, RGB averaged to grey) and input size, apply the teacher's mean/std. Both
    configs are timm ``pretrained_cfg`` mappings (``mean``, ``std``, ``input_size``)."""
    s_mean = torch.tensor(student_cfg["mean"], dtype=pixels.dtype, device=pixels.device)[: pixels.shape[1]]
    s_std = torch.tensor(student_cfg["std"], dtype=pixels.dtype, device=pixels.device)[: pixels.shape[1]]
    raw = pixels * s_std[None, :, None, None] + s_mean[None, :, None, None]
    t_chans, t_h, t_w = teacher_cfg["input_size"]
    if raw.shape[1] != t_chans:
        raw = raw.mean(1, keepdim=True) if t_chans == 1 else raw.expand(-1, t_chans, -1, -1)
    if tuple(raw.shape[-2:]) != (t_h, t_w):
        raw = F.interpolate(raw, size=(t_h, t_w), mode="bilinear", align_corners=False, antialias=True)
    t_mean = torch.tensor(teacher_cfg["mean"], dtype=pixels.dtype, device=pixels.device)[:t_chans]
    t_std = torch.tensor(teacher_cfg["std"], dtype=pixels.dtype, device=pixels.device)[:t_chans]
    return (raw - t_mean[None, :, None, None]) / t_std[None, :, None, None]


def hidden_state_loss(
    student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Mean squared distance between last hidden states over the real (unpadded) tokens."""
    d = (student.float() - teacher.float().detach()).pow(2).mean(-1)
    if attention_mask is None:
        return d.mean()
    m = attention_mask.to(d.dtype)
    return (d * m).sum() / m.sum().clamp_min(1.0)


class DistillLoss(TrainingLoss):
    """``alpha * hard + (1 - alpha) * head.distill_loss(student, teacher)`` (+ ``hidden_weight`` * hidden MSE).

    ``hard`` is the kind's own loss (``None``: the model's built-in loss, which then receives the labels).
    Evaluation reports the hard loss only, so ``eval_loss`` stays comparable with runs without a teacher."""

    def __init__(
        self,
        hard: TrainingLoss | None,
        head,
        teacher: torch.nn.Module,
        *,
        temperature: float,
        alpha: float,
        hidden_weight: float = 0.0,
        teacher_inputs: InputFn | None = None,
    ) -> None:
        self.hard = hard if hard is not None else ModelLoss()
        self.labels_to_model = self.hard.labels_to_model
        self.head, self.teacher = head, teacher.eval().requires_grad_(False)
        self.temperature, self.alpha, self.hidden_weight = temperature, alpha, hidden_weight
        self.teacher_inputs = teacher_inputs or (lambda inputs: inputs)

    def run_model(self, model, inputs, labels):
        if self.hidden_weight:
            inputs = {**inputs, "output_hidden_states": True}
        return self.hard.run_model(model, inputs, labels)

    def _teacher_outputs(self, inputs: dict[str, Any], device: torch.device):
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        given = {k: v for k, v in inputs.items() if k not in ("labels", "output_hidden_states")}
        with torch.no_grad():
            return self.teacher(**self.teacher_inputs(given), output_hidden_states=bool(self.hidden_weight))

    def __call__(self, batch: LossInputs) -> torch.Tensor:
        hard = self.hard(batch)
        if not batch.model.training:
            return hard
        out = self._teacher_outputs(batch.inputs, batch.logits.device)
        soft = self.head.distill_loss(batch.logits, out.logits, batch.labels, self.temperature)
        loss = distillation_loss(hard, soft, self.alpha)
        if self.hidden_weight:
            s_h, t_h = batch.outputs.hidden_states[-1], out.hidden_states[-1]
            loss = loss + self.hidden_weight * hidden_state_loss(s_h, t_h, batch.inputs.get("attention_mask"))
        return loss


def load_teacher(path: str, student_cfg, student_model, tokenizer=None) -> tuple[torch.nn.Module, InputFn | None]:
    """The teacher model of ``techniques.distill.teacher`` and how to turn the student's inputs into its inputs.

    Refused with the reason: another kind, other labels, another tokenizer (text), a hidden-state match
    between different widths."""
    from hf_tune.soup import load_ingredient_model

    key = "techniques.distill.teacher"
    teacher, teacher_cfg, folder = load_ingredient_model(path)
    if teacher_cfg.task != student_cfg.task:
        raise ConfigError([f"{key}={path} is a {teacher_cfg.task} model; the student is {student_cfg.task}"])
    labels = _labels(student_model)
    if _labels(teacher) != labels:
        raise ConfigError([f"{key}={path}: its labels {_labels(teacher)} differ from the student's {labels}"])
    hidden = student_cfg.techniques.distill.hidden_weight
    if student_cfg.modality() == "image":
        if hidden:
            raise ConfigError(["techniques.distill.hidden_weight applies to BERT-family text models"])
        s_cfg, t_cfg = student_model.config.pretrained_cfg, teacher.config.pretrained_cfg
        same = all(s_cfg.get(k) == t_cfg.get(k) for k in ("mean", "std", "input_size"))
        return teacher, None if same else (
            lambda x: {**x, "pixel_values": renormalize_images(x["pixel_values"], s_cfg, t_cfg)}
        )
    _check_tokenizer(key, path, folder, tokenizer)
    if hidden and teacher.config.hidden_size != student_model.config.hidden_size:
        raise ConfigError(
            [
                f"techniques.distill.hidden_weight: the teacher's hidden states are {teacher.config.hidden_size} wide, "
                f"the student's {student_model.config.hidden_size}; set hidden_weight=0 (or a student of that width)"
            ]
        )
    return teacher, None


def _labels(model) -> list[str]:
    cfg = model.config
    return [cfg.id2label[i] for i in range(cfg.num_labels)] if getattr(cfg, "id2label", None) else []


def _check_tokenizer(key: str, path: str, folder: Path, tokenizer) -> None:
    """Text teacher and student must read the same token ids (the teacher sees the student's input_ids)."""
    from transformers import AutoTokenizer

    if tokenizer is None:
        return
    theirs = AutoTokenizer.from_pretrained(str(folder))
    if theirs.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            [
                f"{key}={path}: its tokenizer differs from the student's (other vocabulary); distil between models "
                f"that share a tokenizer, e.g. a smaller model of the same family or model.num_layers"
            ]
        )
