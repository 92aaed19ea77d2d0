"""Pneumonia benchmark: hf_tune vs plain Trainer (../shared/bench/baseline_trainer_image.py).

1. Throughput parity: the baseline and hf_tune on identical settings (timm resnet18, random init, 1-channel
   64 px input, batch 64, 1 epoch, AdamW lr 1e-3, 20 warmup steps, cosine, clip 1.0, no augmentation), run
   alternately ``--repeats`` times in fresh processes; medians of train samples/s (wall time around
   ``train()`` in both, as the baseline measures it).
2. Quality: the recommended ``pneumonia_resnet18`` recipe, val accuracy / ROC-AUC and wall time.

Utilisation: training FLOP/s (3 x the forward FLOPs of resnet18's convolutions and linear layer per image,
hf_tune.flops.conv_linear_forward_flops) against this machine's fp32 2048x2048 matmul peak, measured before
every repeat (median).

Prints one JSON line. Usage:
    python bench/pneumonia.py [--data ../shared/data/pneumoniamnist/pneumoniamnist_trainval.npz]
                              [--repeats 3] [--skip-recipe] [--recipe-overrides k=v ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from data_paths import BASELINES, require  # noqa: E402
from data_paths import PNEUMONIA as DEFAULT_DATA  # noqa: E402  ($HF_TUNE_DATA or ../shared/data)

PARITY = [
    "model.name=resnet18",
    "model.in_chans=1",
    "model.image_size=64",
    "data.augment=false",
    "training.num_train_epochs=1",
    "training.per_device_train_batch_size=64",
    "training.learning_rate=1e-3",
    "training.warmup_steps=20",
    "training.weight_decay=0.0",
    "training.label_smoothing_factor=0.0",
    "training.lr_scheduler_type=cosine",
    "training.max_grad_norm=1.0",
    "training.logging_steps=20",
    "training.save_strategy=no",
    "training.eval_strategy=no",
    "training.load_best_model_at_end=false",
    "techniques.ema.enabled=false",
    "training.seed=0",
    "training.use_cpu=true",
    "training.dataloader_num_workers=0",
    "training.disable_tqdm=true",
]


def worker(mode: str, data: str, extra: list[str]) -> dict:
    """Run in a fresh process: one hf_tune training through the public recipe API."""
    sys.path.insert(0, str(REPO))
    from hf_tune.config import load_config
    from hf_tune.recipes import RECIPES

    out = tempfile.mkdtemp(prefix=f"hf_tune_bench_{mode}_")
    overrides = (PARITY if mode == "parity" else []) + extra
    cfg = load_config(["recipe=pneumonia_resnet18", f"data.path={data}", f"training.output_dir={out}", *overrides])
    t0 = time.perf_counter()
    recipe = RECIPES.get(cfg.task)(cfg)
    recipe.setup()
    t1 = time.perf_counter()
    recipe.train()
    t2 = time.perf_counter()
    m = recipe.trainer.evaluate(recipe.datasets["val"])
    n = len(recipe.datasets["train"]) * float(cfg.training["num_train_epochs"])
    return {
        "train_samples_per_s": round(n / (t2 - t1), 1),
        "val_acc": round(m["eval_accuracy"], 4),
        "val_auc": round(m["eval_roc_auc"], 4),
        "train_wall_s": round(t2 - t1, 1),
        "total_wall_s": round(time.perf_counter() - t0, 1),
        "epochs": cfg.training["num_train_epochs"],
        "image_size": cfg.model.image_size,
        "in_chans": cfg.model.in_chans,
    }


def _train_flops_per_image(image_size: int, in_chans: int = 1) -> float:
    import timm
    import torch

    sys.path.insert(0, str(REPO))
    from hf_tune.flops import TRAIN_FORWARD_MULTIPLE, conv_linear_forward_flops

    model = timm.create_model("resnet18", pretrained=False, in_chans=in_chans, num_classes=2).eval()
    return TRAIN_FORWARD_MULTIPLE * conv_linear_forward_flops(model, torch.zeros(1, in_chans, image_size, image_size))


def _utilisation(samples_per_s: float, flops_per_image: float, peaks: list[float]) -> dict:
    from hf_tune.flops import utilisation

    return utilisation(samples_per_s * flops_per_image, 1.0, statistics.median(peaks))


def _run(cmd: list[str]) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(DEFAULT_DATA), help="PneumoniaMNIST .npz with train and val arrays")
    p.add_argument("--baseline", default=str(BASELINES / "baseline_trainer_image.py"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-recipe", action="store_true")
    p.add_argument("--recipe-overrides", nargs="*", default=[])
    p.add_argument("--worker", choices=["parity", "recipe"])
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.data, a.recipe_overrides)))
        return
    require(a.data, "pneumoniamnist")
    require(a.baseline, "baselines")
    me = [sys.executable, __file__, "--data", a.data, "--worker"]
    sys.path.insert(0, str(REPO))
    from hf_tune.flops import measure_matmul_peak

    base_runs, ours, peaks = [], [], []
    for _ in range(a.repeats):  # alternate so drift in machine speed hits both equally
        peaks.append(measure_matmul_peak(2048))
        base_runs.append(_run([sys.executable, str(a.baseline), a.data, a.data, "64", "1"]))
        ours.append(_run([*me, "parity"]))
    b_tp = statistics.median(r["train_samples_per_s"] for r in base_runs)
    o_tp = statistics.median(r["train_samples_per_s"] for r in ours)
    result = {
        "bench": "pneumonia",
        "data": a.data,
        "repeats": a.repeats,
        "baseline": {
            "train_samples_per_s": b_tp,
            "val_acc": base_runs[-1]["test_acc"],
            "val_auc": base_runs[-1]["test_auc"],
            "runs": [r["train_samples_per_s"] for r in base_runs],
        },
        "hf_tune_same_settings": {
            "train_samples_per_s": o_tp,
            "val_acc": ours[-1]["val_acc"],
            "val_auc": ours[-1]["val_auc"],
            "runs": [r["train_samples_per_s"] for r in ours],
        },
        "throughput_ratio": round(o_tp / b_tp, 4),
        "cpu_fp32_matmul_peak_gflops_runs": [round(x / 1e9, 1) for x in peaks],
    }
    parity_flops = _train_flops_per_image(64)  # PARITY: resnet18, 1 channel, 64 px, for both scripts
    result["baseline"]["utilisation"] = _utilisation(b_tp, parity_flops, peaks)
    result["hf_tune_same_settings"]["utilisation"] = _utilisation(o_tp, parity_flops, peaks)
    if not a.skip_recipe:
        rec = _run([*me, "recipe", "--recipe-overrides", *a.recipe_overrides])
        flops = _train_flops_per_image(rec["image_size"], rec["in_chans"])
        rec["utilisation"] = _utilisation(rec["train_samples_per_s"], flops, peaks)
        result["hf_tune_recipe"] = rec
    print(json.dumps(result))


if __name__ == "__main__":
    main()
