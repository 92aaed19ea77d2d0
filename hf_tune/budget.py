"""Fitting training to a wall-clock budget (``speed.train_minutes``).

Why: a recipe sized for "30 minutes on 2 CPU cores" depends on the machine. The clause recipe's frozen-encoder
pass took 7 minutes on one 2-core machine and 24 on another, and its head epochs 0.5 or 1.0 minutes, so a fixed
number of epochs either wastes the budget or overruns it. The recipe instead times a few real training steps once
the data is ready and trains as many epochs as fit. The epochs are chosen before Trainer is built, so the
learning-rate schedule (warm-up, cosine decay) spans the run that actually happens; cutting a run short with a
timer would stop it mid-schedule.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path

import torch

TIMED_STEPS = 10
"""Training steps timed (after WARMUP_STEPS untimed ones) to estimate the seconds per step."""
WARMUP_STEPS = 2
STEP_OVERHEAD = 1.15
"""Trainer's step costs a little more than the bare forward/backward/AdamW step that is timed (gradient-norm
monitoring, logging, the scheduler, checkpoint saves at epoch ends): 1.06x and 1.16x in two fresh CUAD runs of the
clause recipe (0.53 and 0.57 s a step against 0.50 and 0.49 timed)."""


def fitting_epochs(
    seconds_left: float, step_seconds: float, steps_per_epoch: int, reserve_seconds: float, most: float
) -> int:
    """Whole epochs of ``steps_per_epoch`` steps at ``step_seconds`` each that fit in ``seconds_left`` after
    ``reserve_seconds`` (the work after training), at most ``most`` (the configured epochs, rounded down) and at
    least 1: a run that cannot fit one epoch still trains one rather than saving an untrained model."""
    epoch = max(step_seconds * steps_per_epoch, 1e-9)
    fit = math.floor((seconds_left - reserve_seconds) / epoch)
    return max(1, min(int(most), fit))


def planned_epochs(checkpoint: Path) -> float | None:
    """The epochs a checkpoint's run was planned with (its ``trainer_state.json``), so a resumed budgeted run
    ends where the uninterrupted one would have, whatever this machine's speed now; None if not recorded."""
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return None
    value = json.loads(state.read_text()).get("num_train_epochs")
    return float(value) if value else None


def seconds_per_step(model: torch.nn.Module, batches: Iterable[dict], max_grad_norm: float | None = 1.0) -> float:
    """Median seconds of a training step (forward, backward, clipping, AdamW) of a throwaway copy of ``model``
    on ``batches`` (at least WARMUP_STEPS + 1 of them; the first WARMUP_STEPS are not timed). The model itself
    is untouched."""
    probe = copy.deepcopy(model).train()
    params = [p for p in probe.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        loss = probe(**batch).loss
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - t0)
    if not times:
        raise ValueError(f"seconds_per_step needs more than {WARMUP_STEPS} batches")
    times.sort()
    return times[len(times) // 2]
