"""Ablation of hf_tune's training techniques on real data, each row against the same recipe without it.

Text rows: ``clause_type_minilm`` (which of the CUAD clause types a clause is; packaged pretrained
MiniLM) on a seeded subset of ../shared/data/cuad/cuad_train.jsonl. Image rows: ``pneumonia_resnet18`` on
../shared/data/pneumoniamnist (3 epochs). Each run is a fresh process through the public recipe API;
metrics are on the validation split. Prints a Markdown table to stderr and one JSON line to stdout.

Usage: python bench/techniques.py [--only NAME ...] [--text-samples 3000] [--image-epochs 3]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from data_paths import CUAD, PNEUMONIA  # noqa: E402  (paths: $HF_TUNE_DATA or ../shared/data)

PNEU = PNEUMONIA

TEXT = [
    "recipe=clause_type_minilm",
    f"data.path={CUAD}",
    "data.max_length=64",
    "training.num_train_epochs=1",
    "training.eval_strategy=no",
    "training.save_strategy=no",
    "training.logging_steps=10",
    "techniques.loss.class_weights=null",
]
IMAGE = [
    "recipe=pneumonia_resnet18",
    f"data.path={PNEU}",
    "training.eval_strategy=no",
    "training.save_strategy=no",
    "techniques.ema.enabled=false",
]

# name -> (group, what it is compared with, overrides)
ROWS: dict[str, tuple[str, str | None, list[str]]] = {
    "text: full fine-tuning (lr 1e-4)": ("text", None, []),
    "text: layer-wise LR decay 0.7": ("text", "text: full fine-tuning (lr 1e-4)", ["techniques.lr.layer_decay=0.7"]),
    "text: freeze embeddings + 3 of 6 layers": (
        "text",
        "text: full fine-tuning (lr 1e-4)",
        ["techniques.freeze.first_n_blocks=3"],
    ),
    "text: LoRA r=8 (lr 1e-3)": (
        "text",
        "text: full fine-tuning (lr 1e-4)",
        ["techniques.lora.enabled=true", "training.learning_rate=1e-3"],
    ),
    "text: lr 3e-3, no clipping": (
        "text",
        None,
        ["training.learning_rate=3e-3", "training.max_grad_norm=0.0", "techniques.monitor.skip_nonfinite=false"],
    ),
    "text: lr 3e-3, clip norm 1.0": (
        "text",
        "text: lr 3e-3, no clipping",
        ["training.learning_rate=3e-3", "training.max_grad_norm=1.0"],
    ),
    "text: lr 3e-3, AGC 0.01": (
        "text",
        "text: lr 3e-3, no clipping",
        ["training.learning_rate=3e-3", "techniques.clipping.mode=agc"],
    ),
    "image: recipe without EMA, CE": ("image", None, []),
    "image: + EMA 0.995": ("image", "image: recipe without EMA, CE", ["techniques.ema.enabled=true"]),
    "image: + focal loss (gamma 2)": (
        "image",
        "image: recipe without EMA, CE",
        ["techniques.loss.name=focal", "training.label_smoothing_factor=0"],
    ),
    "image: + balanced class weights": (
        "image",
        "image: recipe without EMA, CE",
        ["techniques.loss.class_weights=balanced"],
    ),
}


def worker(overrides: list[str]) -> dict:
    sys.path.insert(0, str(REPO))
    from hf_tune.config import load_config
    from hf_tune.recipes import RECIPES

    cfg = load_config(
        [
            *overrides,
            f"training.output_dir={tempfile.mkdtemp(prefix='hf_tune_abl_')}",
            "training.disable_tqdm=true",
            "training.report_to=none",
        ]
    )
    recipe = RECIPES.get(cfg.task)(cfg)
    recipe.setup()
    t = time.perf_counter()
    out = recipe.train()
    wall = time.perf_counter() - t
    m = recipe.trainer.evaluate(recipe.datasets["val"])
    model = recipe.trainer.model
    losses = [h["loss"] for h in recipe.trainer.state.log_history if "loss" in h]
    return {
        "val_accuracy": m.get("eval_accuracy"),
        "val_f1_macro": m.get("eval_f1_macro"),
        "val_roc_auc": m.get("eval_roc_auc"),
        "train_loss_last": losses[-1] if losses else None,
        "train_loss_nonfinite": any(not math.isfinite(x) for x in losses),
        "train_s": round(wall, 1),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "steps": recipe.trainer.state.global_step,
        "train_runtime": out.get("train_runtime"),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", default=None, help="substring filters on row names")
    p.add_argument("--text-samples", type=int, default=3000)
    p.add_argument("--image-epochs", type=int, default=3)
    p.add_argument("--worker", nargs=argparse.REMAINDER)
    a = p.parse_args()
    if a.worker is not None:
        print(json.dumps(worker(a.worker)))
        return
    group_args = {
        "text": [*TEXT, f"data.max_train_samples={a.text_samples}", f"data.max_eval_samples={a.text_samples // 3}"],
        "image": [*IMAGE, f"training.num_train_epochs={a.image_epochs}"],
    }
    results = {}
    for name, (group, _, extra) in ROWS.items():
        if a.only and not any(s in name for s in a.only):
            continue
        r = subprocess.run(
            [sys.executable, __file__, "--worker", *group_args[group], *extra], capture_output=True, text=True, cwd=REPO
        )
        if r.returncode:
            results[name] = {"error": r.stderr.strip().splitlines()[-1][:300]}
        else:
            results[name] = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    lines = [
        "| run | vs | val acc | val macro-F1 | val AUC | last train loss | trainable params | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    for name, r in results.items():
        vs = ROWS[name][1] or ""
        lines.append(
            f"| {name} | {vs} | {fmt(r.get('val_accuracy'))} | {fmt(r.get('val_f1_macro'))} | "
            f"{fmt(r.get('val_roc_auc'))} | {fmt(r.get('train_loss_last'))} | "
            f"{r.get('trainable_params', '-'):,} | {fmt(r.get('train_s'))} |"
            if "error" not in r
            else f"| {name} | {vs} | error: {r['error']} |||||"
        )
    print("\n".join(lines), file=sys.stderr)
    print(json.dumps({"bench": "techniques", "rows": results}))


if __name__ == "__main__":
    main()
