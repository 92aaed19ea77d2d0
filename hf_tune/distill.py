"""Knowledge distillation (``techniques.distill``): a trained teacher's outputs train the student.

:class:`DistillLoss` is a :class:`~hf_tune.trainer.TrainingLoss`: it wraps the kind's own task loss (the hard
loss on the labels) and adds the head's soft-target loss against the teacher
(:meth:`hf_tune.heads.Head.distill_loss`), so every single-task kind gets distillation with no ``compute_loss``
branch. The teacher is loaded through its kind's ``load_model`` (an hf_tune run's own kind; the student's kind
for a plain model folder or a Hub id), kept out of the student's parameters (it is never saved or optimised),
runs in eval mode under ``torch.no_grad`` and is moved to the student's device on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hf_tune.errors import ConfigError
from hf_tune.losses import distillation_loss
from hf_tune.schema import RESOLVED_CONFIG_NAME
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


_KEY = "techniques.distill.teacher"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model")
"""Any of these beside a local teacher means it carries its own tokenizer (``AutoTokenizer`` would otherwise build
a placeholder from config.json alone, whose vocabulary differs from every real one)."""


def load_teacher(path: str, student_cfg, student_model, tokenizer=None) -> tuple[torch.nn.Module, InputFn | None]:
    """The teacher model of ``techniques.distill.teacher`` and how to turn the student's inputs into its inputs.

    ``path`` is an hf_tune run, model or checkpoint folder (its resolved config names its kind), a plain model
    folder (config.json and weights, as ``save_pretrained`` writes them) or a Hub id; the last two load through
    the student kind's own ``load_model`` (``from_pretrained``) and their labels are their config's id2label.
    Refused with the reason: another kind or head, other labels, another tokenizer (text), a hidden-state match
    between different widths."""
    teacher, tokenizer_at = _load_teacher_model(path, student_cfg)
    labels = _labels(student_model)
    if _labels(teacher) != labels:
        hint = "" if _is_run_folder(Path(path)) else "; a model folder's or Hub id's labels are its config's id2label"
        raise ConfigError([f"{_KEY}={path}: its labels {_labels(teacher)} differ from the student's {labels}{hint}"])
    hidden = student_cfg.techniques.distill.hidden_weight
    if student_cfg.modality() == "image":
        if hidden:
            raise ConfigError(["techniques.distill.hidden_weight applies to BERT-family text models"])
        s_cfg, t_cfg = student_model.config.pretrained_cfg, teacher.config.pretrained_cfg
        same = all(s_cfg.get(k) == t_cfg.get(k) for k in ("mean", "std", "input_size"))
        return teacher, None if same else (
            lambda x: {**x, "pixel_values": renormalize_images(x["pixel_values"], s_cfg, t_cfg)}
        )
    _check_tokenizer(path, tokenizer_at, tokenizer)
    if hidden and teacher.config.hidden_size != student_model.config.hidden_size:
        raise ConfigError(
            [
                f"techniques.distill.hidden_weight: the teacher's hidden states are {teacher.config.hidden_size} wide, "
                f"the student's {student_model.config.hidden_size}; set hidden_weight=0 (or a student of that width)"
            ]
        )
    return teacher, None


def _load_teacher_model(path: str, student_cfg) -> tuple[torch.nn.Module, str]:
    """The teacher and where its tokenizer is (its folder, or the Hub id)."""
    if _is_run_folder(Path(path)):
        return _load_run_teacher(path, student_cfg)
    return _load_plain_teacher(path, student_cfg)


def _is_run_folder(p: Path) -> bool:
    """An hf_tune run, model or checkpoint folder (its resolved config says the kind), as opposed to a plain model
    folder or a Hub id. A folder with neither config.json nor a resolved config counts as a run folder, so its
    error is the run loader's (an interrupted run, no finished model/)."""
    if not p.is_dir():
        return False
    if not (p / "config.json").is_file():
        return True
    in_run = p.name.startswith("checkpoint-") and (p.parent / RESOLVED_CONFIG_NAME).is_file()
    return (p / RESOLVED_CONFIG_NAME).is_file() or in_run


def _load_run_teacher(path: str, student_cfg) -> tuple[torch.nn.Module, str]:
    from hf_tune.soup import load_ingredient_model

    try:
        teacher, teacher_cfg, folder = load_ingredient_model(path)
    except FileNotFoundError as exc:
        raise ConfigError([f"{_KEY}: {exc}; or a model folder holding config.json and weights"]) from exc
    if teacher_cfg.task != student_cfg.task:
        raise ConfigError([f"{_KEY}={path} is a {teacher_cfg.task} model; the student is {student_cfg.task}"])
    return teacher, str(folder)


def _load_plain_teacher(path: str, student_cfg) -> tuple[torch.nn.Module, str]:
    """A plain model folder or Hub id, loaded by the student kind's ``load_model`` once its config shows a model
    of the student's modality. Refused when its config names another head class: from_pretrained would start the
    kind's head untrained, and a random teacher teaches nothing."""
    from transformers import AutoConfig, TimmWrapperConfig

    from hf_tune.recipes import RECIPES

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError([_unloadable(path, exc)]) from exc
    if isinstance(config, TimmWrapperConfig) != (student_cfg.modality() == "image"):
        raise ConfigError(
            [
                f"{_KEY}={path} is a {config.model_type} model; a {student_cfg.task} student needs a "
                f"{'timm image' if student_cfg.modality() == 'image' else 'text'} model as its teacher"
            ]
        )
    try:
        teacher = RECIPES.get(student_cfg.task).load_model(Path(path))
    except (OSError, ValueError) as exc:
        raise ConfigError([_unloadable(path, exc)]) from exc
    named = list(config.architectures or [])  # timm Hub configs name none: their head always loads
    if named and type(teacher).__name__ not in named:
        raise ConfigError(
            [
                f"{_KEY}={path}: its config names {named}, not the {type(teacher).__name__} a {student_cfg.task} "
                f"student needs, so its head would start untrained; give a model fine-tuned for this task"
            ]
        )
    return teacher, path


def _unloadable(path: str, exc: Exception) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if Path(path).exists():
        return f"{_KEY}={path}: not a loadable model folder ({reason})"
    return (
        f"{_KEY}={path}: no such folder (relative to {Path.cwd()}), and from_pretrained could not load it as a "
        f"Hugging Face Hub id ({reason}); give an hf_tune run folder, a model folder or a reachable Hub id"
    )


def _labels(model) -> list[str]:
    cfg = model.config
    return [cfg.id2label[i] for i in range(cfg.num_labels)] if getattr(cfg, "id2label", None) else []


def _check_tokenizer(path: str, tokenizer_at: str, tokenizer) -> None:
    """Text teacher and student must read the same token ids (the teacher sees the student's input_ids)."""
    from transformers import AutoTokenizer

    if tokenizer is None:
        return
    local = Path(tokenizer_at)
    if local.is_dir() and not any((local / f).is_file() for f in _TOKENIZER_FILES):
        raise ConfigError(
            [
                f"{_KEY}={path}: no tokenizer beside the teacher (none of {', '.join(_TOKENIZER_FILES)}); save its "
                f"tokenizer there (tokenizer.save_pretrained) so it can be checked against the student's"
            ]
        )
    try:
        theirs = AutoTokenizer.from_pretrained(tokenizer_at)
    except (OSError, ValueError) as exc:
        raise ConfigError([f"{_KEY}={path}: its tokenizer does not load ({exc})"]) from exc
    if theirs.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            [
                f"{_KEY}={path}: its tokenizer differs from the student's (other vocabulary); distil between models "
                f"that share a tokenizer, e.g. a smaller model of the same family or model.num_layers"
            ]
        )
