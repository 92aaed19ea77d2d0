"""Sequence classification (single-label, multi-label, regression) with any BERT-family encoder."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_tune.augment import AugmentedTrainSet, build_augmenter, eda
from hf_tune.data.batching import longest_first
from hf_tune.data.documents import limit_splits, load_texts
from hf_tune.data.splits import carve, concat_items, select, take_items
from hf_tune.errors import DataError
from hf_tune.heads import HEADS, SequenceHead
from hf_tune.modeling import check_positions, load_pretrained, resolve_model_name
from hf_tune.recipes.base import Recipe, SmokeRun, register_kind
from hf_tune.schema import BaseConfig, DataSplitsConfig, KindSpec, TextAugmentConfig, TextModelConfig
from hf_tune.techniques import log


@dataclass
class TextDataConfig(DataSplitsConfig):
    path: str | None = None
    """CSV, JSONL, a datasets name/saved folder, or span JSONL with format=spans (each span's text becomes an
    example labelled with its category)."""
    format: str = "auto"
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None
    """Class names in id order; None: sorted label values seen in training."""
    multi_label: bool = False
    """Each example has a list of labels (sigmoid per class): the multi_label head."""
    regression: bool = False
    """The label column holds numbers: one regression output trained with mean squared error."""
    max_length: int = 256
    """Longer texts are truncated (classification reads the beginning; tag long documents instead)."""
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_train_eval_samples: int | None = None
    """Evaluations during training (training.eval_strategy) score a seeded subset of this many validation
    examples; the evaluation after training scores all of them. None: every evaluation scores all."""
    span_min_chars: int = 1
    """format=spans: skip clause texts shorter than this."""
    augment: TextAugmentConfig = field(default_factory=TextAugmentConfig)
    """EDA augmentation of training texts, made afresh each time an example is drawn (never at evaluation)."""

    def head_name(self) -> str:
        return "regression" if self.regression else "multi_label" if self.multi_label else "single_label"


@dataclass
class TextClassificationConfig(BaseConfig):
    spec = KindSpec(
        name="text_classification",
        modality="text",
        headline_metric="f1_macro",
        pipeline_tag="text-classification",
        example_input='"Neither party may assign this Agreement without prior written consent."',
        lora_task_type="SEQ_CLS",
    )
    model: TextModelConfig = field(default_factory=TextModelConfig)
    data: TextDataConfig = field(default_factory=TextDataConfig)

    def validate(self) -> list[str]:
        errors = super().validate() + self.data.split_errors() + self.data.augment.errors() + self.model.errors()
        if self.data.multi_label and self.data.regression:
            errors.append("data.multi_label and data.regression are both true: choose one")
        elif not HEADS.get(self.data.head_name()).uses_class_loss and self.techniques.loss.name != "cross_entropy":
            errors.append("techniques.loss.name: multi_label/regression text tasks use the head's BCE/MSE loss")
        return errors


class EncodedTexts(torch.utils.data.Dataset):
    """Tokenized texts with their targets (class ids, multi-hot rows or values)."""

    def __init__(self, encodings: dict[str, list], labels: np.ndarray) -> None:
        self.encodings, self.labels = encodings, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encodings.items()}
        item["labels"] = self.labels[i]
        return item

    @property
    def lengths(self) -> list[int]:
        """Tokens per example (what length-grouped batching sorts by)."""
        return [len(ids) for ids in self.encodings["input_ids"]]

    def take(self, indices) -> EncodedTexts:
        return EncodedTexts({k: [v[i] for i in indices] for k, v in self.encodings.items()}, self.labels[indices])


@register_kind
class TextClassificationRecipe(Recipe):
    config_cls = TextClassificationConfig
    cfg: TextClassificationConfig
    # texts vary widely in length: batches of similar lengths pad little (hf_tune.data.batching)
    training_defaults = {"train_sampling_strategy": "group_by_length"}

    @property
    def head(self) -> SequenceHead:
        return HEADS.get(self.cfg.data.head_name())

    def _source_splits(self) -> dict[str, list[dict]]:
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
                splits[name] = concat_items(list(load_texts(path, d.format, **kw).values()))
        return splits

    def _carved(self, splits: dict[str, list[dict]]) -> dict[str, list[dict]]:
        d = self.cfg.data
        return carve(splits, d.split_ratios, d.split_seed, d.carve, take_items)

    def _encode(self, rows: list[dict], source: str | None) -> EncodedTexts:
        enc = self.tokenizer([r["text"] for r in rows], truncation=True, max_length=self.cfg.data.max_length)
        try:
            targets = self.head.targets([r["label"] for r in rows], self.label_names, str(source))
        except ValueError as exc:
            raise DataError(str(exc)) from None
        return EncodedTexts(dict(enc), targets)

    def prepare_data(self) -> None:
        from transformers import AutoTokenizer

        d = self.cfg.data
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(self.cfg.model.name))
        check_positions(self.cfg.model.name, d.max_length, "data.max_length")
        splits = self._carved(self._source_splits())
        splits = limit_splits(splits, d.max_train_samples, d.max_eval_samples, d.split_seed, d.path)
        if d.regression:
            self.label_names = list(d.labels) if d.labels else [d.label_column]
        else:
            seen = sorted({lab for r in splits["train"] for lab in (r["label"] if d.multi_label else [r["label"]])})
            self.label_names = list(d.labels) if d.labels else seen
        self.datasets = {name: self._encode(rows, d.path) for name, rows in splits.items()}
        augmenter = build_augmenter(d.augment)
        if augmenter is not None:
            self.datasets["train"] = self._augmented(self.datasets["train"], splits["train"], *augmenter)
        log(f"data: {', '.join(f'{k}={len(v)}' for k, v in splits.items())}; {len(self.label_names)} classes")

    def build_model(self) -> None:
        from transformers import AutoModelForSequenceClassification

        kwargs = {
            "num_labels": self.head.num_outputs(self.label_names),
            "id2label": dict(enumerate(self.label_names)),
            "label2id": {n: i for i, n in enumerate(self.label_names)},
            "problem_type": self.head.problem_type,
        }
        if self.cfg.model.dropout is not None:
            kwargs["classifier_dropout"] = self.cfg.model.dropout
        self.model = load_pretrained(
            AutoModelForSequenceClassification,
            self.cfg.model.name,
            pretrained_file=self.cfg.model.pretrained_file,
            num_layers=self.cfg.model.num_layers,
            layer_pick=self.cfg.model.layer_pick,
            **kwargs,
            **self.cfg.model.kwargs(),
        )

    def _augmented(self, encoded: EncodedTexts, rows: list[dict], synonyms, rates) -> AugmentedTrainSet:
        max_length = self.cfg.data.max_length

        def make(i: int, rng) -> dict[str, Any]:
            text, _ = eda(rows[i]["text"], [], rng, synonyms, rates)
            enc = self.tokenizer(text, truncation=True, max_length=max_length)
            return {**dict(enc), "labels": encoded.labels[i]}

        log(f"augmentation: {self.cfg.data.augment.prob:.0%} of training texts per draw (EDA, {rates})")
        return AugmentedTrainSet(encoded, make, self.cfg.data.augment.prob)

    def train_labels(self):
        ds = self.datasets["train"]
        return getattr(ds, "base", ds).labels

    def data_collator(self):
        from transformers import DataCollatorWithPadding

        from hf_tune.speed import pad_multiple

        multiple = pad_multiple(self.cfg.speed.pad_to_multiple_of, cuda=torch.cuda.is_available())
        return DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=multiple)

    def training_eval_dataset(self):
        """The val split, or a seeded subset of ``data.max_train_eval_samples`` examples during training."""
        val, n = self.datasets.get("val"), self.cfg.data.max_train_eval_samples
        if val is None or n is None or n >= len(val):
            return val
        return val.take(np.sort(np.random.default_rng(self.cfg.data.split_seed).permutation(len(val))[:n]))

    def processing_class(self):
        return self.tokenizer

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        return self.head.metrics(logits, eval_pred.label_ids)

    @classmethod
    def smoke_recipe(cls, folder: Path, text_model: str) -> dict[str, SmokeRun]:
        import json

        rows = [
            {"text": f"clause {i} about {'assignment' if i % 2 else 'payment'} terms", "label": i % 2, "v": i / 10}
            for i in range(24)
        ]
        path = folder / "texts.jsonl"
        path.write_text("".join(json.dumps(r | {"tags": [str(r["label"]), "x"]}) + "\n" for r in rows))
        base = ["recipe=clause_type_minilm", f"data.path={path}", "data.format=jsonl", f"model.name={text_model}"]
        return {
            "single_label": SmokeRun(base, path),
            "multi_label": SmokeRun([*base, "data.label_column=tags", "data.multi_label=true"], path),
            "regression": SmokeRun([*base, "data.label_column=v", "data.regression=true"], path),
        }

    # ---------------------------------------------------------------- saved-model entry points
    @classmethod
    def load_model(cls, model_dir: Path):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(str(model_dir))

    def eval_dataset(self, split: str, model_dir: Path) -> tuple[str, Any]:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        splits = self._source_splits()
        name, rows = select(splits, split, carved=self._carved, concat=concat_items, source=self.cfg.data.path)
        return name, self._encode(rows, self.cfg.data.path)

    def predict(self, model_dir: Path, source: str, batch_size: int = 32, model=None) -> Iterator[dict[str, Any]]:
        from transformers import AutoTokenizer

        from hf_tune.recipes.token_classification import read_documents_for_prediction

        model = (model or self.inference_model(model_dir)).eval()
        if next(model.parameters()).device.type == "cpu":
            from hf_tune.speed import apply_cpu_threads

            apply_cpu_threads(self.cfg.speed.cpu_threads)
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        docs = list(read_documents_for_prediction(source, self.cfg.data.text_column))
        enc = tok([d.text for d in docs], truncation=True, max_length=self.cfg.data.max_length)
        rows = [{k: v[i] for k, v in enc.items()} for i in range(len(docs))]
        order = longest_first([len(r["input_ids"]) for r in rows])  # batches of similar lengths pad little
        logits: list[np.ndarray] = [np.zeros(0)] * len(docs)
        for start in range(0, len(docs), batch_size):
            idx = order[start : start + batch_size]
            batch = tok.pad([rows[i] for i in idx], return_tensors="pt")
            with torch.inference_mode():
                out = model(**batch).logits.float().numpy()
            for j, i in enumerate(idx):
                logits[i] = out[j]
        for doc, row in zip(docs, logits, strict=True):
            yield {"id": doc.id, **self.head.format_prediction(row, names)}
