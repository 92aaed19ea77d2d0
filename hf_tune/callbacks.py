"""TrainerCallbacks: everything that observes or decorates training without changing the loss."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from hf_tune.schema import BaseConfig, save_config


class SaveResolvedConfig(TrainerCallback):
    """Write resolved_config.yaml beside every checkpoint (the audit trail, STYLE rule 11)."""

    def __init__(self, cfg: BaseConfig) -> None:
        self.cfg = cfg

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            save_config(self.cfg, Path(args.output_dir) / f"checkpoint-{state.global_step}")
            if self.cfg.overwrite:  # the first checkpoint of the new run exists: the run it replaces can go
                from hf_tune.recipes.base import discard_replaced_run

                discard_replaced_run(Path(args.output_dir))


class MarkCheckpointComplete(TrainerCallback):
    """Added after every other callback: once Trainer's files, the resolved config and the EMA weights of a
    checkpoint are written, mark it complete (a small file renamed into place). Resume trusts only marked
    checkpoints, so a kill in the middle of a save leaves a folder that is skipped, not one that fails."""

    def on_save(self, args, state, control, **kwargs):
        import json

        from hf_tune.schema import COMPLETE_MARK

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            tmp = folder / f".{COMPLETE_MARK}.tmp"
            tmp.write_text(json.dumps({"step": state.global_step}))
            tmp.replace(folder / COMPLETE_MARK)


class StopOnSignal(TrainerCallback):
    """SIGINT (Ctrl-C) or SIGTERM during training: finish the current step, save a checkpoint and stop, so the
    run resumes with ``resume=true`` and loses nothing. A second signal stops at once (the default action).
    Handlers are installed only in the main thread and put back when training ends."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        import signal

        if self.received is not None:  # second signal: give up the clean stop
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum).name
        print(f"[hf_tune] {self.received}: stopping after this step and saving a checkpoint", file=sys.stderr)

    def on_train_begin(self, args, state, control, **kwargs):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()

    def _restore(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class LogToStderr(TrainerCallback):
    """Stands in for Trainer's PrinterCallback (used when tqdm is off), which prints log dicts to stdout:
    hf_tune keeps stdout for its machine-readable JSON lines."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs:
            import sys

            print({k: round(v, 6) if isinstance(v, float) else v for k, v in logs.items()}, file=sys.stderr, flush=True)


def route_logs_to_stderr(trainer) -> None:
    from transformers.trainer_callback import PrinterCallback

    if trainer.pop_callback(PrinterCallback) is not None:
        trainer.add_callback(LogToStderr)


EMA_WEIGHTS_NAME = "ema.safetensors"


class EmaCallback(TrainerCallback):
    """Exponential moving average of the weights, kept by timm's ModelEmaV3.

    Updated after every optimizer step with ``step=global_step`` (so warmup works and the first update
    copies the weights); saved as ``ema.safetensors`` in every checkpoint and restored from it on resume.
    HfTuneTrainer swaps the EMA weights in for evaluation and, when asked, for the final model.
    """

    def __init__(self, decay: float, warmup: bool, resume_from: str | None = None) -> None:
        self.decay, self.warmup, self.resume_from = decay, warmup, resume_from
        self.ema = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from safetensors.torch import load_file
        from timm.utils.model_ema import ModelEmaV3

        self.ema = ModelEmaV3(model, decay=self.decay, use_warmup=self.warmup)
        saved = Path(self.resume_from or "") / EMA_WEIGHTS_NAME
        if self.resume_from and saved.is_file():
            self.ema.module.load_state_dict(load_file(str(saved)))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update(model, step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.ema is not None:
            from safetensors.torch import save_file

            sd = {k: v.detach().contiguous().cpu() for k, v in self.ema.module.state_dict().items()}
            save_file(sd, str(Path(args.output_dir) / f"checkpoint-{state.global_step}" / EMA_WEIGHTS_NAME))

    def state_dict(self) -> dict:
        return self.ema.module.state_dict()


SWA_WEIGHTS_NAME = "swa.safetensors"


class SwaCallback(TrainerCallback):
    """Stochastic weight averaging (Izmailov et al. 2018) with torch's ``swa_utils.AveragedModel``.

    From ``start_step`` on, the weights are averaged every ``interval`` optimizer steps (0: at every epoch end).
    Every checkpoint holds the average so far (``swa.safetensors``, with the number averaged), which resuming
    loads, so a resumed run averages exactly what the uninterrupted one would. When training ends the average
    replaces the live weights and BatchNorm statistics are recomputed on up to ``bn_batches`` training batches
    (the averaged weights never produced the running statistics the model holds).
    """

    def __init__(self, start: float, interval: int, bn_batches: int | None, resume_from: str | None = None) -> None:
        self.start, self.interval, self.bn_batches, self.resume_from = start, interval, bn_batches, resume_from
        self.swa = None

    def start_step(self, max_steps: int) -> int:
        """``start`` as a step: a share of ``max_steps`` when below 1, else the step itself."""
        import math

        return max(1, math.ceil(self.start * max_steps)) if self.start < 1 else int(self.start)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from torch.optim.swa_utils import AveragedModel

        self.swa = AveragedModel(model, device=torch.device("cpu"), use_buffers=False)
        self.begin = self.start_step(state.max_steps)
        saved = Path(self.resume_from or "") / SWA_WEIGHTS_NAME
        if self.resume_from and saved.is_file():
            from safetensors.torch import load_file

            state_dict = load_file(str(saved))
            self.swa.n_averaged.copy_(state_dict.pop("n_averaged"))
            self.swa.module.load_state_dict(state_dict)

    def _average(self, state, model) -> None:
        if state.global_step >= self.begin:
            self.swa.update_parameters(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.interval and (state.global_step - self.begin) % self.interval == 0:
            self._average(state, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if not self.interval:
            self._average(state, model)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.swa is not None:
            from safetensors.torch import save_file

            sd = {k: v.detach().contiguous().cpu() for k, v in self.swa.module.state_dict().items()}
            sd["n_averaged"] = self.swa.n_averaged.detach().cpu()
            save_file(sd, str(Path(args.output_dir) / f"checkpoint-{state.global_step}" / SWA_WEIGHTS_NAME))

    def on_train_end(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        from hf_tune.fusion import has_batchnorm, recompute_batchnorm
        from hf_tune.techniques import log

        if self.swa is None or int(self.swa.n_averaged) == 0:
            log("SWA: training ended before techniques.swa.start; the final weights are the live ones")
            return
        params = dict(self.swa.module.named_parameters())
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(params[n].to(p.device, p.dtype))
        msg = f"SWA: the final weights average {int(self.swa.n_averaged)} snapshots from step {self.begin}"
        if has_batchnorm(model) and train_dataloader is not None:
            import itertools

            name = getattr(model, "main_input_name", "pixel_values")
            batches = (b[name] for b in itertools.islice(train_dataloader, self.bn_batches))
            msg += f"; BatchNorm statistics recomputed on {recompute_batchnorm(model, batches)} training batches"
        log(msg)


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive optimizer steps had non-finite gradients."""


def block_name(param_name: str, depth: int = 2) -> str:
    """Group a parameter into a block: up to its first numeric component (``bert.encoder.layer.3``,
    ``timm_model.layer1.0``), else its first ``depth`` components (``bert.embeddings``)."""
    parts = param_name.split(".")[:-1] or param_name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:depth])


class GradientCallback(TrainerCallback):
    """Clipping (norm, value, AGC, auto), per-block gradient norms and non-finite step skipping.

    Runs in ``on_pre_optimizer_step``. hf_tune hands Trainer ``max_grad_norm=0`` whenever this callback
    clips, so Trainer still computes (and logs as ``grad_norm``) the pre-clip global norm and unscales
    fp16 gradients first, and clipping happens exactly once, here, on unscaled gradients.
    """

    def __init__(
        self,
        *,
        mode: str,
        max_norm: float,
        value: float,
        agc_factor: float,
        agc_eps: float,
        auto_percentile: float,
        auto_window: int,
        auto_min_history: int,
        monitor: bool,
        depth: int,
        skip_nonfinite: bool,
        max_nonfinite_in_a_row: int,
        plot: bool,
        clip: bool = True,
    ) -> None:
        self.mode, self.max_norm, self.value, self.clip = mode, max_norm, value, clip
        self.agc_factor, self.agc_eps = agc_factor, agc_eps
        self.auto_percentile, self.auto_window, self.auto_min_history = auto_percentile, auto_window, auto_min_history
        self.monitor, self.depth, self.plot = monitor, depth, plot
        self.skip_nonfinite, self.max_nonfinite = skip_nonfinite, max_nonfinite_in_a_row
        self.history: list[float] = []
        self.pending: dict[str, float] = {}
        self.skipped_total = 0
        self.skipped_in_a_row = 0
        self.last_threshold: float | None = None
        self.model = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model

    def _block_norms(self, params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, float]:
        import torch

        sq: dict[str, float] = {}
        for n, p in params:
            if p.grad is not None:
                b = block_name(n, self.depth)
                sq[b] = sq.get(b, 0.0) + float(torch.linalg.vector_norm(p.grad.detach().float()) ** 2)
        return {b: v**0.5 for b, v in sq.items()}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        import math

        import torch

        from hf_tune import clipping

        params = [(n, p) for n, p in self.model.named_parameters() if p.grad is not None]
        plist = [p for _, p in params]
        total = clipping.global_grad_norm(plist)
        if not math.isfinite(total):
            self._skip(plist, state)
            return
        self.skipped_in_a_row = 0
        pre = self._block_norms(params) if self.monitor else {}
        if self.clip:
            if self.mode == "value":
                clipping.clip_by_value_(plist, self.value)
            elif self.mode == "agc":
                clipping.adaptive_clip_(plist, self.agc_factor, self.agc_eps)
            else:
                threshold = self.max_norm
                if self.mode == "auto":
                    threshold = clipping.percentile_threshold(
                        self.history[-self.auto_window :], self.auto_percentile, self.auto_min_history, self.max_norm
                    )
                self.last_threshold = threshold
                if threshold > 0:
                    torch.nn.utils.clip_grad_norm_(plist, threshold)
        self.history.append(total)
        if self.monitor:
            post = self._block_norms(params)
            self.pending = {f"grad_norm_pre/{b}": v for b, v in pre.items()}
            self.pending |= {f"grad_norm_post/{b}": v for b, v in post.items()}
            self.pending["grad_norm_post_total"] = clipping.global_grad_norm(plist)
        if self.mode == "auto" and self.last_threshold is not None:
            self.pending["clip_threshold"] = self.last_threshold

    def _skip(self, plist, state) -> None:
        if not self.skip_nonfinite:
            return
        for p in plist:  # torch optimizers skip parameters without a gradient: weights stay as they are
            p.grad = None
        self.skipped_total += 1
        self.skipped_in_a_row += 1
        self.pending["nonfinite_steps_skipped"] = self.skipped_total
        if self.skipped_in_a_row >= self.max_nonfinite:
            raise NonFiniteTrainingError(
                f"{self.skipped_in_a_row} optimizer steps in a row had inf/NaN gradients (step {state.global_step}); "
                f"lower training.learning_rate, enable clipping (training.max_grad_norm, techniques.clipping) or "
                f"raise techniques.monitor.max_nonfinite_in_a_row. Checkpoints so far are kept; resume=true continues."
            )

    def take_logs(self) -> dict[str, float]:
        """Metrics for the next Trainer log call (HfTuneTrainer.log merges them)."""
        out = dict(self.pending)
        out["nonfinite_steps_skipped"] = self.skipped_total
        return out

    def on_train_end(self, args, state, control, **kwargs):
        if self.plot and self.monitor and state.is_world_process_zero:
            plot_grad_norms(
                [
                    (h.get("step", i), h)
                    for i, h in enumerate(state.log_history)
                    if any(k.startswith("grad_norm_pre/") for k in h)
                ],
                Path(args.output_dir) / "grad_norms.png",
            )


def plot_grad_norms(history: list[tuple[int, dict[str, float]]], path: Path) -> Path | None:
    """Per-block gradient norms over steps, log scale: pre-clip (left) and post-clip (right)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, kind in zip(axes, ("pre", "post"), strict=True):
        blocks = sorted({k.split("/", 1)[1] for _, h in history for k in h if k.startswith(f"grad_norm_{kind}/")})
        cmap = plt.get_cmap("viridis", max(len(blocks), 2))
        for i, b in enumerate(blocks):
            pts = [(s, h[f"grad_norm_{kind}/{b}"]) for s, h in history if f"grad_norm_{kind}/{b}" in h]
            ax.plot([p[0] for p in pts], [max(p[1], 1e-12) for p in pts], color=cmap(i), label=b, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{kind}-clip gradient L2 norm per block")
    axes[0].set_ylabel("L2 norm (log)")
    axes[1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class UnfreezeCallback(TrainerCallback):
    """Gradual unfreezing: at each scheduled step, the top-most frozen block starts training."""

    def __init__(self, frozen_blocks: list[list[torch.nn.Parameter]], at_steps: list[int]) -> None:
        self.frozen = list(frozen_blocks)  # bottom -> top
        self.at_steps = sorted(at_steps)

    def on_step_begin(self, args, state, control, **kwargs):
        while self.at_steps and state.global_step >= self.at_steps[0] and self.frozen:
            self.at_steps.pop(0)
            for p in self.frozen.pop():
                p.requires_grad_(True)


class DwaCallback(TrainerCallback):
    """Dynamic weight averaging: every ``interval`` optimizer steps, the model's task weights are recomputed
    from the mean per-task losses of the last two periods (hf_tune.multitask.dwa_weights)."""

    def __init__(self, meter, names: list[str], interval: int, temperature: float) -> None:
        self.meter, self.names, self.interval, self.temperature = meter, names, interval, temperature
        self.history: list[list[float]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        from hf_tune.multitask import dwa_weights

        if state.global_step % self.interval:
            return
        means = self.meter.take_period()
        if any(n not in means for n in self.names):
            return  # a task was not sampled in this period: keep the current weights
        self.history.append([means[n] for n in self.names])
        if len(self.history) >= 2:
            model.loss_weighting.set_dynamic(dwa_weights(self.history[-1], self.history[-2], self.temperature))
