"""Clause extraction pieces (pure functions): text units, unit targets, span decoding with per-category
thresholds, and the CUAD-standard metrics.

Long clause categories are decided per *unit* (a sentence or a numbered item: about 70% of CUAD clause spans
start and end on such boundaries), short ones (names, dates) per token; both become character spans of the
same document.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from hf_tune.data.spans import Span

# A unit ends at sentence punctuation followed by an upper-case/number/quote start, at a blank line, or before a
# line that opens a numbered item ("1.2", "(a)") or an upper-case heading.
UNIT_BOUNDARY = r"(?<=[.;:])\s+(?=[A-Z(\"0-9])|\n\s*\n|\n(?=\s*(?:\d+(?:\.\d+)*|\([a-z0-9]+\)|[A-Z][A-Z ]{3,})\s)"


def segment(text: str, pattern: str = UNIT_BOUNDARY) -> list[tuple[int, int]]:
    """[start, end) character ranges of the text's units, whitespace stripped, in order."""
    out, start = [], 0
    for m in re.finditer(pattern, text):
        if m.start() > start:
            out.append((start, m.start()))
        start = m.end()
    if start < len(text):
        out.append((start, len(text)))
    units = []
    for a, b in out:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            units.append((a, b))
    return units


def unit_targets(
    units: Sequence[tuple[int, int]], spans: Sequence[Span], categories: Sequence[str], min_share: float = 0.5
) -> np.ndarray:
    """(n_units, 2C) 0/1 matrix: column 2c+1 = the unit lies inside a span of category c (more than
    ``min_share`` of its characters), column 2c = it is the first such unit of that span."""
    index = {c: i for i, c in enumerate(categories)}
    out = np.zeros((len(units), 2 * len(categories)), dtype=np.float32)
    if not len(units):
        return out
    starts = np.array([a for a, _ in units])
    ends = np.array([b for _, b in units])
    for s in spans:
        if s.category not in index:
            continue
        inter = np.minimum(ends, s.end) - np.maximum(starts, s.start)
        inside = np.flatnonzero(inter > min_share * (ends - starts))
        if inside.size:
            c = index[s.category]
            out[inside, 2 * c + 1] = 1.0
            out[inside[0], 2 * c] = 1.0
    return out


def decode_units(
    probs: np.ndarray,
    units: Sequence[tuple[int, int]],
    categories: Sequence[str],
    thresholds: Sequence[float],
) -> list[tuple[Span, float]]:
    """(n_units, 2C) B/I probabilities -> spans per category: consecutive units above the category's threshold
    form one span, a B above it starts a new one; the span's score is the mean I probability of its units."""
    out: list[tuple[Span, float]] = []
    for c, cat in enumerate(categories):
        t = thresholds[c]
        begin, inside = probs[:, 2 * c], probs[:, 2 * c + 1]
        cur: list | None = None  # [start, end, scores]
        for k, (a, b) in enumerate(units):
            on = inside[k] >= t or begin[k] >= t
            if on and cur is not None and begin[k] < t:
                cur[1] = b
                cur[2].append(inside[k])
                continue
            if cur is not None:
                out.append((Span(cur[0], cur[1], cat), float(np.mean(cur[2]))))
                cur = None
            if on:
                cur = [a, b, [max(inside[k], begin[k])]]
        if cur is not None:
            out.append((Span(cur[0], cur[1], cat), float(np.mean(cur[2]))))
    return sorted(out, key=lambda x: (x[0].start, x[0].end, x[0].category))


# --------------------------------------------------------------------------------------------------
# CUAD-standard metrics
# --------------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def word_set(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def jaccard(a: str, b: str) -> float:
    """Word-level Jaccard similarity of two texts (CUAD's matching rule uses >= 0.5)."""
    x, y = word_set(a), word_set(b)
    return len(x & y) / len(x | y) if x | y else 1.0


def match_jaccard(pred: Sequence[tuple[str, float]], gold: Sequence[str], threshold: float = 0.5) -> list[bool]:
    """For predictions of one category in one document, sorted by score (highest first), whether each
    matches a not yet matched gold text with Jaccard >= ``threshold`` (greedy, one gold per prediction)."""
    used = [False] * len(gold)
    hits = []
    for text, _ in sorted(pred, key=lambda p: -p[1]):
        best = -1
        for j, g in enumerate(gold):
            if (
                not used[j]
                and jaccard(text, g) >= threshold
                and (best < 0 or jaccard(text, g) > jaccard(text, gold[best]))
            ):
                best = j
        if best >= 0:
            used[best] = True
        hits.append(best >= 0)
    return hits


def precision_recall_curve(scores: Sequence[float], hits: Sequence[bool], n_gold: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each prediction, predictions ranked by score (highest first)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    tp = np.cumsum(np.asarray(hits, dtype=np.float64)[order])
    k = np.arange(1, len(order) + 1)
    return tp / k, tp / max(n_gold, 1)


def aupr(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision-recall curve (step interpolation from recall 0, as average precision)."""
    if not len(recall):
        return 0.0
    r = np.concatenate([[0.0], recall])
    return float(np.sum((r[1:] - r[:-1]) * precision))


def precision_at_recall(precision: np.ndarray, recall: np.ndarray, target: float) -> float:
    """Best precision among the operating points whose recall reaches ``target`` (0 when none does)."""
    ok = recall >= target - 1e-12
    return float(precision[ok].max()) if ok.any() else 0.0


def cuad_metrics(
    pred: Sequence[Sequence[tuple[Span, float]]],
    gold: Sequence[Sequence[Span]],
    texts: Sequence[str],
    categories: Sequence[str],
) -> dict[str, float]:
    """CUAD's evaluation over documents: a prediction matches a gold span of its category when their word-level
    Jaccard is >= 0.5. Returns Jaccard micro P/R/F1 at the decoded spans, and, ranking each category's spans by
    confidence, the macro average over categories with gold spans of AUPR and precision at 80% / 90% recall."""
    per: dict[str, tuple[list[float], list[bool], int]] = {c: ([], [], 0) for c in categories}
    for spans, golds, text in zip(pred, gold, texts, strict=True):
        for c in categories:
            p = [(text[s.start : s.end], score) for s, score in spans if s.category == c]
            g = [text[s.start : s.end] for s in golds if s.category == c]
            scores, hits, n = per[c]
            ranked = sorted(p, key=lambda x: -x[1])
            scores += [sc for _, sc in ranked]
            hits += match_jaccard(ranked, g)
            per[c] = (scores, hits, n + len(g))
    tp = sum(sum(h) for _, h, _ in per.values())
    n_pred = sum(len(h) for _, h, _ in per.values())
    n_gold = sum(n for _, _, n in per.values())
    p, r = tp / max(n_pred, 1), tp / max(n_gold, 1)
    out = {"jaccard_precision": p, "jaccard_recall": r, "jaccard_f1": 2 * p * r / (p + r) if p + r else 0.0}
    curves = [precision_recall_curve(s, h, n) for s, h, n in per.values() if n > 0]
    out["aupr"] = float(np.mean([aupr(*c) for c in curves])) if curves else 0.0
    out["precision_at_80_recall"] = float(np.mean([precision_at_recall(*c, 0.8) for c in curves])) if curves else 0.0
    out["precision_at_90_recall"] = float(np.mean([precision_at_recall(*c, 0.9) for c in curves])) if curves else 0.0
    return out
