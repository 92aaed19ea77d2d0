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
