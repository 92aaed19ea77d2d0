"""Anti-forgetting (``techniques.anchor``): L2-SP and EWC as an HfTuneTrainer penalty.

Both pull the weights toward an anchor, the weights training started from (a pretrained model for L2-SP, the
earlier task's run for EWC), instead of toward zero as weight decay does. EWC scales each weight's pull by its
diagonal Fisher information on the earlier task, estimated from per-example gradients of that task's training
data and saved beside its model (``fisher.safetensors``) so later runs reuse it. The math is
:func:`hf_tune.losses.anchor_penalty`.

The penalties reach parameters only. BatchNorm running statistics are buffers that every training forward
overwrites with the new task's statistics, so ``freeze_bn_stats`` keeps them (:class:`FreezeBatchNormStats`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from typing import Any

import torch
from transformers import TrainerCallback

from hf_tune.errors import ConfigError
from hf_tune.losses import anchor_penalty
from hf_tune.techniques import log
from hf_tune.trainer import LossInputs

FISHER_FILE = "fisher.safetensors"


class AnchorPenalty:
    """``strength / 2 * sum F (w - w0)^2`` over the chosen parameters (F = 1 for L2-SP); logs its value."""

    def __init__(
        self,
        named: list[tuple[str, torch.nn.Parameter]],
        anchors: dict[str, torch.Tensor],
        strength: float,
        fisher: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.anchors = [anchors[n] for n in self.names]
        self.weights = None if fisher is None else [fisher[n] for n in self.names]
        self.strength = strength
        self._last: float | None = None

    def __call__(self, batch: LossInputs) -> torch.Tensor:
        if not batch.model.training:
            return batch.logits.new_zeros(()) if torch.is_tensor(batch.logits) else torch.zeros(())
        value = anchor_penalty(self.params, self.anchors, self.strength, self.weights)
        self._last = float(value.detach())
        return value

    def take_logs(self) -> dict[str, float]:
        return {} if self._last is None else {"anchor_penalty": self._last}


def anchored_parameters(model: torch.nn.Module, anchors: dict[str, torch.Tensor], params: str) -> list[tuple[str, Any]]:
    """Trainable parameters with an anchor of the same shape; ``backbone`` leaves the task head out."""
    from hf_tune.optim import head_parameter_names

    head = head_parameter_names(model) if params == "backbone" else set()
    return [
        (n, p)
        for n, p in model.named_parameters()
        if p.requires_grad and n not in head and n in anchors and anchors[n].shape == p.shape
    ]


def build_anchor_penalty(model: torch.nn.Module, cfg, model_name: str) -> AnchorPenalty | None:
    """The penalty of ``techniques.anchor`` for ``model`` at the start of training (its weights are the anchor)."""
    a = cfg.techniques.anchor
    if a.method == "none":
        return None
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    fisher = None
    if a.method == "ewc":
        fisher = load_or_estimate_fisher(model_name, a.fisher, a.fisher_samples)
        anchors = {n: v for n, v in anchors.items() if n in fisher}
    named = anchored_parameters(model, anchors, a.params)
    if fisher is not None:
        named = [(n, p) for n, p in named if fisher[n].shape == p.shape]
    if not named:
        raise ConfigError(
            [
                f"techniques.anchor.method={a.method}: no trainable parameter has an anchor"
                + (" (the Fisher file names none of this model's parameters)" if fisher is not None else "")
            ]
        )
    n_params = sum(p.numel() for _, p in named)
    log(f"anchor: {a.method}, strength {a.strength}, {len(named)} tensors ({n_params:,} weights) pulled to their start")
    return AnchorPenalty(named, anchors, a.strength, fisher)


# ---------------------------------------------------------------------------------------------- BatchNorm


def batchnorm_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _eval_mode(module: torch.nn.Module, args: Any) -> None:
    module.eval()


class FreezeBatchNormStats(TrainerCallback):
    """BatchNorm layers run in eval mode during training: they normalise with the running statistics the model
    started with and leave them (and ``num_batches_tracked``) untouched, while their scale and shift train.

    A forward pre-hook on each BatchNorm layer, because Trainer puts the whole model back in train mode at every
    training step, after every callback. The hooks live from ``on_train_begin`` to ``on_train_end`` only, so the
    model is an ordinary one afterwards (and the saved folder is unchanged in format)."""

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._remove()
        self._handles = [m.register_forward_pre_hook(_eval_mode) for m in batchnorm_layers(model)]

    def on_train_end(self, args, state, control, **kwargs):
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def build_batchnorm_freeze(model: torch.nn.Module, freeze_bn_stats: bool) -> FreezeBatchNormStats | None:
    """The callback of ``techniques.anchor.freeze_bn_stats`` for ``model``; a model without BatchNorm is refused
    (the setting would do nothing there: LayerNorm keeps no running statistics)."""
    if not freeze_bn_stats:
        return None
    layers = batchnorm_layers(model)
    if not layers:
        raise ConfigError(
            [
                f"techniques.anchor.freeze_bn_stats: this model ({type(model).__name__}) has no BatchNorm layers, so "
                "there are no running statistics to keep (LayerNorm has none); drop the setting"
            ]
        )
    log(f"anchor: the running statistics of {len(layers)} BatchNorm layers stay as the model started (eval mode)")
    return FreezeBatchNormStats()


# ---------------------------------------------------------------------------------------------- Fisher


def fisher_diagonal(model: torch.nn.Module, batches: Iterable[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The empirical Fisher diagonal: the mean over examples of the squared gradient of the model's own loss
    (the negative log-likelihood of the labels), one example per batch so gradients are per example."""
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it predicts
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params}
    count = 0
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        for n, p in params:
            if p.grad is not None:
                total[n] += p.grad.detach().float().pow(2)
        count += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if count == 0:
        raise ConfigError(["techniques.anchor: the earlier task's training data gave no examples for the Fisher"])
    return {n: t / count for n, t in total.items()}


def load_or_estimate_fisher(model_name: str, path: str | None, samples: int) -> dict[str, torch.Tensor]:
    """The earlier task's Fisher diagonal: ``path``, else ``fisher.safetensors`` beside model.name's model,
    estimated there from ``samples`` of that run's training data (its own resolved config says which) when
    missing or made from fewer samples."""
    from safetensors.torch import load_file, save_file

    if path:
        return load_file(path)
    from hf_tune.config import find_model_dir, load_saved_config
    from hf_tune.schema import RESOLVED_CONFIG_NAME

    try:
        folder = find_model_dir(model_name)
    except FileNotFoundError:
        raise ConfigError(
            [
                f"techniques.anchor.method=ewc: model.name={model_name} is not an hf_tune run, so there is no earlier "
                f"task to estimate the Fisher information on; give techniques.anchor.fisher=FILE or use method=l2sp"
            ]
        ) from None
    out, meta = folder / FISHER_FILE, folder / "fisher.json"
    if out.is_file() and meta.is_file() and json.loads(meta.read_text()).get("samples", 0) >= samples:
        return load_file(str(out))
    from hf_tune.recipes import RECIPES

    cfg = load_saved_config(folder / RESOLVED_CONFIG_NAME)
    recipe = RECIPES.get(cfg.task)(cfg)
    model = recipe.load_model(folder)
    with tempfile.TemporaryDirectory() as tmp:
        recipe.args = recipe.training_args(output_dir=tmp, report_to="none")
        log(f"EWC: estimating the Fisher information of {folder} on {samples} of its training examples")
        fisher = fisher_diagonal(model, recipe.training_batches(model, batch_size=1, max_batches=samples))
    save_file({k: v.contiguous() for k, v in fisher.items()}, str(out))
    meta.write_text(json.dumps({"samples": samples, "data": getattr(getattr(cfg, "data", None), "path", None)}))
    log(f"EWC: Fisher diagonal saved to {out}")
    return fisher
