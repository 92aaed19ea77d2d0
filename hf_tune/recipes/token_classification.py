"""Token classification over long documents (clause tagging) with any BERT-family encoder.

Documents are tokenized whole, cut into overlapping windows for training, and stitched back at
evaluation/prediction so every token gets exactly one decision, from the window where it is most
central. Metrics are exact-match character spans (see hf_tune.data.spans.span_metrics).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_tune.config import TokenClassificationConfig
from hf_tune.data.documents import carve_documents, limit_splits, load_documents
from hf_tune.data.images import DataError
from hf_tune.data.spans import (
    IGNORE,
    Document,
    Span,
    bio_labels,
    bio_token_labels,
    decode_bio,
    decode_multilabel,
    first_subword_mask,
    multilabel_labels,
    multilabel_token_labels,
    seqeval_f1,
    span_metrics,
    stitch_owner,
    window_starts,
)
from hf_tune.losses import masked_bce
from hf_tune.modeling import load_pretrained, resolve_model_name
from hf_tune.recipes.base import RECIPES, Recipe, log


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


def inherit_first_subword(tags: list[str], first: list[bool]) -> list[str]:
    """Continuation subwords take their word's decision (a B- becomes I-), as they were not trained."""
    out, prev = [], "O"
    for tag, is_first in zip(tags, first, strict=True):
        if is_first:
            prev = tag
            out.append(tag)
        else:
            out.append("O" if prev == "O" else "I-" + prev[2:])
    return out


class MultiLabelTokenCollator:
    """Pads input ids with the tokenizer and (T, K) label matrices with rows of -100."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        labels = [f["labels"] for f in features] if "labels" in features[0] else None
        batch = self.tokenizer.pad(
            [{k: v for k, v in f.items() if k != "labels"} for f in features], return_tensors="pt"
        )
        if labels is not None:
            t, k = batch["input_ids"].shape[1], np.asarray(labels[0]).shape[1]
            out = torch.full((len(labels), t, k), float(IGNORE))
            for i, lab in enumerate(labels):
                out[i, : len(lab)] = torch.as_tensor(np.asarray(lab))
            batch["labels"] = out
        return batch


@RECIPES.register("token_classification")
class TokenClassificationRecipe(Recipe):
    task = "token_classification"
    pipeline_task = "token-classification"
    cfg: TokenClassificationConfig

    # ---------------------------------------------------------------- data
    def _source_kwargs(self) -> dict[str, str]:
        """The data.* field/column names every document loader accepts."""
        d = self.cfg.data
        return {
            k: getattr(d, k)
            for k in (
                "text_field",
                "spans_field",
                "start_key",
                "end_key",
                "category_key",
                "tokens_column",
                "tags_column",
            )
        }

    def _load_splits(self) -> dict[str, list[Document]]:
        d = self.cfg.data
        kw = self._source_kwargs()
        splits = load_documents(d.path, d.format, **kw)
        for name, path in (("val", d.val_path), ("test", d.test_path)):
            if path:
                splits[name] = load_documents(path, d.format, **kw)["train"]
        return carve_documents(splits, d.split_ratios, d.split_seed)

    def _setup_data(self) -> None:
        from transformers import AutoTokenizer

        d = self.cfg.data
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(self.cfg.model.name))
        splits = limit_splits(self._load_splits(), d.max_train_docs, d.max_eval_docs, d.split_seed, d.path)
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
        self.label_names = (bio_labels if d.scheme == "bio" else multilabel_labels)(self.categories)
        self.encoded = {
            n: [encode_document(self.tokenizer, doc, d.window, d.stride) for doc in docs] for n, docs in splits.items()
        }
        self.datasets = {"train": self._train_windows(self.encoded["train"])}
        self._eval_meta: dict[str, list[EncodedDoc]] = {}
        for s in ("val", "test"):
            if s in self.encoded:
                self.datasets[s] = self._eval_windows(self.encoded[s])
        n_tok = sum(len(e.ids) for e in self.encoded["train"])
        log(
            f"data: {', '.join(f'{k}={len(v)} docs' for k, v in splits.items())}; {n_tok} train tokens, "
            f"{len(self.datasets['train'])} train windows; {len(self.categories)} categories; scheme={d.scheme}"
        )

    def _token_labels(self, e: EncodedDoc) -> np.ndarray | list[int]:
        # Eval documents may hold categories the model does not know: they get no label here but stay
        # in the gold spans, where they count as misses.
        known = set(self.categories)
        spans = [s for s in e.doc.spans if s.category in known]
        if self.cfg.data.scheme == "bio":
            lab = bio_token_labels(e.offsets, spans, {n: i for i, n in enumerate(self.label_names)})
            if not self.cfg.data.label_all_subwords:
                lab = [x if f else IGNORE for x, f in zip(lab, e.first, strict=True)]
            return lab
        lab = multilabel_token_labels(
            e.offsets, [s for s in e.doc.spans if s.category in self.categories], self.categories
        )
        if not self.cfg.data.label_all_subwords:
            lab[~np.asarray(e.first, dtype=bool)] = IGNORE
        return lab

    def _window_feature(self, e: EncodedDoc, a: int, b: int, labels=None) -> dict[str, Any]:
        tok = self.tokenizer
        ids = [tok.cls_token_id, *e.ids[a:b], tok.sep_token_id]
        f: dict[str, Any] = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if labels is not None:
            if self.cfg.data.scheme == "bio":
                f["labels"] = [IGNORE, *labels[a:b], IGNORE]
            else:
                pad = np.full((1, labels.shape[1]), IGNORE, dtype=np.float32)
                f["labels"] = np.concatenate([pad, labels[a:b], pad])
        return f

    def _train_windows(self, encoded: list[EncodedDoc]) -> list[dict]:
        rng = np.random.default_rng(self.cfg.data.split_seed)
        keep = self.cfg.data.negative_window_keep
        out = []
        for e in encoded:
            labels = self._token_labels(e)
            arr = np.asarray(labels)
            for a, b in e.windows:
                part = arr[a:b]
                positive = (part > 0).any() if self.cfg.data.scheme == "bio" else (part == 1).any()
                if positive or rng.random() < keep:
                    out.append(self._window_feature(e, a, b, labels))
        return out

    def _eval_windows(self, encoded: list[EncodedDoc]) -> list[dict]:
        # order matters: compute_metrics maps predictions back to (document, window) in this order
        out = []
        for e in encoded:
            labels = self._token_labels(e)
            out += [self._window_feature(e, a, b, labels) for a, b in e.windows]
        return out

    # ---------------------------------------------------------------- model
    def _setup_model(self) -> None:
        from transformers import AutoModelForTokenClassification

        kwargs = {
            "num_labels": len(self.label_names),
            "id2label": dict(enumerate(self.label_names)),
            "label2id": {n: i for i, n in enumerate(self.label_names)},
        }
        if self.cfg.model.dropout is not None:
            kwargs["classifier_dropout"] = self.cfg.model.dropout
        self.model = load_pretrained(AutoModelForTokenClassification, self.cfg.model.name, **kwargs)

    def _loss_fn(self):
        if self.cfg.data.scheme == "bio":
            return super()._loss_fn()
        lc = self.cfg.techniques.loss
        gamma = lc.focal_gamma if lc.name == "focal" else 0.0
        return lambda logits, labels: masked_bce(logits, labels, gamma)

    def train_labels(self):
        return [x for e in self.datasets["train"] for x in e["labels"]]

    def data_collator(self):
        from transformers import DataCollatorForTokenClassification

        if self.cfg.data.scheme == "multilabel":
            return MultiLabelTokenCollator(self.tokenizer)
        return DataCollatorForTokenClassification(self.tokenizer)

    def processing_class(self):
        return self.tokenizer

    def preprocess_logits(self):
        # Reduce logits before Trainer gathers them: (argmax, max prob) or sigmoid probabilities.
        self._metric_docs = self.encoded.get("val", [])
        return self._reduce_logits

    def data_summary(self) -> dict[str, dict[str, int]]:
        out = {f"{k} documents": len(v) for k, v in self.encoded.items()}
        return {"": out | {f"{k} windows": len(v) for k, v in self.datasets.items()}}

    def score_kind(self) -> None:
        return None  # the report shows per-category span F1 from the metrics instead of curves

    def use_metric_split(self, split: str) -> None:
        """compute_metrics maps window predictions back to the documents of this split."""
        self._metric_docs = self.encoded.get(split, [])

    def _reduce_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.cfg.data.scheme == "multilabel":
            return logits.float().sigmoid()
        p = logits.float().softmax(-1)
        score, idx = p.max(-1)
        return torch.stack([idx.float(), score], dim=-1)

    # ---------------------------------------------------------------- decoding and metrics
    def decode(self, e: EncodedDoc, window_outputs: list[np.ndarray]) -> list[tuple[Span, float]]:
        """Stitch per-window outputs (tokens only, no [CLS]/[SEP]) into spans of the whole document."""
        n = len(e.ids)
        if n == 0:
            return []
        owner = stitch_owner(e.windows, n)
        k = window_outputs[0].shape[-1]
        tok = np.zeros((n, k), dtype=np.float32)
        for w, (a, b) in enumerate(e.windows):
            mine = np.flatnonzero(owner[a:b] == w)
            tok[a + mine] = window_outputs[w][mine]
        d = self.cfg.data
        if d.scheme == "bio":
            tags = [self.label_names[int(i)] for i in tok[:, 0]]
            if not d.label_all_subwords:
                tags = inherit_first_subword(tags, e.first)
            return decode_bio(tags, e.offsets, tok[:, 1])
        if not d.label_all_subwords:  # continuation subwords copy their word's I, never start a span
            last = 0
            for t in range(n):
                if e.first[t]:
                    last = t
                else:
                    tok[t, 1::2] = tok[last, 1::2]
                    tok[t, 0::2] = 0.0
        return decode_multilabel(tok, e.offsets, self.categories, d.threshold)

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        preds = eval_pred.predictions
        docs = self._metric_docs
        pred_sets, gold_sets, i = [], [], 0
        for e in docs:
            outs = []
            for a, b in e.windows:
                outs.append(np.asarray(preds[i][1 : 1 + (b - a)]))
                i += 1
            pred_sets.append({s for s, _ in self.decode(e, outs)})
            gold_sets.append(set(e.doc.spans))
        if i != len(preds):
            raise RuntimeError(f"{len(preds)} window predictions for {i} windows: evaluation order changed")
        return self._metrics(pred_sets, gold_sets, [e.doc for e in docs])

    def _metrics(self, pred_sets, gold_sets, docs: list[Document]) -> dict[str, float]:
        out = span_metrics(pred_sets, gold_sets, self.categories)
        if docs and all(d.word_level for d in docs):  # CoNLL-style: also the standard seqeval entity F1
            out["seqeval_f1"] = seqeval_f1(pred_sets, gold_sets, [d.text for d in docs])
        return out

    # ---------------------------------------------------------------- saved-model entry points
    @classmethod
    def load_model(cls, model_dir: Path):
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification.from_pretrained(str(model_dir))

    def _restore_labels(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        cfg = self.model.config
        self.label_names = [cfg.id2label[i] for i in range(cfg.num_labels)]
        if self.cfg.data.scheme == "bio":
            self.categories = [n[2:] for n in self.label_names if n.startswith("B-")]
        else:
            self.categories = [n[2:] for n in self.label_names[0::2]]

    def evaluate_saved(self, model_dir: Path, model=None) -> dict[str, Any]:
        self.model = (model or self.load_model(model_dir)).eval()
        self._restore_labels(model_dir)
        docs = self._eval_documents()
        pred_sets = [{s for s, _ in spans} for spans in self._predict_docs(docs)]
        metrics = self._metrics(pred_sets, [set(e.doc.spans) for e in docs], [e.doc for e in docs])
        return {"split": self._eval_split_name, "num_documents": len(docs), **metrics}

    def _eval_documents(self) -> list[EncodedDoc]:
        d = self.cfg.data
        kw = self._source_kwargs()
        splits = load_documents(d.path, d.format, **kw)
        if d.split == "auto":
            name = next((s for s in ("test", "val") if s in splits), "train") if len(splits) > 1 else "train"
            docs, self._eval_split_name = splits[name], ("all" if len(splits) == 1 else name)
        else:
            carved = carve_documents(splits, d.split_ratios, d.split_seed)
            if d.split not in carved:
                raise DataError(f"data.split={d.split}: {d.path} gives splits {sorted(carved)}")
            docs, self._eval_split_name = carved[d.split], d.split
        return [encode_document(self.tokenizer, doc, d.window, d.stride) for doc in docs]

    def _predict_docs(self, encoded: list[EncodedDoc], batch_size: int = 16) -> Iterator[list[tuple[Span, float]]]:
        model = self.model
        for e in encoded:
            feats = [self._window_feature(e, a, b) for a, b in e.windows]
            outs: list[np.ndarray] = []
            for start in range(0, len(feats), batch_size):
                batch = self.tokenizer.pad(feats[start : start + batch_size], return_tensors="pt")
                with torch.no_grad():
                    logits = model(**batch).logits
                red = self._reduce_logits(logits, None).numpy()
                for j, f in enumerate(feats[start : start + batch_size]):
                    outs.append(red[j][1 : len(f["input_ids"]) - 1])
            yield self.decode(e, outs) if outs else []

    def predict(self, model_dir: Path, source: str, batch_size: int = 16, model=None) -> Iterator[dict[str, Any]]:
        self.model = (model or self.load_model(model_dir)).eval()
        self._restore_labels(model_dir)
        d = self.cfg.data
        for doc in read_documents_for_prediction(source, d.text_field):
            e = encode_document(self.tokenizer, doc, d.window, d.stride)
            spans = next(self._predict_docs([e], batch_size))
            yield {
                "id": doc.id,
                "spans": [
                    {
                        "start": s.start,
                        "end": s.end,
                        "category": s.category,
                        "text": doc.text[s.start : s.end],
                        "score": round(score, 6),
                    }
                    for s, score in spans
                ],
            }


def read_documents_for_prediction(source: str, text_field: str = "text") -> Iterator[Document]:
    """A .jsonl of objects with a text field, a plain text file (one document), or a folder of .txt files."""
    p = Path(source)
    if p.is_dir():
        files = sorted(p.rglob("*.txt"))
        if not files:
            raise DataError(f"{source}: no .txt files found")
        for f in files:
            yield Document(f.read_text(encoding="utf-8"), [], str(f))
    elif p.suffix.lower() in (".jsonl", ".json"):
        with open(p, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if line.strip():
                    obj = json.loads(line)
                    if text_field not in obj:
                        raise DataError(f"{source}:{n}: no {text_field!r} field; set data.text_field")
                    yield Document(obj[text_field], [], str(obj.get("id", obj.get("title", n))))
    else:
        yield Document(p.read_text(encoding="utf-8"), [], str(p))
