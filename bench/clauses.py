"""CUAD clause extraction on a CPU budget: the shipped ``contract_clauses_minilm`` recipe, one row per lever taken
out of it, and the frozen-sentence baseline (``../shared/bench/baseline_sentence_cuad.py``), all through the CLI a
user runs and scored on the same held-out contracts.

The contracts of ``cuad_train.jsonl`` are split once (seed 1234, the split of ``bench/cuad.py``) into training and
held-out contracts. Rows (one JSON line each):

- ``baseline_sentence_logreg``: the shared script on ``--baseline-docs`` training contracts;
- ``recipe``: ``hf-tune train recipe=contract_clauses_minilm`` with its own defaults (plus ``--overrides``), then
  ``hf-tune evaluate`` on the held-out contracts; training wall time includes the encoder pass (feature caching);
- ``recipe_no_decoding_tuning``: the same trained model evaluated with every tuned decoding setting off (fragment
  merging, minimum lengths, begin margin, token logit offsets and copies); ``recipe_no_token_tuning``: only the
  token categories' offsets and copies off;
- one row per ablation in ``--rows`` (``ROWS``: the recipe with one lever removed or added), trained on the
  features the recipe row cached (``data.feature_cache``), so their training minutes are head training only;
- ``ceiling``: the best an oracle could score with this representation (gold unit labels for unit categories,
  gold BIO tags on the opening tokens for token categories), decoded the same way, on the held-out contracts.

Usage: python bench/clauses.py [--data ../shared/data/cuad/cuad_train.jsonl] [--heldout 41] [--skip-baseline]
                               [--baseline-docs 100] [--rows no_fine_units no_crf ...] [--feature-cache DIR]
                               [--skip-recipe] [--overrides k=v ...]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from data_paths import BASELINES, require  # noqa: E402
from data_paths import CUAD as DEFAULT_DATA  # noqa: E402  ($HF_TUNE_DATA or ../shared/data)


def split(data: Path, heldout: int, out: Path) -> tuple[Path, Path]:
    lines = [line for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    order = list(range(len(lines)))
    random.Random(1234).shuffle(order)
    train, test = out / "train.jsonl", out / "heldout.jsonl"
    test.write_text("".join(lines[i] + "\n" for i in order[:heldout]))
    train.write_text("".join(lines[i] + "\n" for i in order[heldout:]))
    return train, test


def ceiling(test: Path, model_dir: Path) -> dict:
    """Oracle decisions in the trained model's representation, decoded like its predictions."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    from transformers import AutoTokenizer

    from hf_tune.clause_model import ClauseExtractorModel
    from hf_tune.data.clauses import SEGMENTERS, decode_units, unit_targets
    from hf_tune.data.documents import load_documents
    from hf_tune.data.spans import bio_labels, bio_token_labels, decode_bio, span_metrics
    from hf_tune.heads import inherit_first_subword

    model = ClauseExtractorModel.from_pretrained(str(model_dir))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    c = model.config
    docs = load_documents(str(test), "jsonl")["train"]
    # the token representation's sequences: one over all token categories, or one per category (overlaps kept)
    groups = [[cat] for cat in c.token_categories] if getattr(c, "per_category", False) else [c.token_categories]
    pred = []
    for d in docs:
        units = SEGMENTERS.get(c.segmenter)(d.text)
        y = unit_targets(units, d.spans, c.unit_categories)
        spans = decode_units(y, units, c.unit_categories, [0.5] * len(c.unit_categories))
        enc = tok(d.text[: 12 * c.token_tokens], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = [tuple(o) for o in enc["offset_mapping"][: c.token_tokens]]
        first = [bool(x) for x in _first(enc.word_ids()[: c.token_tokens])]
        for cats in groups:
            names = bio_labels(cats)
            gold_tags = bio_token_labels(
                offsets, [s for s in d.spans if s.category in cats], {n: i for i, n in enumerate(names)}
            )
            tags = inherit_first_subword([names[t] for t in gold_tags], first)
            spans += decode_bio(tags, offsets, np.ones(len(tags)))
        pred.append({s for s, _ in spans})
    m = span_metrics(pred, [set(d.spans) for d in docs], c.unit_categories + c.token_categories)
    return {"row": "ceiling", "exact_f1": m["span_f1_micro"], "overlap_f1": m["overlap_f1"]}


def _first(word_ids):
    from hf_tune.data.spans import first_subword_mask

    return first_subword_mask(word_ids)


def baseline(script: Path, train: Path, test: Path, n_docs: int) -> dict:
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, str(script), str(train), str(test), str(n_docs)], capture_output=True, text=True, check=True
    ).stdout
    rows = re.findall(
        r"thr ([\d.]+): predicted (\d+) spans \(gold (\d+)\), exact F1 ([\d.]+), overlap F1 ([\d.]+)", out
    )
    best = max(rows, key=lambda r: float(r[3]))
    return {
        "row": "baseline_sentence_logreg",
        "train_docs": n_docs,
        "threshold": float(best[0]),
        "exact_f1": float(best[3]),
        "overlap_f1": float(best[4]),
        "predicted_spans": int(best[1]),
        "gold_spans": int(best[2]),
        "wall_s": round(time.time() - t0, 1),
        "note": "best threshold on the held-out contracts themselves (the script's own sweep): optimistic",
    }


# The recipe with one lever taken out (each trained on the recipe row's cached features).
ROWS = {
    "recipe_on_cache": [],  # the recipe's defaults on the cached features: the head-only reference of the rows
    "no_fine_units": ["model.segmenter=sentences"],  # units = sentences / blank lines / numbered lines
    "no_crf": ["model.token_crf=false"],  # names and dates: per-token argmax instead of the CRF path
    "no_context": ["model.context_layers=0"],  # each unit decided alone, no document-level GRU
    "no_pos_weight": ["model.unit_pos_weight=1"],  # no up-weighting of rare positive units (the CRF has no weight)
    "one_bio_sequence": ["model.token_scheme=bio"],  # one BIO sequence over all token categories (overlaps lost)
    "no_casing": ["model.token_casing=false"],  # the uncased encoder's states only
    "no_unit_ngrams": ["model.unit_ngrams=0"],  # the unit head reads the frozen embedding only, no word bag
    "epochs_25": ["training.num_train_epochs=25"],  # measured when the recipe trained 15 (now its default)
    "batch32_epochs30": [  # twice the passes at about the same number of updates (a batch of 32 costs 1.2x one of 16)
        "training.per_device_train_batch_size=32",
        "training.num_train_epochs=30",
    ],
    "epochs_15": ["training.num_train_epochs=15"],  # the recipe's head length before token_chunk made 25 fit
    "no_token_chunk": ["data.token_chunk=0"],  # whole 1,020-token rows: same updates, each batch slower
    "group_by_length": [  # batches of similar-length items: faster epochs, but a third of the token-head updates
        "training.train_sampling_strategy=group_by_length",
        "data.token_chunk=0",
    ],
    # speed.train_minutes cut to 10: the epochs it fits on cached features, whether the command ends in time, what
    # fewer epochs cost (the recipe's 28 fits all 25 epochs on the CI machine)
    "train_minutes_10": ["speed.train_minutes=10"],
    "ema": ["techniques.ema.enabled=true", "techniques.ema.decay=0.998"],  # head weights averaged (~500 steps)
    "epochs_30": ["training.num_train_epochs=30"],  # what 5 more epochs give where the budget has room
    "today_2026_11_25": [  # the recipe before these levers: sentence units, no CRF, no decoding tuning
        "model.segmenter=sentences",
        "model.token_crf=false",
        "data.tune_decoding=false",
    ],
}
KEYS = ("span_f1_micro", "overlap_f1", "jaccard_f1", "aupr", "precision_at_80_recall", "precision_at_90_recall")


def evaluate(run_model: Path, test: Path) -> tuple[dict, float]:
    t0 = time.time()
    ev = subprocess.run(
        ["hf-tune", "evaluate", str(run_model), f"data.path={test}"], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(ev.strip().splitlines()[-1]), time.time() - t0


def recipe(row: str, train: Path, test: Path, run: Path, overrides: list[str], cache: Path | None) -> dict:
    t0 = time.time()
    cmd = ["hf-tune", "train", "recipe=contract_clauses_minilm", f"data.path={train}", f"training.output_dir={run}"]
    if cache is not None:
        cmd.append(f"data.feature_cache={cache}")
    proc = subprocess.run([*cmd, *overrides], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    train_s = time.time() - t0
    val = json.loads(proc.stdout.strip().splitlines()[-1])  # the carved validation split (thresholds tuned on it)
    encoded = [int(n.replace(",", "")) for n in re.findall(r"encoded \d+ documents: ([\d,]+) tokens", proc.stderr)]
    m, eval_s = evaluate(run, test)
    return {
        "row": row,
        "overrides": overrides,
        **{k: m[k] for k in KEYS},
        "predicted_spans": m["predicted_spans"],
        "gold_spans": m["gold_spans"],
        "val_exact_f1": val.get("eval_span_f1_micro"),
        "val_overlap_f1": val.get("eval_overlap_f1"),
        "train_minutes": round(train_s / 60, 2),
        "epochs": val.get("epoch"),
        "features": "computed" if encoded else "cached",
        "encoder_tokens_per_s": round(sum(encoded) / max(train_s, 1e-9), 1) if encoded else None,
        "evaluate_s": round(eval_s, 1),
    }


def without_tuned(run: Path, test: Path, out: Path, row: str, reset: dict) -> dict:
    """The trained model evaluated with some of its tuned decoding settings (config keys) reset."""
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("checkpoint-*", "features"))
    config = out / "model" / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | reset))
    m, _ = evaluate(out, test)
    return {"row": row, **{k: m[k] for k in KEYS}, "predicted_spans": m["predicted_spans"]}


RESETS = {  # what each decoding-off row switches back to the untuned value
    "recipe_no_decoding_tuning": {
        "merge_gap": 0,
        "min_chars": {},
        "begin_margin": 0.0,
        "token_bias": {},
        "token_copies": [],
    },
    "recipe_no_token_tuning": {"token_bias": {}, "token_copies": []},  # unit decoding kept
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CUAD span JSONL")
    ap.add_argument("--baseline", type=Path, default=BASELINES / "baseline_sentence_cuad.py")
    ap.add_argument("--heldout", type=int, default=41)
    ap.add_argument("--baseline-docs", type=int, default=100)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--skip-recipe", action="store_true", help="only the ablation rows (on --feature-cache)")
    ap.add_argument("--feature-cache", type=Path, default=None, help="default: the recipe row's own cache")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hf_tune_bench_clauses_"))
    train, test = split(require(args.data, "cuad"), args.heldout, tmp)
    if not args.skip_baseline:
        print(json.dumps(baseline(require(args.baseline, "baselines"), train, test, args.baseline_docs)), flush=True)
    cache = args.feature_cache
    if not args.skip_recipe:
        run = tmp / "run"
        print(json.dumps(recipe("recipe", train, test, run, args.overrides, cache)), flush=True)
        for row, reset in RESETS.items():
            print(json.dumps(without_tuned(run, test, tmp / row, row, reset)), flush=True)
        print(json.dumps(ceiling(test, run / "model")), flush=True)
        cache = cache or run / "features"
    for row in args.rows:
        print(json.dumps(recipe(row, train, test, tmp / row, [*ROWS[row], *args.overrides], cache)), flush=True)


if __name__ == "__main__":
    main()
