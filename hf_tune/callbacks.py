"""TrainerCallbacks: everything that observes or decorates training without changing the loss."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from hf_tune.config import BaseConfig, save_config


class SaveResolvedConfig(TrainerCallback):
    """Write resolved_config.yaml beside every checkpoint (the audit trail, STYLE rule 11)."""

    def __init__(self, cfg: BaseConfig) -> None:
        self.cfg = cfg

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            save_config(self.cfg, Path(args.output_dir) / f"checkpoint-{state.global_step}")


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
