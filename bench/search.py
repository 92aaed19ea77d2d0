"""Hyperparameter search, LR range test and decision calibration on real data, all through the CLI a user runs.

Sections (``--only``), each printing one JSON line per row:

- ``pneumonia``: ``hf-tune search`` (``--trials`` >= 16, ``--search-epochs`` short epochs, median pruning) over learning
  rate, weight decay, warmup, image size, augmentation scale and EMA decay on ``pneumonia_resnet18``. The search's
  validation split is carved from the training images (the official val split stays out of it); the best recipe is
  then retrained at full length (the shipped recipe's epochs) on the official train/val and compared with the
  shipped ``pneumonia_resnet18`` on val accuracy / ROC-AUC and wall time. Rows: ``pneumonia_search`` (trials,
  pruned count, wall), ``pneumonia_best_full``, ``pneumonia_shipped``.
- ``clause_type``: the same for ``clause_type_minilm`` on CUAD clause types (``--text-samples`` training clauses):
  one search over learning rate, layer-wise decay and frozen blocks, one over learning rate and LoRA rank (the two
  cannot be mixed: LoRA already freezes the base model, which the space validator refuses), the better best
  retrained at full length against the shipped recipe; every text run carves the same held-out test split
  (``data.split_ratios=[0.7,0.15,0.15]``), which no search sees. Rows: ``clause_type_search_full_ft``,
  ``clause_type_search_lora``, ``clause_type_best_full``, ``clause_type_shipped``.
- ``lr_find``: ``hf-tune lr-find`` on both recipes (suggestion vs the recipe's own learning rate, plot path).
- ``calibration``: ``clause_type_minilm`` with ``techniques.calibration`` (prior or per-class offsets, for macro-F1 or
  accuracy, with and without balanced class weights); macro-F1 and accuracy on the held-out test split before and
  after the offsets (the same trained model), and on val.

Usage:
    python bench/search.py [--only pneumonia clause_type lr_find calibration] [--out DIR]
        [--pneumonia ../shared/data/pneumoniamnist/pneumoniamnist_trainval.npz]
        [--cuad ../shared/data/cuad/cuad_train.jsonl]
        [--trials 16] [--search-epochs 3] [--text-trials 8] [--text-samples 3000] [--text-eval-samples 1000]
        [--pneumonia-overrides k=v ...] [--text-overrides k=v ...] [--search-overrides k=v ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
PNEUMONIA = DATA / "pneumoniamnist" / "pneumoniamnist_trainval.npz"
CUAD = DATA / "cuad" / "cuad_train.jsonl"
TEXT_SPLIT = "data.split_ratios=[0.7,0.15,0.15]"


def hf_tune(args: list[str]) -> tuple[dict, float]:
    """One hf-tune command in a fresh process: (its last JSON line, wall seconds)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "hf_tune.cli", *args], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"hf-tune {' '.join(args[:3])} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1]), round(wall, 1)


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def write_yaml(path: Path, recipe: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def train_only_npz(source: Path, out: Path) -> Path:
    """The training images alone: the search carves its validation split from them (the official val stays out)."""
    import numpy as np

    data = np.load(source)
    path = out / "pneumonia_train_only.npz"
    np.savez(path, train_images=data["train_images"], train_labels=data["train_labels"])
    return path


def _search_row(name: str, summary: dict, wall: float) -> dict:
    return {
        "row": name,
        "trials": summary["n_complete"] + summary["n_pruned"] + summary["n_fail"],
        "complete": summary["n_complete"],
        "pruned": summary["n_pruned"],
        "failed": summary["n_fail"],
        "best_value": summary.get("best_value"),
        "best_params": summary.get("best_params"),
        "metric": summary["metric"],
        "wall_s": wall,
        "report": summary["report"],
    }


def _recipe_epochs(name: str) -> float:
    return float(yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())["training"]["num_train_epochs"])


def pneumonia(a, out: Path) -> None:
    search = {
        "metric": "eval_accuracy",
        "direction": "maximize",
        "n_trials": a.trials,
        "sampler": "tpe",
        "sampler_startup_trials": max(4, a.trials // 3),
        "pruner": "median",
        "pruner_startup_trials": 4,
        "space": {
            "training.learning_rate": {"type": "float", "low": 3.0e-4, "high": 1.0e-2, "log": True},
            "training.weight_decay": {"type": "float", "low": 1.0e-3, "high": 0.2, "log": True},
            "training.warmup_steps": {"type": "float", "low": 0.0, "high": 0.15},
            "model.image_size": {"type": "categorical", "choices": [48, 64, 96]},
            "data.augmentation.scale": {"type": "categorical", "choices": [[0.6, 1.0], [0.75, 1.0], [0.9, 1.0]]},
            "techniques.ema.decay": {"type": "categorical", "choices": [0.99, 0.995, 0.998]},
        },
    }
    recipe = {
        "base": "pneumonia_resnet18",
        "data": {"path": str(train_only_npz(Path(a.pneumonia), out)), "split_ratios": [0.9, 0.1, 0.0]},
        "training": {
            "output_dir": str(out / "pneumonia_search"),
            "num_train_epochs": a.search_epochs,
            "save_strategy": "no",
            "disable_tqdm": True,
        },
        "search": search,
    }
    path = write_yaml(out / "pneumonia_search.yaml", recipe)
    summary, wall = hf_tune(["search", f"recipe={path}", *a.pneumonia_overrides, *a.search_overrides])
    emit(_search_row("pneumonia_search", summary, wall))
    full = f"training.num_train_epochs={a.full_epochs or _recipe_epochs('pneumonia_resnet18')}"
    common = [f"data.path={a.pneumonia}", "training.disable_tqdm=true", *a.pneumonia_overrides]
    for row, args in (
        ("pneumonia_best_full", [f"recipe={summary['best_recipe']}", full]),
        ("pneumonia_shipped", ["recipe=pneumonia_resnet18"]),
    ):
        m, wall = hf_tune(["train", *args, *common, f"training.output_dir={out / row}", "overwrite=true"])
        emit({"row": row, "val_acc": m.get("eval_accuracy"), "val_auc": m.get("eval_roc_auc"), "wall_s": wall})


def _text_base(a) -> list[str]:
    return [
        f"data.path={a.cuad}",
        TEXT_SPLIT,
        f"data.max_train_samples={a.text_samples}",
        f"data.max_eval_samples={a.text_eval_samples}",
        "data.max_length=64",
        "training.disable_tqdm=true",
        *a.text_overrides,
    ]


def clause_type(a, out: Path) -> None:
    base = {
        "base": "clause_type_minilm",
        "training": {
            "num_train_epochs": 1,
            "eval_strategy": "steps",
            "eval_steps": max(10, a.text_samples // 32 // 3),  # three evaluations per trial: pruning can act twice
            "save_strategy": "no",
        },
    }
    lr = {"type": "float", "low": 2.0e-5, "high": 1.0e-3, "log": True}
    spaces = {
        "clause_type_search_full_ft": {
            "training.learning_rate": lr,
            "techniques.lr.layer_decay": {"type": "float", "low": 0.6, "high": 1.0},
            "techniques.freeze.first_n_blocks": {"type": "int", "low": 0, "high": 4},
        },
        "clause_type_search_lora": {
            "training.learning_rate": {**lr, "low": 1.0e-4, "high": 5.0e-3},
            "techniques.lora.r": {"type": "categorical", "choices": [4, 8, 16, 32]},
        },
    }
    results = {}
    for name, space in spaces.items():
        recipe = {
            **base,
            "training": {**base["training"], "output_dir": str(out / name)},
            "search": {
                "metric": "eval_f1_macro",
                "n_trials": a.text_trials,
                "sampler_startup_trials": max(3, a.text_trials // 3),
                "pruner": "median",
                "pruner_startup_trials": 2,
                "space": space,
            },
        }
        if name.endswith("lora"):
            recipe["techniques"] = {"lora": {"enabled": True}}
        path = write_yaml(out / f"{name}.yaml", recipe)
        summary, wall = hf_tune(["search", f"recipe={path}", *_text_base(a), *a.search_overrides])
        results[name] = summary
        emit(_search_row(name, summary, wall))
    best = max(results.values(), key=lambda s: s.get("best_value") or -1.0)
    full = f"training.num_train_epochs={a.full_epochs or _recipe_epochs('clause_type_minilm')}"
    for row, args in (
        ("clause_type_best_full", [f"recipe={best['best_recipe']}", full, "training.eval_strategy=epoch"]),
        ("clause_type_shipped", ["recipe=clause_type_minilm"]),
    ):
        m, wall = hf_tune(["train", *args, *_text_base(a), f"training.output_dir={out / row}", "overwrite=true"])
        emit(
            {
                "row": row,
                "from": best["study"] if row.endswith("full") else "shipped",
                **_text_metrics(m),
                "wall_s": wall,
            }
        )


def _text_metrics(m: dict) -> dict:
    keys = ("eval_f1_macro", "eval_accuracy", "test_f1_macro", "test_accuracy")
    return {k: m.get(k) for k in keys}


def lr_find(a, out: Path) -> None:
    for row, args in (
        ("lr_find_pneumonia", ["recipe=pneumonia_resnet18", f"data.path={a.pneumonia}", *a.pneumonia_overrides]),
        ("lr_find_clause_type", ["recipe=clause_type_minilm", *_text_base(a)]),
    ):
        m, wall = hf_tune(["lr-find", *args, f"output={out / row}", "steps=100"])
        emit(
            {
                "row": row,
                **{
                    k: m[k]
                    for k in ("suggested_lr", "min_div_10_lr", "recipe_learning_rate", "steps", "stopped", "plot")
                },
                "wall_s": wall,
            }
        )


CALIBRATION_ROWS = {
    "balanced weights + prior (f1_macro)": ["techniques.calibration.method=prior"],
    "balanced weights + per-class offsets (f1_macro)": ["techniques.calibration.method=offsets"],
    "balanced weights + prior (accuracy)": [
        "techniques.calibration.method=prior",
        "techniques.calibration.metric=accuracy",
    ],
    "no class weights + prior (f1_macro)": [
        "techniques.calibration.method=prior",
        "techniques.loss.class_weights=null",
    ],
}


def calibration(a, out: Path) -> None:
    for i, (variant, extra) in enumerate(CALIBRATION_ROWS.items()):
        run = out / f"calibration_{i}"
        args = ["train", "recipe=clause_type_minilm", *_text_base(a), "techniques.calibration.enabled=true", *extra]
        m, wall = hf_tune([*args, f"training.output_dir={run}", "overwrite=true"])
        rec = json.loads((run / "model" / "metrics.json").read_text())["calibration"]
        row = {"row": "calibration_clause_type", "variant": variant, "prior_strength": rec["prior_strength"]}
        for split in ("test", "val"):
            for when in ("before", "after"):
                for metric in ("f1_macro", "accuracy"):
                    row[f"{split}_{metric}_{'without' if when == 'before' else 'with'}"] = rec[split][when][metric]
        emit({**row, "wall_s": wall})


SECTIONS = {"pneumonia": pneumonia, "clause_type": clause_type, "lr_find": lr_find, "calibration": calibration}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", choices=list(SECTIONS), default=list(SECTIONS))
    p.add_argument("--out", default=None, help="folder for the runs (default: a new temporary folder)")
    p.add_argument("--pneumonia", default=str(PNEUMONIA))
    p.add_argument("--cuad", default=str(CUAD))
    p.add_argument("--trials", type=int, default=16, help="pneumonia search trials")
    p.add_argument("--search-epochs", type=float, default=3, help="epochs per pneumonia trial")
    p.add_argument("--full-epochs", type=float, default=None, help="retrain length (default: the shipped recipe's)")
    p.add_argument("--text-trials", type=int, default=8, help="trials of each clause-type search")
    p.add_argument("--text-samples", type=int, default=3000)
    p.add_argument("--text-eval-samples", type=int, default=1000)
    p.add_argument("--pneumonia-overrides", nargs="*", default=[], help="k=v for every pneumonia run")
    p.add_argument("--text-overrides", nargs="*", default=[], help="k=v for every clause-type run")
    p.add_argument("--search-overrides", nargs="*", default=[], help="k=v for the searches only")
    a = p.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="hf_tune_bench_search_")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in a.only:
        SECTIONS[name](a, out)


if __name__ == "__main__":
    main()
