"""Output heads: what a model's last layer predicts, declared once.

A head owns everything that depends only on *what kind of output* a task has, whichever recipe kind or
model carries it: its standard loss, how logits become scores (softmax, sigmoid, raw values), how a batch
of labels is collated, which report plots fit its scores, its metrics and its JSON prediction format.
Single-task recipes, :class:`~hf_tune.multihead.MultiHeadModel` and the report all look heads up here, so a
new head (a CRF tagger, say) is one registered class.

Sequence heads (one output per example): ``single_label``, ``multi_label``, ``regression``.
Tagging heads (one output per token): ``bio_tagging`` (softmax over O/B-/I- tags, overlapping spans resolved
first-come), ``bio_crf_tagging`` (the same tags decoded as whole valid paths by a CRF), ``multilabel_tagging``
(a B and an I sigmoid per category, overlaps kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from hf_tune.crf import CRF
from hf_tune.data.spans import (
    IGNORE,
    Span,
    bio_labels,
    bio_token_labels,
    decode_bio,
    decode_multilabel,
    multilabel_labels,
    multilabel_token_labels,
)
from hf_tune.losses import IGNORE_INDEX, masked_bce
from hf_tune.metrics import classification_metrics, multilabel_metrics, regression_metrics, sigmoid, softmax
from hf_tune.registry import Registry


class Head:
    """Base of every head; subclasses set the class attributes and override what differs."""

    name: ClassVar[str] = ""
    token_level: ClassVar[bool] = False
    """True: one output per token (tagging); False: one per example (the encoder's pooled output)."""
    problem_type: ClassVar[str | None] = None
    """transformers' ``config.problem_type`` for ``AutoModelForSequenceClassification`` heads."""
    uses_class_loss: ClassVar[bool] = True
    """The recipe's ``techniques.loss`` (focal, class weights, label smoothing) applies to this head."""
    plots: ClassVar[tuple[str, ...]] = ()
    """Report plots made from validation scores (names in hf_tune.report.SCORE_PLOTS)."""
    label_dtype: ClassVar[torch.dtype] = torch.long
    discrete: ClassVar[bool] = True
    """Labels are classes (names mapped to ids); False: numbers (regression)."""
    in_multitask: ClassVar[bool] = True
    """The head can be a task of MultiHeadModel (its parameters are all in the model's per-task layer)."""

    def num_outputs(self, labels: Sequence[str]) -> int:
        return len(labels)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The head's standard loss (mean over labelled targets)."""
        raise NotImplementedError

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """Logits -> the scores the report and predictions use."""
        return np.asarray(logits, dtype=np.float64)

    def collate(self, rows: Sequence[Any], length: int = 0) -> torch.Tensor:
        """A batch of label rows as one tensor (token heads pad to ``length`` with -100)."""
        return torch.as_tensor(np.asarray(rows), dtype=self.label_dtype)

    def distill_loss(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        """How far the student's outputs are from a teacher's (knowledge distillation), over the positions
        that carry a label: softened softmax KL for class heads (sigmoid heads and regression override)."""
        from hf_tune.losses import kd_softmax_loss

        mask = labels != IGNORE_INDEX if self.token_level else None
        return kd_softmax_loss(student, teacher, temperature, mask)


# --------------------------------------------------------------------------------------------------
# Sequence heads
# --------------------------------------------------------------------------------------------------


class SequenceHead(Head):
    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def format_prediction(self, row: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
        """One example's logits as a JSON-able row for ``hf-tune predict``."""
        raise NotImplementedError

    def targets(self, values: Sequence[Any], names: Sequence[str], where: str) -> np.ndarray:
        """Raw label values -> the training target array. Raises ValueError naming the first bad value."""
        raise NotImplementedError


class SingleLabelHead(SequenceHead):
    name = "single_label"
    problem_type = "single_label_classification"
    plots = ("confusion", "roc_pr")

    def loss(self, logits, labels):
        return F.cross_entropy(logits.float(), labels.reshape(-1).long(), ignore_index=IGNORE_INDEX)

    def scores(self, logits):
        return softmax(np.asarray(logits, dtype=np.float64))

    def metrics(self, logits, labels):
        return classification_metrics(logits, labels)

    def format_prediction(self, row, names):
        p = softmax(np.asarray(row, dtype=np.float64)[None])[0]
        k = int(np.argmax(p))
        return {"label": names[k], "score": float(p[k]), "scores": _named(names, p)}

    def targets(self, values, names, where):
        index = {n: i for i, n in enumerate(names)}
        _check_known([v for v in values], index, where)
        return np.array([index[v] for v in values], dtype=np.int64)


class MultiLabelHead(SequenceHead):
    name = "multi_label"
    problem_type = "multi_label_classification"
    uses_class_loss = False  # sigmoid per class: BCE
    plots = ("roc_pr",)
    label_dtype = torch.float32

    def loss(self, logits, labels):
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())

    def distill_loss(self, student, teacher, labels, temperature):
        from hf_tune.losses import kd_sigmoid_loss

        return kd_sigmoid_loss(student, teacher, temperature)

    def scores(self, logits):
        return sigmoid(np.asarray(logits, dtype=np.float64))

    def metrics(self, logits, labels):
        return multilabel_metrics(logits, labels)

    def format_prediction(self, row, names):
        p = sigmoid(np.asarray(row, dtype=np.float64))
        return {"labels": [n for n, v in zip(names, p, strict=True) if v >= 0.5], "scores": _named(names, p)}

    def targets(self, values, names, where):
        index = {n: i for i, n in enumerate(names)}
        _check_known([lab for v in values for lab in v], index, where)
        y = np.zeros((len(values), len(names)), dtype=np.float32)
        for i, v in enumerate(values):
            y[i, [index[lab] for lab in v]] = 1.0
        return y


class RegressionHead(SequenceHead):
    name = "regression"
    problem_type = "regression"
    uses_class_loss = False  # mean squared error
    plots = ("regression",)
    label_dtype = torch.float32
    discrete = False

    def num_outputs(self, labels):
        return max(1, len(labels))

    def loss(self, logits, labels):
        return F.mse_loss(logits.float().reshape(labels.shape), labels.float())

    def distill_loss(self, student, teacher, labels, temperature):
        return F.mse_loss(student.float(), teacher.float().detach())  # a value has no temperature to soften

    def scores(self, logits):
        x = np.asarray(logits, dtype=np.float64)
        return x.reshape(len(x), -1)[:, 0] if x.ndim > 1 and x.shape[-1] == 1 else x

    def metrics(self, logits, labels):
        return regression_metrics(logits, labels)

    def format_prediction(self, row, names):
        return {"value": float(row[0])} if len(row) == 1 else _named(names, row)

    def targets(self, values, names, where):
        out = np.empty(len(values), dtype=np.float32)
        for i, v in enumerate(values):
            try:
                out[i] = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: example {i + 1} has label {v!r}, not a number (regression)") from None
        return out


# --------------------------------------------------------------------------------------------------
# Tagging heads
# --------------------------------------------------------------------------------------------------


class TaggingHead(Head):
    """One decision per token; spans are decoded from the stitched per-token outputs of a document."""

    token_level = True

    def label_names(self, categories: Sequence[str]) -> list[str]:
        raise NotImplementedError

    def categories(self, label_names: Sequence[str]) -> list[str]:
        """The inverse of :meth:`label_names` (a saved model's labels -> its categories)."""
        raise NotImplementedError

    def token_labels(self, offsets, spans: Sequence[Span], categories: Sequence[str]) -> np.ndarray:
        """Training targets per token for a document's spans."""
        raise NotImplementedError

    def is_positive(self, labels: np.ndarray) -> bool:
        """Whether a window's labels contain any span (for negative-window subsampling)."""
        raise NotImplementedError

    def reduce(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-token logits -> the compact per-token outputs that evaluation gathers and decoding reads."""
        raise NotImplementedError

    def decode(
        self,
        outputs: np.ndarray,
        offsets,
        first: Sequence[bool] | None,
        categories: Sequence[str],
        threshold: float,
        crf: CRF | None = None,
    ) -> list[tuple[Span, float]]:
        """Stitched per-token outputs of one document -> (span, score) pairs. ``first`` marks the first
        subword of each word when only first subwords were trained (the rest inherit their word's decision);
        ``crf`` holds the transition scores of heads that decode whole paths."""
        raise NotImplementedError


class BioTaggingHead(TaggingHead):
    name = "bio_tagging"

    def loss(self, logits, labels):
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long(), ignore_index=IGNORE_INDEX
        )

    def label_names(self, categories):
        return bio_labels(categories)

    def categories(self, label_names):
        return [n[2:] for n in label_names if n.startswith("B-")]

    def token_labels(self, offsets, spans, categories):
        index = {n: i for i, n in enumerate(bio_labels(categories))}
        return np.asarray(bio_token_labels(offsets, spans, index), dtype=np.int64)

    def is_positive(self, labels):
        return bool((labels > 0).any())

    def collate(self, rows, length=0):
        out = torch.full((len(rows), length), IGNORE, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.as_tensor(np.asarray(r))
        return out

    def reduce(self, logits):
        score, idx = logits.float().softmax(-1).max(-1)
        return torch.stack([idx.float(), score], dim=-1)

    def decode(self, outputs, offsets, first, categories, threshold, crf=None):
        names = self.label_names(categories)
        tags, scores = [names[int(i)] for i in outputs[:, 0]], outputs[:, 1]
        if first is not None:
            tags, scores = inherit_first_subword(tags, first), inherit_first_score(scores, first)
        return decode_bio(tags, offsets, scores)


class MultiLabelTaggingHead(TaggingHead):
    name = "multilabel_tagging"
    uses_class_loss = False  # a B and an I sigmoid per category: masked BCE (focal via techniques.loss)
    label_dtype = torch.float32

    def loss(self, logits, labels):
        return masked_bce(logits, labels)

    def distill_loss(self, student, teacher, labels, temperature):
        from hf_tune.losses import kd_sigmoid_loss

        return kd_sigmoid_loss(student, teacher, temperature, labels[..., 0] != IGNORE)

    def label_names(self, categories):
        return multilabel_labels(categories)

    def categories(self, label_names):
        return [n[2:] for n in list(label_names)[0::2]]

    def token_labels(self, offsets, spans, categories):
        return multilabel_token_labels(offsets, spans, categories)

    def is_positive(self, labels):
        return bool((labels == 1).any())

    def collate(self, rows, length=0):
        k = np.asarray(rows[0]).shape[1]
        out = torch.full((len(rows), length, k), float(IGNORE))
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.as_tensor(np.asarray(r, dtype=np.float32))
        return out

    def reduce(self, logits):
        return logits.float().sigmoid()

    def decode(self, outputs, offsets, first, categories, threshold, crf=None):
        tok = np.array(outputs, dtype=np.float32)
        if first is not None:  # continuation subwords copy their word's I and never start a span
            last = 0
            for t in range(len(tok)):
                if first[t]:
                    last = t
                else:
                    tok[t, 1::2] = tok[last, 1::2]
                    tok[t, 0::2] = 0.0
        return decode_multilabel(tok, offsets, categories, threshold)


class CrfTaggingHead(BioTaggingHead):
    """BIO tags decoded as whole paths by a linear-chain CRF (hf_tune.crf): the best path that never puts an
    I- after a tag it may not follow, so names are not fragmented. The transition scores are parameters of the
    model (``model.crf``, added by the recipe), so the loss is :func:`hf_tune.crf.crf_tagging_loss` with that
    module; evaluation gathers the per-token log-probabilities and runs Viterbi over each stitched document."""

    name = "bio_crf_tagging"
    uses_class_loss = False  # the CRF's path likelihood; class weights / focal / smoothing do not apply
    in_multitask = False  # the transition scores would need a home in MultiHeadModel

    def loss(self, logits, labels):
        raise TypeError("bio_crf_tagging needs the model's CRF: use hf_tune.crf.crf_tagging_loss(model.crf, ...)")

    def reduce(self, logits):
        return logits.float().log_softmax(-1)

    def decode(self, outputs, offsets, first, categories, threshold, crf=None):
        if crf is None:
            raise ValueError("bio_crf_tagging decodes with the model's CRF (pass crf=model.crf)")
        names = self.label_names(categories)
        emissions = torch.as_tensor(np.asarray(outputs, dtype=np.float32))
        words = torch.ones(len(emissions), dtype=torch.bool) if first is None else torch.as_tensor(first)
        ids = np.zeros(len(emissions), dtype=np.int64)
        if words.any():
            ids[words.numpy()] = crf.decode(emissions[words][None], words[words][None])[0]
        probs = np.exp(np.take_along_axis(emissions.numpy(), ids[:, None], 1)[:, 0])
        tags = [names[i] for i in ids]
        if first is not None:
            tags = inherit_first_subword(tags, first)
            probs = inherit_first_score(probs, first)
        return decode_bio(tags, offsets, probs)


def inherit_first_subword(tags: Sequence[str], first: Sequence[bool]) -> list[str]:
    """Continuation subwords take their word's decision (a B- becomes I-), as they were not trained."""
    out, prev = [], "O"
    for tag, is_first in zip(tags, first, strict=True):
        if is_first:
            prev = tag
            out.append(tag)
        else:
            out.append("O" if prev == "O" else "I-" + prev[2:])
    return out


def inherit_first_score(scores: np.ndarray, first: Sequence[bool]) -> np.ndarray:
    """Continuation subwords take their word's score (their own outputs were not trained)."""
    idx = np.maximum.accumulate(np.where(np.asarray(first, dtype=bool), np.arange(len(scores)), 0))
    return np.asarray(scores)[idx]


def _named(names: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    return {n: float(v) for n, v in zip(names, values, strict=True)}


def _check_known(values: Sequence[Any], index: dict[str, int], where: str) -> None:
    unknown = sorted({str(v) for v in values if v not in index})
    if unknown:
        raise ValueError(
            f"{where}: labels {unknown[:10]} are not in the class list {list(index)}; add them to data.labels"
        )


class MaskedLMHead(Head):
    """Masked-LM adaptation: a distribution over the vocabulary at every masked token (labels -100 elsewhere).

    Scored by perplexity over the masked tokens (:func:`hf_tune.metrics.masked_lm_metrics`), not by class
    metrics; the vocabulary projection is tied to the input embeddings, so it is not a task layer that
    multi-task models could own."""

    name = "masked_lm"
    token_level = True
    uses_class_loss = False
    in_multitask = False

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX)


HEADS: Registry[Head] = Registry("output head")
for _cls in (
    SingleLabelHead,
    MultiLabelHead,
    RegressionHead,
    BioTaggingHead,
    CrfTaggingHead,
    MultiLabelTaggingHead,
    MaskedLMHead,
):
    HEADS.add(_cls.name, _cls())
