"""Sequence classification (single- and multi-label) with any BERT-family encoder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_tune.config import TextClassificationConfig
from hf_tune.data.documents import carve_list, limit_splits, load_texts
from hf_tune.data.images import DataError
from hf_tune.metrics import classification_metrics, multilabel_metrics, regression_metrics, softmax
from hf_tune.modeling import load_pretrained, resolve_model_name
from hf_tune.recipes.base import RECIPES, Recipe, log


class EncodedTexts(torch.utils.data.Dataset):
    """Tokenized texts with integer (single-label) or multi-hot float (multi-label) targets."""

    def __init__(self, encodings: dict[str, list], labels: np.ndarray) -> None:
        self.encodings, self.labels = encodings, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encodings.items()}
        item["labels"] = self.labels[i]
        return item


def regression_targets(rows: list[dict], source: str, column: str) -> np.ndarray:
    """Numeric labels as float32, failing on the first value that is not a number."""
    out = np.empty(len(rows), dtype=np.float32)
    for i, r in enumerate(rows):
        try:
            out[i] = float(r["label"])
        except (TypeError, ValueError):
            raise DataError(
                f"{source}: example {i + 1} has {column}={r['label']!r}, not a number (data.regression=true)"
            ) from None
    return out


@RECIPES.register("text_classification")
class TextClassificationRecipe(Recipe):
    task = "text_classification"
    pipeline_task = "text-classification"
    cfg: TextClassificationConfig

    def _load_splits(self) -> dict[str, list[dict]]:
        d = self.cfg.data
        kw = dict(
            text_column=d.text_column,
            label_column=d.label_column,
            multi_label=d.multi_label,
            span_min_chars=d.span_min_chars,
        )
        splits = load_texts(d.path, d.format, **kw)
        for name, path in (("val", d.val_path), ("test", d.test_path)):
            if path:
                splits[name] = load_texts(path, d.format, **kw)["train"]
        return carve_list(splits, d.split_ratios, d.split_seed)

    def _targets(self, rows: list[dict], source: str) -> np.ndarray:
        if self.cfg.data.regression:
            return regression_targets(rows, source, self.cfg.data.label_column)
        index = {n: i for i, n in enumerate(self.label_names)}
        unknown = sorted(
            {
                lab
                for r in rows
                for lab in (r["label"] if self.cfg.data.multi_label else [r["label"]])
                if lab not in index
            }
        )
        if unknown:
            raise DataError(
                f"{source}: labels {unknown[:10]} are not in the class list {self.label_names}; add them to data.labels"
            )
        if self.cfg.data.multi_label:
            y = np.zeros((len(rows), len(self.label_names)), dtype=np.float32)
            for i, r in enumerate(rows):
                y[i, [index[lab] for lab in r["label"]]] = 1.0
            return y
        return np.array([index[r["label"]] for r in rows], dtype=np.int64)

    def _encode(self, rows: list[dict], source: str) -> EncodedTexts:
        enc = self.tokenizer([r["text"] for r in rows], truncation=True, max_length=self.cfg.data.max_length)
        return EncodedTexts(dict(enc), self._targets(rows, source))

    def _setup_data(self) -> None:
        from transformers import AutoTokenizer

        d = self.cfg.data
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(self.cfg.model.name))
        splits = limit_splits(self._load_splits(), d.max_train_samples, d.max_eval_samples, d.split_seed, d.path)
        seen = sorted({lab for r in splits["train"] for lab in (r["label"] if d.multi_label else [r["label"]])})
        self.label_names = list(d.labels) if d.labels else seen
        if d.regression:
            self.label_names = list(d.labels) if d.labels else [d.label_column]
        self.datasets = {name: self._encode(rows, d.path) for name, rows in splits.items()}
        log(f"data: {', '.join(f'{k}={len(v)}' for k, v in splits.items())}; {len(self.label_names)} classes")

    def _setup_model(self) -> None:
        from transformers import AutoModelForSequenceClassification

        kwargs = {
            "num_labels": len(self.label_names),
            "id2label": dict(enumerate(self.label_names)),
            "label2id": {n: i for i, n in enumerate(self.label_names)},
            "problem_type": self.problem_type(),
        }
        if self.cfg.model.dropout is not None:
            kwargs["classifier_dropout"] = self.cfg.model.dropout
        self.model = load_pretrained(AutoModelForSequenceClassification, self.cfg.model.name, **kwargs)

    def score_kind(self) -> str:
        d = self.cfg.data
        return "regression" if d.regression else "multilabel" if d.multi_label else "single"

    def problem_type(self) -> str:
        d = self.cfg.data
        if d.regression:
            return "regression"
        return "multi_label_classification" if d.multi_label else "single_label_classification"

    def _loss_fn(self):
        d = self.cfg.data
        return None if d.multi_label or d.regression else super()._loss_fn()  # the model's BCE / MSE

    def train_labels(self):
        return self.datasets["train"].labels

    def data_collator(self):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer)

    def processing_class(self):
        return self.tokenizer

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        return self.metrics_from_logits(logits, eval_pred.label_ids)

    def metrics_from_logits(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        if self.cfg.data.regression:
            return regression_metrics(logits, labels)
        if self.cfg.data.multi_label:
            return multilabel_metrics(logits, labels)
        return classification_metrics(logits, labels)

    # ---------------------------------------------------------------- saved-model entry points
    @classmethod
    def load_model(cls, model_dir: Path):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(str(model_dir))

    def eval_dataset(self, split: str, model_dir: Path) -> tuple[str, Any]:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        d = self.cfg.data
        splits = load_texts(
            d.path,
            d.format,
            text_column=d.text_column,
            label_column=d.label_column,
            multi_label=d.multi_label,
            span_min_chars=d.span_min_chars,
        )
        if split == "auto":
            name = next((s for s in ("test", "val") if s in splits), "train")
            return ("all" if len(splits) == 1 else name), self._encode(splits[name], d.path)
        carved = carve_list(splits, d.split_ratios, d.split_seed)
        if split not in carved:
            raise DataError(f"data.split={split}: {d.path} gives splits {sorted(carved)}")
        return split, self._encode(carved[split], d.path)

    def predict(self, model_dir: Path, source: str, batch_size: int = 32, model=None) -> Iterator[dict[str, Any]]:
        from transformers import AutoTokenizer

        from hf_tune.recipes.token_classification import read_documents_for_prediction

        model = (model or self.load_model(model_dir)).eval()
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        docs = list(read_documents_for_prediction(source, self.cfg.data.text_column))
        for start in range(0, len(docs), batch_size):
            chunk = docs[start : start + batch_size]
            batch = tok(
                [d.text for d in chunk],
                truncation=True,
                max_length=self.cfg.data.max_length,
                padding=True,
                return_tensors="pt",
            )
            with torch.no_grad():
                logits = model(**batch).logits.float().numpy()
            for doc, row in zip(chunk, logits, strict=True):
                yield {"id": doc.id, **self.format_prediction(row, names)}

    def format_prediction(self, row: np.ndarray, names: list[str]) -> dict[str, Any]:
        """One example's logits as JSON: label and scores, the labels above 0.5, or the regressed value."""
        if self.cfg.data.regression:
            return {"value": float(row[0])} if len(row) == 1 else {n: float(v) for n, v in zip(names, row, strict=True)}
        if self.cfg.data.multi_label:
            p = 1 / (1 + np.exp(-row))
            return {
                "labels": [n for n, v in zip(names, p, strict=True) if v >= 0.5],
                "scores": {n: float(v) for n, v in zip(names, p, strict=True)},
            }
        p = softmax(row[None])[0]
        k = int(np.argmax(p))
        return {"label": names[k], "score": float(p[k]), "scores": {n: float(v) for n, v in zip(names, p, strict=True)}}
