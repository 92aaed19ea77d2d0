"""Multi-task training pieces: task sampling, loss weighting and gradient-conflict projection.

The math is in pure functions (each unit-tested against its formula); the small classes around them
plug into Trainer without replacing its loop:

- :class:`TaskMixture` concatenates the tasks' datasets and tags every example with its ``task_ids``;
- :class:`TaskSampler` decides which task each example slot comes from. Trainer builds the DataLoader
  from it and accelerate shards its batches across processes like any other sampler (no hand-made
  distributed sampler); it is re-seeded per epoch through ``set_epoch``, identically on every rank;
- :class:`TaskLossWeighting` lives inside the model (its learned log-variances must be trained,
  checkpointed and resumed like any parameter) and turns per-task losses into the training loss;
- :class:`TaskLossMeter` collects per-task losses for logging and for dynamic weight averaging.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from hf_tune.registry import Registry

# --------------------------------------------------------------------------------------------------
# Task sampling
# --------------------------------------------------------------------------------------------------

SAMPLING: Registry[Callable[..., np.ndarray]] = Registry("task sampling strategy")


@SAMPLING.register("proportional", doc="p_t = n_t / sum(n): every example equally likely; large tasks dominate")
def proportional(sizes: Sequence[int], temperature: float = 1.0) -> np.ndarray:
    n = np.asarray(sizes, dtype=np.float64)
    return n / n.sum()


@SAMPLING.register("temperature", doc="p_t proportional to n_t^(1/T): T=1 proportional, T->inf uniform")
def temperature_scaled(sizes: Sequence[int], temperature: float = 2.0) -> np.ndarray:
    n = np.asarray(sizes, dtype=np.float64) ** (1.0 / temperature)
    return n / n.sum()


@SAMPLING.register("uniform", doc="p_t = 1/K: small tasks are seen as often as large ones (and repeat more)")
def uniform(sizes: Sequence[int], temperature: float = 1.0) -> np.ndarray:
    return np.full(len(sizes), 1.0 / len(sizes))


@SAMPLING.register("round_robin", doc="tasks take turns batch by batch (homogeneous batches); p_t = 1/K")
def round_robin(sizes: Sequence[int], temperature: float = 1.0) -> np.ndarray:
    return uniform(sizes)


def sampling_probabilities(strategy: str, sizes: Sequence[int], temperature: float = 2.0) -> np.ndarray:
    """Probability that an example slot is drawn from each task."""
    if any(n <= 0 for n in sizes):
        raise ValueError(f"every task needs training examples, got sizes {list(sizes)}")
    return SAMPLING.get(strategy)(sizes, temperature)


class TaskMixture(torch.utils.data.Dataset):
    """The tasks' datasets end to end; every item gains ``task_ids`` (the task's index in the model, by
    default its position here)."""

    def __init__(self, datasets: dict[str, Any], task_ids: dict[str, int] | None = None) -> None:
        self.names = list(datasets)
        self.datasets = [datasets[n] for n in self.names]
        self.ids = [task_ids[n] if task_ids else k for k, n in enumerate(self.names)]
        self.sizes = [len(d) for d in self.datasets]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        """Passed on to the tasks' datasets (augmentation draws per epoch, see hf_tune.data.draws)."""
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        item = dict(self.datasets[k][i - int(self.offsets[k])])
        item["task_ids"] = self.ids[k]
        return item


class TaskSampler(torch.utils.data.Sampler[int]):
    """Indices into a :class:`TaskMixture`: a task per slot (by ``probs``, or in turns), then that task's
    next example from a per-task permutation that is reshuffled whenever it runs out.

    An epoch has ``epoch_size`` slots (default: the mixture's length), so ``num_train_epochs`` keeps its
    meaning of "as many examples as the data has". The sequence depends only on (seed, epoch), so every
    process draws the same one and accelerate's batch sharding splits it without overlap.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        probs: Sequence[float],
        *,
        round_robin_batch: int | None = None,
        seed: int = 0,
        epoch_size: int | None = None,
    ) -> None:
        self.sizes, self.probs = list(sizes), np.asarray(probs, dtype=np.float64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.round_robin_batch, self.seed = round_robin_batch, seed
        self.epoch_size = epoch_size or int(sum(sizes))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.epoch_size

    def task_sequence(self, rng: np.random.Generator) -> np.ndarray:
        if self.round_robin_batch:
            slot = np.arange(self.epoch_size) // self.round_robin_batch
            return slot % len(self.sizes)
        return rng.choice(len(self.sizes), size=self.epoch_size, p=self.probs)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        perms = [rng.permutation(n) for n in self.sizes]
        pos = [0] * len(self.sizes)
        for k in self.task_sequence(rng):
            if pos[k] == self.sizes[k]:
                perms[k], pos[k] = rng.permutation(self.sizes[k]), 0
            yield int(self.offsets[k] + perms[k][pos[k]])
            pos[k] += 1


# --------------------------------------------------------------------------------------------------
# Loss weighting
# --------------------------------------------------------------------------------------------------

WEIGHTINGS: Registry[str] = Registry("task loss weighting")
WEIGHTINGS.add("fixed", "fixed", doc="sum of loss_weight_t * L_t")
WEIGHTINGS.add("uncertainty", "uncertainty", doc="Kendall et al. 2018: sum exp(-s_t) * w_t * L_t + s_t, s learned")
WEIGHTINGS.add("dwa", "dwa", doc="Liu et al. 2019: weights from the ratio of each task's last two period losses")


def uncertainty_terms(losses: torch.Tensor, log_vars: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-task terms exp(-s_t) * w_t * L_t + s_t of homoscedastic-uncertainty weighting.

    s_t = log sigma_t^2 is learned: a task whose loss stays high gets a larger s_t (smaller weight), and
    the + s_t term stops every weight from collapsing to zero.
    """
    return torch.exp(-log_vars) * weights * losses + log_vars


def dwa_weights(last: Sequence[float], before: Sequence[float], temperature: float = 2.0) -> np.ndarray:
    """Dynamic weight averaging: w_t = K * softmax_t(r_t / T) with r_t = L_t(last) / L_t(before).

    A task whose loss fell less (r_t near or above 1) gets more weight; the weights sum to K.
    """
    r = np.asarray(last, dtype=np.float64) / np.maximum(np.asarray(before, dtype=np.float64), 1e-12)
    z = np.exp((r - r.max()) / temperature)
    return len(r) * z / z.sum()


def pcgrad_project(grads: torch.Tensor, order: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
    """PCGrad (Yu et al. 2020): for each task gradient g_i and each other task j (in ``order[i]``), when
    g_i . g_j < 0 remove g_i's component along g_j. Returns the projected (K, P) gradients.

    The comparison is with the *original* g_j, as in the paper; for two tasks the order does not matter.
    """
    k = grads.shape[0]
    out = grads.clone()
    for i in range(k):
        others = order[i] if order is not None else [j for j in range(k) if j != i]
        for j in others:
            dot = torch.dot(out[i], grads[j])
            if dot < 0:
                out[i] = out[i] - dot / grads[j].pow(2).sum().clamp_min(1e-20) * grads[j]
    return out


def pcgrad_surrogate(
    terms: Sequence[torch.Tensor], shared: Sequence[torch.nn.Parameter], rng: np.random.Generator
) -> torch.Tensor:
    """A loss with the same value as ``sum(terms)`` whose gradient on the ``shared`` parameters is the
    PCGrad-projected sum (task-specific parameters keep their plain gradients).

    Each task's gradient on the shared parameters is taken with ``autograd.grad`` (no ``.grad`` is
    touched), projected, and the difference to the plain sum is added as a linear term ``<p, c>`` whose
    value is cancelled. Trainer's own backward (with loss scaling and accumulation) then does the rest.
    Costs one extra backward pass per task.
    """
    total = torch.stack(list(terms)).sum()
    if len(terms) < 2:
        return total
    grads = []
    for t in terms:
        gs = torch.autograd.grad(t, shared, retain_graph=True, allow_unused=True)
        flat_g = [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gs, shared, strict=True)]
        grads.append(torch.cat(flat_g))
    flat = torch.stack(grads).float()
    k = len(terms)
    order = [[j for j in rng.permutation(k) if j != i] for i in range(k)]
    correction = pcgrad_project(flat, order).sum(0) - flat.sum(0)
    dot = torch.zeros((), device=total.device, dtype=torch.float32)
    start = 0
    for p in shared:
        n = p.numel()
        dot = dot + (p.float() * correction[start : start + n].view_as(p)).sum()
        start += n
    return total + (dot - dot.detach()).to(total.dtype)


class TaskLossWeighting(torch.nn.Module):
    """Combines per-task losses into one; part of the model so learned weights train and checkpoint.

    ``base`` holds each task's configured ``loss_weight``; ``dynamic`` the DWA multipliers (ones
    otherwise); ``log_vars`` exist only for uncertainty weighting.
    """

    def __init__(self, names: Sequence[str], method: str, weights: Sequence[float]) -> None:
        super().__init__()
        self.names, self.method = list(names), method
        self.register_buffer("base", torch.tensor(list(weights), dtype=torch.float32))
        self.register_buffer("dynamic", torch.ones(len(self.names)))
        self.log_vars = torch.nn.Parameter(torch.zeros(len(self.names))) if method == "uncertainty" else None

    def terms(self, task_losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each present task's contribution; they sum to the training loss."""
        idx = torch.tensor([self.names.index(n) for n in task_losses], device=self.base.device)
        losses = torch.stack(list(task_losses.values()))
        w = (self.base * self.dynamic)[idx].to(losses.dtype)
        out = uncertainty_terms(losses, self.log_vars[idx], w) if self.log_vars is not None else w * losses
        return dict(zip(task_losses, out.unbind(0), strict=True))

    def effective_weights(self) -> dict[str, float]:
        """Current multiplier of each task's raw loss (base * DWA * exp(-s) for uncertainty)."""
        w = self.base * self.dynamic
        if self.log_vars is not None:
            w = w * torch.exp(-self.log_vars.detach())
        return {n: float(v) for n, v in zip(self.names, w.tolist(), strict=True)}

    def set_dynamic(self, weights: Sequence[float]) -> None:
        self.dynamic.copy_(torch.as_tensor(np.asarray(weights), dtype=torch.float32))


class TaskLossMeter:
    """Running per-task loss sums: for the training log (``loss_<task>``) and DWA's period averages."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self._log = {n: [0.0, 0] for n in self.names}
        self._period = {n: [0.0, 0] for n in self.names}

    def add(self, task_losses: dict[str, torch.Tensor]) -> None:
        for n, v in task_losses.items():
            x = float(v.detach())
            if math.isfinite(x):
                for acc in (self._log, self._period):
                    acc[n][0] += x
                    acc[n][1] += 1

    @staticmethod
    def _means(acc: dict[str, list]) -> dict[str, float]:
        return {n: s / c for n, (s, c) in acc.items() if c}

    def take_logs(self) -> dict[str, float]:
        out = {f"loss_{n}": round(v, 6) for n, v in self._means(self._log).items()}
        self._log = {n: [0.0, 0] for n in self.names}
        return out

    def take_period(self) -> dict[str, float]:
        out = self._means(self._period)
        self._period = {n: [0.0, 0] for n in self.names}
        return out
