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
