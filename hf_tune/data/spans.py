"""Character spans <-> token labels, sliding windows and stitching: pure functions for long documents.

Terms: a *document* is a text with character spans ``(start, end, category)`` (end exclusive). Its full
tokenization (no special tokens, no truncation) gives token character offsets; *windows* are slices of
that token sequence, each later wrapped in [CLS] ... [SEP]. Nothing is truncated: windows cover every
token, and at prediction time each token takes its decision from the window where it is most central.

Label schemes:
- ``bio`` (single label per token): ``O``, ``B-<cat>``, ``I-<cat>``. Overlap rule: spans are taken in
  order of (start, -end), i.e. earlier first and, at the same start, longer first; a span that overlaps
  an already-taken span is dropped (first come, first served), and reported as dropped. Use ``multilabel``
  to keep overlapping clauses.
- ``multilabel``: two sigmoids per category and token, ``B-<cat>`` (a span of cat starts in this token)
  and ``I-<cat>`` (the token is inside a span of cat). Overlapping and adjacent spans are both kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

IGNORE = -100


@dataclass(frozen=True, order=True)
class Span:
    start: int
    end: int
    category: str


@dataclass
class Document:
    text: str
    spans: list[Span] = field(default_factory=list)
    id: str = ""
    word_level: bool = False
    """True when the text is space-joined words (CoNLL-style), so word-level seqeval applies."""


# --------------------------------------------------------------------------------------------------
# Label vocabularies
# --------------------------------------------------------------------------------------------------


def bio_labels(categories: Sequence[str]) -> list[str]:
    return ["O"] + [f"{p}-{c}" for c in categories for p in ("B", "I")]


def multilabel_labels(categories: Sequence[str]) -> list[str]:
    return [f"{p}-{c}" for c in categories for p in ("B", "I")]


# --------------------------------------------------------------------------------------------------
# Spans -> token labels
# --------------------------------------------------------------------------------------------------


def resolve_overlaps(spans: Sequence[Span]) -> tuple[list[Span], list[Span]]:
    """Single-label rule: earlier start first, longer first at equal start; overlapping later spans dropped.

    Returns (kept, dropped).
    """
    kept: list[Span] = []
    dropped: list[Span] = []
    for s in sorted(spans, key=lambda s: (s.start, -s.end, s.category)):
        if s.end <= s.start:
            continue
        if any(s.start < k.end and k.start < s.end for k in kept):
            dropped.append(s)
        else:
            kept.append(s)
    return kept, dropped


def token_spans_overlap(offsets: Sequence[tuple[int, int]], span: Span) -> list[int]:
    """Indices of the tokens whose characters intersect ``span``."""
    return [i for i, (a, b) in enumerate(offsets) if a < span.end and span.start < b and b > a]


def bio_token_labels(offsets: Sequence[tuple[int, int]], spans: Sequence[Span], label2id: dict[str, int]) -> list[int]:
    """BIO id per token: B on the first token a kept span touches, I on the rest, O elsewhere."""
    labels = [label2id["O"]] * len(offsets)
    kept, _ = resolve_overlaps(spans)
    starts = np.array([a for a, _ in offsets]) if len(offsets) else np.zeros(0)
    for s in kept:
        toks = _tokens_in(offsets, starts, s)
        for j, t in enumerate(toks):
            labels[t] = label2id[("B-" if j == 0 else "I-") + s.category]
    return labels


def multilabel_token_labels(
    offsets: Sequence[tuple[int, int]], spans: Sequence[Span], categories: Sequence[str]
) -> np.ndarray:
    """(n_tokens, 2 * n_categories) 0/1 matrix: column 2c = B-cat, 2c + 1 = I-cat."""
    cat_index = {c: i for i, c in enumerate(categories)}
    out = np.zeros((len(offsets), 2 * len(categories)), dtype=np.float32)
    starts = np.array([a for a, _ in offsets]) if len(offsets) else np.zeros(0)
    for s in spans:
        if s.category not in cat_index or s.end <= s.start:
            continue
        toks = _tokens_in(offsets, starts, s)
        c = cat_index[s.category]
        if toks:
            out[toks[0], 2 * c] = 1.0
            out[toks, 2 * c + 1] = 1.0
    return out


def _tokens_in(offsets: Sequence[tuple[int, int]], starts: np.ndarray, s: Span) -> list[int]:
    # tokens are sorted by start offset: binary-search the window, then check intersection
    lo = max(int(np.searchsorted(starts, s.start, side="right")) - 1, 0)
    hi = int(np.searchsorted(starts, s.end, side="left"))
    return [i for i in range(lo, hi) if offsets[i][0] < s.end and s.start < offsets[i][1]]


def first_subword_mask(word_ids: Sequence[int | None]) -> list[bool]:
    """True for the first token of each word (word ids from a fast tokenizer)."""
    out, prev = [], None
    for w in word_ids:
        out.append(w is not None and w != prev)
        prev = w
    return out


# --------------------------------------------------------------------------------------------------
# Token decisions -> spans
# --------------------------------------------------------------------------------------------------


def decode_bio(
    tags: Sequence[str], offsets: Sequence[tuple[int, int]], scores: Sequence[float] | None = None
) -> list[tuple[Span, float]]:
    """BIO tags per token -> character spans with the mean token score. A stray I- opens a span."""
    out: list[tuple[Span, float]] = []
    cur: list | None = None  # [category, start, end, [scores]]
    for i, (tag, (a, b)) in enumerate(zip(tags, offsets, strict=True)):
        sc = 1.0 if scores is None else float(scores[i])
        if tag != "O" and tag.startswith("I-") and cur is not None and tag[2:] == cur[0]:
            cur[2] = b
            cur[3].append(sc)
            continue
        if cur is not None:
            out.append((Span(cur[1], cur[2], cur[0]), float(np.mean(cur[3]))))
        cur = [tag[2:], a, b, [sc]] if tag != "O" else None
    if cur is not None:
        out.append((Span(cur[1], cur[2], cur[0]), float(np.mean(cur[3]))))
    return out


def decode_multilabel(
    probs: np.ndarray, offsets: Sequence[tuple[int, int]], categories: Sequence[str], threshold: float = 0.5
) -> list[tuple[Span, float]]:
    """(n_tokens, 2C) sigmoid outputs -> spans per category; a B above threshold starts a new span."""
    out: list[tuple[Span, float]] = []
    for c, cat in enumerate(categories):
        begin, inside = probs[:, 2 * c], probs[:, 2 * c + 1]
        cur: list | None = None
        for t, (a, b) in enumerate(offsets):
            on = inside[t] >= threshold or begin[t] >= threshold
            if on and (cur is None or begin[t] >= threshold):
                if cur is not None:
                    out.append((Span(cur[0], cur[1], cat), float(np.mean(cur[2]))))
                cur = [a, b, [max(inside[t], begin[t])]]
            elif on:
                cur[1] = b
                cur[2].append(inside[t])
            elif cur is not None:
                out.append((Span(cur[0], cur[1], cat), float(np.mean(cur[2]))))
                cur = None
        if cur is not None:
            out.append((Span(cur[0], cur[1], cat), float(np.mean(cur[2]))))
    return sorted(out, key=lambda x: (x[0].start, x[0].end, x[0].category))


# --------------------------------------------------------------------------------------------------
# Windows and stitching
# --------------------------------------------------------------------------------------------------


def window_starts(n_tokens: int, body: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of length <= ``body`` every ``stride`` tokens, covering all tokens."""
    if body <= 0 or stride <= 0 or stride > body:
        raise ValueError(f"need 0 < stride <= window body, got body={body}, stride={stride}")
    if n_tokens <= body:
        return [(0, n_tokens)]
    out, a = [], 0
    while True:
        b = min(a + body, n_tokens)
        out.append((a, b))
        if b == n_tokens:
            return out
        a += stride


def stitch_owner(windows: Sequence[tuple[int, int]], n_tokens: int) -> np.ndarray:
    """For every token, the index of the window where it is most central (ties: the earlier window).

    Centrality of token t in window [a, b) is min(t - a, b - 1 - t): its distance to the nearer edge,
    where the model saw the least context.
    """
    best = np.full(n_tokens, -1, dtype=np.int64)
    best_c = np.full(n_tokens, -1, dtype=np.int64)
    for w, (a, b) in enumerate(windows):
        t = np.arange(a, b)
        c = np.minimum(t - a, b - 1 - t)
        better = c > best_c[a:b]
        best[a:b][better] = w
        best_c[a:b][better] = c[better]
    return best


@dataclass(frozen=True)
class StitchPlan:
    """Where every token of a list of documents takes its decision, for all documents at once: token ``t`` of
    the concatenated documents reads row ``rows[t]`` (its owning window, counted over all documents' windows in
    order) at position ``cols[t]`` (after the window's [CLS]). Document ``d`` is tokens
    ``doc_starts[d]:doc_starts[d + 1]``."""

    rows: np.ndarray
    cols: np.ndarray
    doc_starts: np.ndarray
    n_windows: int


def stitch_plan(windows: Sequence[Sequence[tuple[int, int]]], n_tokens: Sequence[int]) -> StitchPlan:
    """The :class:`StitchPlan` of documents with these windows and token counts (ownership: :func:`stitch_owner`).
    It depends only on the window layout, so evaluation computes it once per split and then gathers every
    document's token outputs with one indexing operation."""
    rows, cols, starts, base = [], [], [0], 0
    for wins, n in zip(windows, n_tokens, strict=True):
        owner = stitch_owner(wins, n)
        first_token = np.asarray([a for a, _ in wins], dtype=np.int64)
        rows.append(base + owner)
        cols.append(1 + np.arange(n) - first_token[owner])
        starts.append(starts[-1] + n)
        base += len(wins)
    cat = (lambda xs: np.concatenate(xs).astype(np.int64)) if rows else (lambda xs: np.zeros(0, dtype=np.int64))
    return StitchPlan(cat(rows), cat(cols), np.asarray(starts, dtype=np.int64), base)


# --------------------------------------------------------------------------------------------------
# Span metrics (exact match on character spans)
# --------------------------------------------------------------------------------------------------


def span_metrics(pred: Sequence[set[Span]], gold: Sequence[set[Span]], categories: Sequence[str]) -> dict[str, float]:
    """Micro and macro P/R/F1 for exact (category, start, end) matches, per category F1, overlap F1
    (same category, character IoU >= 0.5) for comparison with looser evaluations, and the numbers of
    predicted and gold spans."""
    per = {c: [0, 0, 0] for c in categories}  # tp, fp, fn
    o_hits = n_pred = n_gold = 0
    for p, g in zip(pred, gold, strict=True):
        for s in p & g:
            per.setdefault(s.category, [0, 0, 0])[0] += 1
        for s in p - g:
            per.setdefault(s.category, [0, 0, 0])[1] += 1
        for s in g - p:
            per.setdefault(s.category, [0, 0, 0])[2] += 1
        o_hits += sum(any(q.category == r.category and span_iou(q, r) >= 0.5 for r in g) for q in p)
        n_pred, n_gold = n_pred + len(p), n_gold + len(g)
    tp, fp, fn = (sum(v[i] for v in per.values()) for i in range(3))
    out = {"span_precision": _div(tp, tp + fp), "span_recall": _div(tp, tp + fn), "span_f1_micro": _f1(tp, fp, fn)}
    present = [c for c, v in per.items() if v[0] + v[2] > 0]  # categories with gold spans
    out["span_f1_macro"] = float(np.mean([_f1(*per[c]) for c in present])) if present else 0.0
    out["overlap_f1"] = _div(2 * o_hits, n_pred + n_gold)
    out["predicted_spans"], out["gold_spans"] = float(n_pred), float(n_gold)  # "found nothing" vs "found wrong"
    for c in present:
        out[f"f1_{c}"] = _f1(*per[c])
    return out


def span_iou(a: Span, b: Span) -> float:
    """Character intersection over union of two spans."""
    inter = max(0, min(a.end, b.end) - max(a.start, b.start))
    return inter / max(max(a.end, b.end) - min(a.start, b.start), 1)


def _div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def _f1(tp: int, fp: int, fn: int) -> float:
    return _div(2 * tp, 2 * tp + fp + fn)


def word_tags(text: str, spans: Sequence[Span]) -> list[str]:
    """BIO tag per space-separated word (CoNLL-style documents), from the single-label view of ``spans``."""
    kept, _ = resolve_overlaps(spans)
    tags, pos = [], 0
    for w in text.split(" "):
        a, b = pos, pos + len(w)
        pos = b + 1
        hit = next((s for s in kept if s.start < b and a < s.end), None)
        tags.append("O" if hit is None else ("B-" if a <= hit.start else "I-") + hit.category)
    return tags


def seqeval_f1(pred: Sequence[set[Span]], gold: Sequence[set[Span]], texts: Sequence[str]) -> float:
    """Entity-level F1 (seqeval, strict IOB2 chunks) over word tag sequences."""
    from seqeval.metrics import f1_score

    y_true = [word_tags(t, sorted(g)) for t, g in zip(texts, gold, strict=True)]
    y_pred = [word_tags(t, sorted(p)) for t, p in zip(texts, pred, strict=True)]
    return float(f1_score(y_true, y_pred))
