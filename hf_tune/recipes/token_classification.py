"""Token classification over long documents (clause tagging) with any BERT-family encoder.

Documents are tokenized whole, cut into overlapping windows for training, and stitched back at
evaluation/prediction so every token gets exactly one decision, from the window where it is most
central. What a token predicts (BIO tags, or B/I sigmoids per category) is the tagging head's business
(hf_tune.heads); metrics are exact-match character spans (see hf_tune.data.spans.span_metrics).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hf_tune.augment import AugmentedTrainSet, build_augmenter, eda
from hf_tune.crf import CRF, crf_tagging_loss
from hf_tune.data.batching import longest_first
from hf_tune.data.clauses import cuad_metrics
from hf_tune.data.documents import (
    limit_splits,
    load_document_splits,
    prediction_row,
    read_documents_for_prediction,
    subset,
)
from hf_tune.data.spans import (
    IGNORE,
    Document,
    Span,
    StitchPlan,
    first_subword_mask,
    seqeval_f1,
    span_metrics,
    stitch_owner,
    stitch_plan,
    window_starts,
)
from hf_tune.data.splits import carve, concat_items, select, take_items
from hf_tune.errors import DataError
from hf_tune.heads import HEADS, TaggingHead
from hf_tune.losses import masked_bce
from hf_tune.modeling import check_positions, load_pretrained, resolve_model_name
from hf_tune.recipes.base import Recipe, SmokeRun, register_kind
from hf_tune.schema import BaseConfig, DataSplitsConfig, KindSpec, LossConfig, TextAugmentConfig, TextModelConfig
from hf_tune.techniques import log


@dataclass
class TokenDataConfig(DataSplitsConfig):
    path: str | None = None
    """Training documents: span JSONL, a CoNLL column file, or a datasets name/saved folder."""
    format: str = "auto"
    """jsonl (character spans), conll (token + tag columns), hf (datasets token/tag columns); auto: by path."""
    text_field: str = "text"
    spans_field: str = "spans"
    start_key: str = "start"
    end_key: str = "end"
    category_key: str = "category"
    tokens_column: str = "tokens"
    tags_column: str = "ner_tags"
    categories: list[str] | None = None
    """Categories in label order; None: every category seen in the training data, sorted."""
    scheme: Literal["bio", "bio_crf", "multilabel"] = "bio"
    """bio: one label per token, overlapping spans resolved first-come (the bio_tagging head);
    bio_crf: the same labels scored and decoded as whole paths by a linear-chain CRF (bio_crf_tagging: no
    fragmented or I-first entities; decoding is per document, over its first subwords);
    multilabel: B/I sigmoids per category, overlaps kept (the multilabel_tagging head)."""
    label_all_subwords: bool = False
    """false: only the first subword of each word carries a label (the rest inherit at prediction)."""
    window: int = 256
    """Tokens per window including [CLS] and [SEP]."""
    stride: int = 128
    """Step between window starts; windows overlap by window - 2 - stride tokens."""
    eval_stride: int | None = None
    """Step between window starts for validation, test, ``hf-tune evaluate`` and ``predict``; None: data.stride.
    Overlap helps training (every token is seen with context on both sides) more than it helps prediction:
    window - 2 reads each token once, so evaluation does about window/stride times less work (measured in
    docs/benchmarks.md, "Speed"), at the price of less context for the tokens at window edges."""
    negative_window_keep: float = 1.0
    """Share of training windows without any span to keep (seeded); lower it when 'O' dominates."""
    max_train_docs: int | None = None
    """Use a seeded subset of the training documents (CPU-sized runs)."""
    max_eval_docs: int | None = None
    max_train_eval_docs: int | None = None
    """Evaluations during training (training.eval_strategy) score a seeded subset of this many validation
    documents; the evaluation after training scores all of them. None: every evaluation scores all."""
    threshold: float = 0.5
    """multilabel: sigmoid threshold for B/I decisions."""
    augment: TextAugmentConfig = field(default_factory=TextAugmentConfig)
    """EDA augmentation of training windows, made afresh each time a window is drawn (never at evaluation);
    span-safe: labels move with their words and no span loses its first or last word."""

    @property
    def eval_stride_or_stride(self) -> int:
        return self.stride if self.eval_stride is None else self.eval_stride

    def head_name(self) -> str:
        return {"bio": "bio_tagging", "bio_crf": "bio_crf_tagging", "multilabel": "multilabel_tagging"}[self.scheme]


@dataclass
class TokenClassificationConfig(BaseConfig):
    spec = KindSpec(
        name="token_classification",
        modality="text",
        headline_metric="span_f1_micro",
        pipeline_tag="token-classification",
        example_input='"This Agreement shall be governed by the laws of the State of Delaware."',
        pipeline_kwargs='aggregation_strategy="first"',
        predict_note=" (long documents are windowed and stitched)",
        lora_task_type="TOKEN_CLS",
    )
    model: TextModelConfig = field(default_factory=TextModelConfig)
    data: TokenDataConfig = field(default_factory=TokenDataConfig)

    def validate(self) -> list[str]:
        errors = super().validate() + self.data.split_errors() + self.data.augment.errors() + self.model.errors()
        d = self.data
        if not 0 < d.stride <= d.window - 2:
            errors.append(f"data.stride must be in (0, data.window - 2], got stride={d.stride}, window={d.window}")
        if d.eval_stride is not None and not 0 < d.eval_stride <= d.window - 2:
            errors.append(
                f"data.eval_stride must be in (0, data.window - 2] or null (= data.stride), got "
                f"eval_stride={d.eval_stride}, window={d.window}"
            )
        if not 0.0 <= d.negative_window_keep <= 1.0:
            errors.append("data.negative_window_keep must be in [0, 1]")
        if d.scheme == "bio_crf":
            if self.techniques.loss != LossConfig():
                errors.append(
                    "techniques.loss: data.scheme=bio_crf trains on the CRF's path likelihood; focal loss, class "
                    "weights and label smoothing do not apply (use data.scheme=bio for them)"
                )
            if self.techniques.lora.enabled:
                errors.append("techniques.lora: data.scheme=bio_crf is not available with LoRA yet; use bio")
            if self.training.get("label_smoothing_factor", 0):
                errors.append("training.label_smoothing_factor does not apply to data.scheme=bio_crf; drop it")
            if self.techniques.distill.teacher is not None:
                errors.append(
                    "techniques.distill: a CRF scores whole tag paths, not per-token distributions to match; distil "
                    "with data.scheme=bio (or multilabel)"
                )
        elif not HEADS.get(d.head_name()).uses_class_loss and self.techniques.loss.class_weights is not None:
            errors.append("techniques.loss.class_weights applies to the bio scheme only (multilabel uses sigmoids)")
        return errors


CRF_CONFIG_KEY = "hf_tune_crf_labels"


def attach_crf(model, labels: list[str], model_dir: Path | None = None) -> None:
    """Give a transformers token-classification model a CRF over its labels (``model.crf``). Its parameters are
    saved with the model's own (``crf.*`` in model.safetensors) and its labels in config.json, so
    :meth:`TokenClassificationRecipe.load_model` can put it back; ``model_dir``: load the saved scores."""
    model.crf = CRF(labels).to(model.device)
    model.config.update({CRF_CONFIG_KEY: list(labels)})
    if model_dir is not None:
        from safetensors.torch import load_file

        weights = load_file(str(model_dir / "model.safetensors"))
        state = {k.removeprefix("crf."): v for k, v in weights.items() if k.startswith("crf.")}
        if set(state) != {"transitions", "start"}:
            raise DataError(f"{model_dir}: config.json names a CRF but model.safetensors has no crf.* weights")
        model.crf.load_state_dict(state)


@dataclass
class EncodedDoc:
    doc: Document
    ids: list[int]
    offsets: list[tuple[int, int]]
    first: list[bool]
    windows: list[tuple[int, int]]


def encode_document(tokenizer, doc: Document, window: int, stride: int) -> EncodedDoc:
    """Tokenize the whole text (no truncation, no special tokens) and lay windows over it."""
    enc = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    return EncodedDoc(
        doc,
        enc["input_ids"],
        offsets,
        first_subword_mask(enc.word_ids()),
        window_starts(len(offsets), window - 2, stride),
    )


class TokenCollator:
    """Pads input ids with the tokenizer (to the batch's longest window, rounded up to ``pad_to_multiple_of``)
    and token labels with the head's own collation (-100 padding)."""

    def __init__(self, tokenizer, head: TaggingHead, pad_to_multiple_of: int | None = None) -> None:
        self.tokenizer, self.head, self.pad_to_multiple_of = tokenizer, head, pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad(
            [{k: v for k, v in f.items() if k != "labels"} for f in features],
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_tensors="pt",
        )
        if "labels" in features[0]:
            batch["labels"] = self.head.collate([f["labels"] for f in features], batch["input_ids"].shape[1])
        return batch


@register_kind
class TokenClassificationRecipe(Recipe):
    config_cls = TokenClassificationConfig
    cfg: TokenClassificationConfig
    # a document's last window is short and CoNLL sentences vary widely: batches of similar lengths pad little
    training_defaults = {"train_sampling_strategy": "group_by_length"}
    predict_chunk_batches = 32
    """Prediction sorts the windows of this many batches' worth of documents by length at a time (memory stays
    bounded on a folder of any size; a longer document is one chunk of its own)."""

    @property
    def head(self) -> TaggingHead:
        return HEADS.get(self.cfg.data.head_name())

    # ---------------------------------------------------------------- data
    def _source_kwargs(self) -> dict[str, str]:
        """The data.* field/column names every document loader accepts."""
        keys = ("text_field", "spans_field", "start_key", "end_key", "category_key", "tokens_column", "tags_column")
        return {k: getattr(self.cfg.data, k) for k in keys}

    def _source_splits(self) -> dict[str, list[Document]]:
        d = self.cfg.data
        return load_document_splits(d.path, d.val_path, d.test_path, d.format, **self._source_kwargs())

    def _carved(self, splits: dict[str, list[Document]]) -> dict[str, list[Document]]:
        d = self.cfg.data
        return carve(splits, d.split_ratios, d.split_seed, d.carve, take_items)

    def prepare_data(self) -> None:
        from transformers import AutoTokenizer

        d = self.cfg.data
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(self.cfg.model.name))
        check_positions(self.cfg.model.name, d.window, "data.window")
        splits = limit_splits(
            self._carved(self._source_splits()), d.max_train_docs, d.max_eval_docs, d.split_seed, d.path
        )
        seen = sorted({s.category for doc in splits["train"] for s in doc.spans})
        self.categories = list(d.categories) if d.categories else seen
        unknown = sorted(set(seen) - set(self.categories))
        if unknown:
            raise DataError(
                f"{d.path}: training spans use categories {unknown} missing from data.categories; "
                f"add them or drop data.categories to use every category seen"
            )
        if not self.categories:
            raise DataError(f"{d.path}: the training documents have no spans")
        self.label_names = self.head.label_names(self.categories)
        self.encoded = {
            n: [
                encode_document(self.tokenizer, doc, d.window, d.stride if n == "train" else d.eval_stride_or_stride)
                for doc in docs
            ]
            for n, docs in splits.items()
        }
        self.datasets = {"train": self._train_windows(self.encoded["train"])}
        augmenter = build_augmenter(d.augment)
        if augmenter is not None:
            self.datasets["train"] = self._augmented(self.datasets["train"], *augmenter)
        for s in ("val", "test"):
            if s in self.encoded:
                self.datasets[s] = self._eval_windows(self.encoded[s])
        self._plans: dict[str, tuple[list[EncodedDoc], StitchPlan, list[set[Span]]]] = {}
        if d.max_train_eval_docs is not None and len(self.encoded.get("val", [])) > d.max_train_eval_docs:
            self.encoded["val_subset"] = subset(self.encoded["val"], d.max_train_eval_docs, d.split_seed)
        self._metric_split = "val"
        n_tok = sum(len(e.ids) for e in self.encoded["train"])
        log(
            f"data: {', '.join(f'{k}={len(v)} docs' for k, v in splits.items())}; {n_tok} train tokens, "
            f"{len(self.datasets['train'])} train windows; {len(self.categories)} categories; head={self.head.name}"
        )

    def _token_labels(self, e: EncodedDoc) -> np.ndarray:
        # Eval documents may hold categories the model does not know: they get no label here but stay
        # in the gold spans, where they count as misses.
        known = set(self.categories)
        labels = self.head.token_labels(e.offsets, [s for s in e.doc.spans if s.category in known], self.categories)
        if not self.cfg.data.label_all_subwords:
            labels[~np.asarray(e.first, dtype=bool)] = IGNORE
        return labels

    def _window_feature(self, e: EncodedDoc, a: int, b: int, labels: np.ndarray | None = None) -> dict[str, Any]:
        tok = self.tokenizer
        ids = [tok.cls_token_id, *e.ids[a:b], tok.sep_token_id]
        f: dict[str, Any] = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if labels is not None:
            pad = np.full((1, *labels.shape[1:]), IGNORE, dtype=labels.dtype)
            f["labels"] = np.concatenate([pad, labels[a:b], pad])
        return f

    def _train_windows(self, encoded: list[EncodedDoc]) -> list[dict]:
        rng = np.random.default_rng(self.cfg.data.split_seed)
        keep = self.cfg.data.negative_window_keep
        out, self._train_sources = [], []
        for e in encoded:
            labels = self._token_labels(e)
            for a, b in e.windows:
                if self.head.is_positive(labels[a:b]) or rng.random() < keep:
                    out.append(self._window_feature(e, a, b, labels))
                    self._train_sources.append((e, a, b))
        return out

    def _augmented(self, windows: list[dict], synonyms, rates) -> AugmentedTrainSet:
        """Training windows whose augmented copies are made from the window's text and the spans in it, then
        tokenised and labelled exactly like the original windows (truncated to the window if they grew)."""
        d, known = self.cfg.data, set(self.categories)

        def make(i: int, rng) -> dict[str, Any]:
            e, a, b = self._train_sources[i]
            c0, c1 = e.offsets[a][0], e.offsets[b - 1][1]
            inside = [s for s in e.doc.spans if s.category in known and s.start < c1 and s.end > c0]
            ranges = [(max(s.start, c0) - c0, min(s.end, c1) - c0) for s in inside]
            text, moved = eda(e.doc.text[c0:c1], ranges, rng, synonyms, rates)
            # spans that began before the window continue into it (I- at its first token, as in the original):
            # a one-token prefix they cover is labelled with their start, then cut off again
            pre = ". " if any(s.start < c0 for s in inside) else ""
            spans = [
                Span(0 if s.start < c0 else x + len(pre), y + len(pre), s.category)
                for (x, y), s in zip(moved, inside, strict=True)
                if x < y
            ]
            new = encode_document(self.tokenizer, Document(pre + text, spans, e.doc.id), d.window, d.stride)
            p = sum(1 for o in new.offsets if o[1] <= len(pre.strip()))
            return self._window_feature(new, p, min(len(new.ids), p + d.window - 2), self._token_labels(new))

        log(f"augmentation: {d.augment.prob:.0%} of training windows per draw (EDA, span-safe, {rates})")
        return AugmentedTrainSet(windows, make, d.augment.prob)

    def _eval_windows(self, encoded: list[EncodedDoc]) -> list[dict]:
        # order matters: compute_metrics maps predictions back to (document, window) in this order
        out = []
        for e in encoded:
            labels = self._token_labels(e)
            out += [self._window_feature(e, a, b, labels) for a, b in e.windows]
        return out

    # ---------------------------------------------------------------- model
    def build_model(self) -> None:
        from transformers import AutoModelForTokenClassification

        kwargs = {
            "num_labels": len(self.label_names),
            "id2label": dict(enumerate(self.label_names)),
            "label2id": {n: i for i, n in enumerate(self.label_names)},
        }
        if self.cfg.model.dropout is not None:
            kwargs["classifier_dropout"] = self.cfg.model.dropout
        self.model = load_pretrained(
            AutoModelForTokenClassification,
            self.cfg.model.name,
            pretrained_file=self.cfg.model.pretrained_file,
            num_layers=self.cfg.model.num_layers,
            layer_pick=self.cfg.model.layer_pick,
            **kwargs,
            **self.cfg.model.kwargs(),
        )
        if self.head.name == "bio_crf_tagging":
            attach_crf(self.model, self.label_names)

    def task_loss(self, label_smoothing: float):
        if self.head.name == "bio_crf_tagging":
            return partial(crf_tagging_loss, self.model.crf)
        if self.head.uses_class_loss:
            return super().task_loss(label_smoothing)
        lc = self.cfg.techniques.loss  # sigmoid tags: masked BCE, focal when asked (the model has no such loss)
        gamma = lc.focal_gamma if lc.name == "focal" else 0.0
        return lambda logits, labels: masked_bce(logits, labels, gamma)

    def train_labels(self):
        ds = self.datasets["train"]
        return np.concatenate([np.asarray(e["labels"]).reshape(-1) for e in getattr(ds, "base", ds)])

    def data_collator(self):
        from hf_tune.speed import pad_multiple

        return TokenCollator(
            self.tokenizer, self.head, pad_multiple(self.cfg.speed.pad_to_multiple_of, cuda=torch.cuda.is_available())
        )

    def training_eval_dataset(self):
        """Trainer's evaluations during training: the val windows, or those of ``data.max_train_eval_docs``
        documents (compute_metrics maps them back through the ``val_subset`` split until :meth:`evaluate`
        switches to whole splits)."""
        if "val_subset" not in self.encoded:
            return self.datasets.get("val")
        self._metric_split = "val_subset"
        return self._eval_windows(self.encoded["val_subset"])

    def processing_class(self):
        return self.tokenizer

    def preprocess_logits(self):
        # Reduce logits before Trainer gathers them: (tag, probability) or sigmoid probabilities per token.
        return lambda logits, labels: self.head.reduce(logits)

    def data_summary(self) -> dict[str, dict[str, int]]:
        out = {f"{k} documents": len(v) for k, v in self.encoded.items()}
        return {"": out | {f"{k} windows": len(v) for k, v in self.datasets.items()}}

    def use_metric_split(self, split: str) -> None:
        """compute_metrics maps window predictions back to the documents of this split."""
        self._metric_split = split

    def _metric_plan(self, split: str) -> tuple[list[EncodedDoc], StitchPlan, list[set[Span]]]:
        """A split's documents, where each token reads its decision, and the gold spans: fixed once the data
        is prepared, so computed at the first evaluation of the split and reused by every later one."""
        if split not in self._plans:
            docs = self.encoded.get(split, [])
            plan = stitch_plan([e.windows for e in docs], [len(e.ids) for e in docs])
            self._plans[split] = (docs, plan, [set(e.doc.spans) for e in docs])
        return self._plans[split]

    # ---------------------------------------------------------------- decoding and metrics
    def decode(self, e: EncodedDoc, window_outputs: list[np.ndarray]) -> list[tuple[Span, float]]:
        """Stitch per-window outputs (tokens only, no [CLS]/[SEP]) into spans of the whole document."""
        n = len(e.ids)
        if n == 0:
            return []
        owner = stitch_owner(e.windows, n)
        tok = np.zeros((n, window_outputs[0].shape[-1]), dtype=np.float32)
        for w, (a, b) in enumerate(e.windows):
            mine = np.flatnonzero(owner[a:b] == w)
            tok[a + mine] = window_outputs[w][mine]
        return self.decode_tokens(e, tok)

    def decode_tokens(self, e: EncodedDoc, tok: np.ndarray) -> list[tuple[Span, float]]:
        """Stitched per-token outputs of one document (one row per token) -> its (span, score) pairs."""
        if len(e.ids) == 0:
            return []
        d = self.cfg.data
        first = None if d.label_all_subwords else e.first
        crf = getattr(self.model, "crf", None)
        extra = {"crf": crf} if crf is not None else {}  # heads without a CRF keep the plain signature
        return self.head.decode(
            np.asarray(tok, dtype=np.float32), e.offsets, first, self.categories, d.threshold, **extra
        )

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        preds = np.asarray(eval_pred.predictions)
        docs, plan, gold_sets = self._metric_plan(self._metric_split)
        if plan.n_windows != len(preds):
            raise RuntimeError(
                f"{len(preds)} window predictions for {plan.n_windows} windows: evaluation order changed"
            )
        tok = preds[plan.rows, plan.cols]  # every document's stitched token outputs in one gather
        bounds = zip(plan.doc_starts[:-1], plan.doc_starts[1:], strict=True)
        pred_sets = [{s for s, _ in self.decode_tokens(e, tok[a:b])} for e, (a, b) in zip(docs, bounds, strict=True)]
        return self._metrics(pred_sets, gold_sets, [e.doc for e in docs])

    def _metrics(self, pred_sets, gold_sets, docs: list[Document]) -> dict[str, float]:
        out = span_metrics(pred_sets, gold_sets, self.categories)
        if docs and all(d.word_level for d in docs):  # CoNLL-style: also the standard seqeval entity F1
            out["seqeval_f1"] = seqeval_f1(pred_sets, gold_sets, [d.text for d in docs])
        return out

    @classmethod
    def smoke_recipe(cls, folder: Path, text_model: str) -> dict[str, SmokeRun]:

        sentence = "This Agreement shall be governed by the laws of Delaware ."
        filler = "Notices shall be sent to the addresses above ."
        docs = []
        for i in range(12):
            text = f"{filler} {sentence} {filler}" if i % 2 else f"{sentence} {filler}"
            start = text.index(sentence)
            docs.append({"text": text, "spans": [{"start": start, "end": start + len(sentence), "category": "Law"}]})
        path = folder / "docs.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in docs))
        base = [
            "recipe=contract_tagging_minilm",
            f"data.path={path}",
            f"model.name={text_model}",
            "data.window=32",
            "data.stride=16",
            "data.max_train_docs=null",
            "data.max_eval_docs=null",
        ]
        return {
            "bio_tagging": SmokeRun(base, path),
            "bio_crf_tagging": SmokeRun([*base, "data.scheme=bio_crf"], path),
            "multilabel_tagging": SmokeRun([*base, "data.scheme=multilabel"], path),
        }

    # ---------------------------------------------------------------- saved-model entry points
    @classmethod
    def load_model(cls, model_dir: Path):
        from transformers import AutoModelForTokenClassification
        from transformers.utils import logging as hf_logging

        config_file = Path(model_dir) / "config.json"  # absent for a Hub id (a distillation teacher): no CRF
        crf_labels = json.loads(config_file.read_text()).get(CRF_CONFIG_KEY) if config_file.is_file() else None
        verbosity = hf_logging.get_verbosity()
        if crf_labels:  # the CRF's weights are in the file but not in the transformers class: no warning for them
            hf_logging.set_verbosity_error()
        try:
            model = AutoModelForTokenClassification.from_pretrained(str(model_dir))
        finally:
            hf_logging.set_verbosity(verbosity)
        if crf_labels:
            attach_crf(model, crf_labels, model_dir)
        return model

    def _restore_labels(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        cfg = self.model.config
        self.label_names = [cfg.id2label[i] for i in range(cfg.num_labels)]
        self.categories = self.head.categories(self.label_names)

    def evaluate_saved(self, model_dir: Path, model=None) -> dict[str, Any]:
        self.model = (model or self.inference_model(model_dir)).eval()
        self._restore_labels(model_dir)
        d = self.cfg.data
        name, docs = select(self._source_splits(), d.split, carved=self._carved, concat=concat_items, source=d.path)
        encoded = [encode_document(self.tokenizer, doc, d.window, d.eval_stride_or_stride) for doc in docs]
        self._use_cpu_threads()
        predicted = list(self._predict_docs(encoded))
        metrics = self._metrics(
            [{s for s, _ in spans} for spans in predicted], [set(e.doc.spans) for e in encoded], docs
        )
        # CUAD's word-level Jaccard >= 0.5 matching and its confidence-ranked curves, for comparison across kinds
        metrics |= cuad_metrics(predicted, [d.spans for d in docs], [d.text for d in docs], self.categories)
        return {"split": name, "num_documents": len(docs), **metrics}

    def _predict_docs(self, encoded: Iterable[EncodedDoc], batch_size: int = 16) -> Iterator[list[tuple[Span, float]]]:
        """Spans of each document, in order. The windows of several documents at a time (about
        ``predict_chunk_batches`` batches) are batched longest first, so short last windows share batches
        instead of each padding a batch of its own document."""
        budget = batch_size * self.predict_chunk_batches
        chunk: list[EncodedDoc] = []
        windows = 0
        for e in encoded:
            chunk.append(e)
            windows += len(e.windows)
            if windows >= budget:
                yield from self._predict_chunk(chunk, batch_size)
                chunk, windows = [], 0
        if chunk:
            yield from self._predict_chunk(chunk, batch_size)

    def _predict_chunk(self, chunk: list[EncodedDoc], batch_size: int) -> Iterator[list[tuple[Span, float]]]:
        feats = [self._window_feature(e, a, b) for e in chunk for a, b in e.windows]
        outs = self._window_outputs(feats, batch_size)
        k = 0
        for e in chunk:
            yield self.decode(e, outs[k : k + len(e.windows)])
            k += len(e.windows)

    def _window_outputs(self, feats: list[dict[str, Any]], batch_size: int) -> list[np.ndarray]:
        """The head's reduced outputs of every window (its tokens only, no [CLS]/[SEP]), in input order;
        batches are formed longest first."""
        device = next(self.model.parameters()).device
        outs: list[np.ndarray] = [np.zeros(0)] * len(feats)
        order = longest_first([len(f["input_ids"]) for f in feats])
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer.pad([feats[i] for i in rows], return_tensors="pt").to(device)
            with torch.inference_mode():
                red = self.head.reduce(self.model(**batch).logits).float().cpu().numpy()
            for j, i in enumerate(rows):
                outs[i] = red[j][1 : len(feats[i]["input_ids"]) - 1]
        return outs

    def _use_cpu_threads(self) -> None:
        if next(self.model.parameters()).device.type == "cpu":
            from hf_tune.speed import apply_cpu_threads

            apply_cpu_threads(self.cfg.speed.cpu_threads)

    def predict(self, model_dir: Path, source: str, batch_size: int = 16, model=None) -> Iterator[dict[str, Any]]:
        """One row per document; documents/s and tokens/s go to stderr at the end (stdout stays JSON lines)."""
        self.model = (model or self.inference_model(model_dir)).eval()
        self._restore_labels(model_dir)
        self._use_cpu_threads()
        d = self.cfg.data
        seen: list[EncodedDoc | None] = []
        n_tok = 0

        def encoded() -> Iterator[EncodedDoc]:
            nonlocal n_tok
            for doc in read_documents_for_prediction(source, d.text_field):
                seen.append(encode_document(self.tokenizer, doc, d.window, d.eval_stride_or_stride))
                n_tok += len(seen[-1].ids)
                yield seen[-1]

        start = time.perf_counter()
        for i, spans in enumerate(self._predict_docs(encoded(), batch_size)):
            yield prediction_row(seen[i].doc, spans)
            seen[i] = None  # a folder of any size: keep only the documents still waiting for their rows
        elapsed = max(time.perf_counter() - start, 1e-9)
        log(
            f"predict: {len(seen)} documents, {n_tok} tokens in {elapsed:.1f} s "
            f"({len(seen) / elapsed:.2f} documents/s, {n_tok / elapsed:.0f} tokens/s)"
        )
