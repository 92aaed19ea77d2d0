"""Clause extraction pieces with known answers: units, unit targets, decoding, CUAD metrics."""

import numpy as np
import pytest

from hf_tune.data.clauses import (
    aupr,
    cuad_metrics,
    decode_units,
    fine_units,
    jaccard,
    match_jaccard,
    precision_at_recall,
    precision_recall_curve,
    segment,
    unit_ngrams,
    unit_targets,
)
from hf_tune.data.spans import Span

TEXT = "1. Term. This lasts a year.\n\n2. Law. Delaware law governs; no other law applies.\n(a) Notices go by mail."


def test_segment_splits_on_sentences_blank_lines_and_numbered_items():
    units = segment(TEXT)
    texts = [TEXT[a:b] for a, b in units]
    assert texts == [
        "1.",
        "Term.",
        "This lasts a year.",
        "2.",
        "Law.",
        "Delaware law governs; no other law applies.",  # no unit break before a lower-case word
        "(a) Notices go by mail.",
    ]
    assert all(not TEXT[a].isspace() and not TEXT[b - 1].isspace() for a, b in units)


CONTRACT = (
    "ARTICLE 5. TERM\n5.1 Term. The term is one year. Acme Inc. and Beta Corp. may renew it; either may end it:  "
    "(a) on notice; or (b) by agreement.\n(c) The U.S. law applies."
)


def test_fine_units_cut_lines_sentences_items_and_semicolons_but_not_abbreviations():
    texts = [CONTRACT[a:b] for a, b in fine_units(CONTRACT)]
    assert texts == [
        "ARTICLE 5.",
        "TERM",
        "5.1",
        "Term.",
        "The term is one year.",
        "Acme Inc. and Beta Corp. may renew it;",  # no cut after "Inc." or "Corp."
        "either may end it:",
        "(a)",
        "on notice;",
        "or (b) by agreement.",  # an item number after a single space stays inside its unit
        "(c)",
        "The U.S. law applies.",
    ]


def test_fine_units_reach_gold_boundaries_that_sentence_units_miss():
    start = CONTRACT.index("on notice")
    gold = [Span(start, CONTRACT.index("agreement.") + len("agreement."), "Termination")]
    for units, exact in ((segment(CONTRACT), False), (fine_units(CONTRACT), True)):
        y = unit_targets(units, gold, ["Termination"])
        spans = [s for s, _ in decode_units(y, units, ["Termination"], [0.5])]
        assert (spans == gold) is exact


def test_decode_units_merges_fragments_across_a_gap_and_drops_short_spans():
    units = [(0, 10), (11, 14), (15, 30), (31, 40), (41, 44)]
    probs = np.array([[0.9, 0.9], [0.0, 0.2], [0.1, 0.8], [0.0, 0.0], [0.9, 0.9]])
    spans = [s for s, _ in decode_units(probs, units, ["Law"], [0.5])]
    assert spans == [Span(0, 10, "Law"), Span(15, 30, "Law"), Span(41, 44, "Law")]
    merged = [s for s, _ in decode_units(probs, units, ["Law"], [0.5], merge_gap=1)]
    assert merged == [Span(0, 30, "Law"), Span(41, 44, "Law")]  # a gap of 2 units and a new B stay apart
    assert [s for s, _ in decode_units(probs, units, ["Law"], [0.5], merge_gap=5)] == merged
    kept = [s for s, _ in decode_units(probs, units, ["Law"], [0.5], merge_gap=1, min_chars=[5])]
    assert kept == [Span(0, 30, "Law")]


def test_unit_targets_mark_inside_units_and_the_first_one():
    units = segment(TEXT)
    law = Span(TEXT.index("Delaware"), TEXT.index("applies.") + len("applies."), "Law")
    term = Span(TEXT.index("Term"), TEXT.index("year.") + len("year."), "Term")
    y = unit_targets(units, [law, term, Span(0, 1, "Other")], ["Law", "Term", "Other"])
    assert y[:, 1].tolist() == [0, 0, 0, 0, 0, 1, 0]  # I-Law
    assert y[:, 3].tolist() == [0, 1, 1, 0, 0, 0, 0]  # I-Term over two units
    assert y[:, 2].tolist() == [0, 1, 0, 0, 0, 0, 0]  # B-Term only on the first of them
    assert y[:, 5].sum() == 0  # "1" is not more than half of its unit "1."


def test_decode_units_merges_consecutive_units_and_splits_on_begin():
    units = [(0, 10), (11, 20), (21, 30), (31, 40)]
    probs = np.array([[0.9, 0.9], [0.1, 0.8], [0.9, 0.9], [0.0, 0.1]])  # B, I of one category
    spans = decode_units(probs, units, ["Law"], [0.5])
    assert [s for s, _ in spans] == [Span(0, 20, "Law"), Span(21, 30, "Law")]
    assert spans[0][1] == pytest.approx(np.mean([0.9, 0.8]))
    assert decode_units(probs, units, ["Law"], [0.95]) == []


def test_jaccard_and_greedy_matching():
    assert jaccard("Delaware law governs", "the law of Delaware governs") == pytest.approx(3 / 5)
    hits = match_jaccard([("law of Delaware", 0.9), ("Delaware law", 0.8), ("unrelated text", 0.7)], ["Delaware law"])
    assert hits == [True, False, False]  # one gold span is matched once, by the most confident prediction


def test_precision_recall_aupr_and_precision_at_recall():
    p, r = precision_recall_curve([0.9, 0.8, 0.7, 0.6], [True, False, True, False], n_gold=2)
    assert p.tolist() == [1.0, 0.5, pytest.approx(2 / 3), 0.5] and r.tolist() == [0.5, 0.5, 1.0, 1.0]
    assert aupr(p, r) == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))
    assert precision_at_recall(p, r, 0.8) == pytest.approx(2 / 3)
    assert precision_at_recall(p, r, 0.5) == 1.0
    assert precision_at_recall(np.array([1.0]), np.array([0.4]), 0.8) == 0.0


def test_cuad_metrics_on_hand_made_predictions():
    text = "Delaware law governs. Either party may terminate. Fees are due monthly."
    gold = [[Span(0, 21, "Law"), Span(22, 49, "Termination")]]
    pred = [[(Span(0, 12, "Law"), 0.9), (Span(50, 72, "Termination"), 0.4)]]
    m = cuad_metrics(pred, gold, [text], ["Law", "Termination"])
    assert m["jaccard_precision"] == 0.5 and m["jaccard_recall"] == 0.5  # "Delaware law" ~ 2/3 of the words
    assert m["aupr"] == pytest.approx((1.0 + 0.0) / 2)


def test_decode_units_begin_margin_keeps_a_clause_whole_unless_the_begin_is_clear():
    units = [(0, 10), (11, 20), (21, 30)]
    probs = np.array([[0.9, 0.9], [0.6, 0.9], [0.97, 0.9]])  # B fires weakly on unit 1, clearly on unit 2
    split = [s for s, _ in decode_units(probs, units, ["Law"], [0.5])]
    assert split == [Span(0, 10, "Law"), Span(11, 20, "Law"), Span(21, 30, "Law")]
    some = [s for s, _ in decode_units(probs, units, ["Law"], [0.5], begin_margin=0.2)]
    assert some == [Span(0, 20, "Law"), Span(21, 30, "Law")]
    never = [s for s, _ in decode_units(probs, units, ["Law"], [0.5], begin_margin=1.0)]
    assert never == [Span(0, 30, "Law")]


def test_micro_threshold_choice_drops_a_category_that_costs_micro_f1():
    from hf_tune.recipes.clause_extraction import choose_thresholds, match_counts, micro_objective

    gold = [[Span(0, 10, "A"), Span(20, 30, "B")]]
    assert match_counts([[Span(0, 10, "A"), Span(21, 30, "B"), Span(40, 50, "B")]], gold) == (3, 1, 2)
    assert micro_objective([(3, 1, 2)], 2) == pytest.approx(2 * 3 / 5)
    # A is precise at 0.5; B fires 40 times for 2 hits at 0.5 and is best for itself there (own F1 > 0)
    counts = {
        "A": {None: (0, 0, 0), 0.5: (10, 8, 9), 0.9: (5, 5, 5)},
        "B": {None: (0, 0, 0), 0.5: (40, 2, 3), 0.9: (30, 1, 2)},
    }
    chosen = choose_thresholds(counts, fixed=(0, 0, 0), n_gold=20, shared=0.5, eligible={"A", "B"})
    assert chosen == {"A": 0.5, "B": None}
    # a category without enough evidence keeps the shared threshold
    assert choose_thresholds(counts, (0, 0, 0), 20, 0.5, eligible={"A"}) == {"A": 0.5, "B": 0.5}


def test_casing_features_see_what_an_uncased_encoder_cannot():
    from hf_tune.clause_model import casing_features

    text = 'ACME Corp. ("Company") and the buyer, on 5 May'
    offsets = [(0, 4), (5, 10), (13, 20), (23, 26), (27, 30), (31, 36), (41, 42), (43, 46)]
    f = casing_features(text, offsets)
    assert f[:, 0].tolist() == [1, 1, 1, 0, 0, 0, 0, 1]  # capitalised
    assert f[:, 1].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]  # all caps
    assert f[:, 2].tolist() == [0, 0, 0, 0, 0, 0, 1, 0]  # digits
    assert f[2, 3] == 1 and f[3, 3] == 0  # "Company" follows an opening quote


def _tiny_clause_model(scheme: str, crf: bool = True):
    from transformers import BertConfig

    from hf_tune.clause_model import ClauseExtractorConfig, ClauseExtractorModel

    enc = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    cfg = ClauseExtractorConfig(
        encoder=enc.to_dict(),
        unit_categories=["Law"],
        token_categories=["Agreement Date", "Effective Date"],
        hidden=8,
        token_crf=crf,
        token_scheme=scheme,
        token_casing=True,
    )
    return ClauseExtractorModel(cfg)


@pytest.mark.parametrize("crf", [True, False])
def test_per_category_token_tags_keep_a_date_that_is_two_categories(crf):
    import torch

    from hf_tune.data.spans import Span

    torch.manual_seed(0)
    model = _tiny_clause_model("per_category", crf)
    assert model.token_head.out.out_features == 6 and model.token_head.inp[1].in_features == 16 + 4
    # the same date span is both categories: labels per category keep both
    t = 6
    labels = torch.full((1, t, 2), 0, dtype=torch.long)
    labels[0, 2, :] = 1  # B- in both sequences
    labels[0, 3, :] = 2  # I- in both
    x = torch.randn(1, t, 20)
    out = model(token_features=x, token_labels=labels)
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    opt = torch.optim.Adam(model.token_head.parameters(), lr=0.05)
    for _ in range(60):  # it can learn both sequences at once
        opt.zero_grad()
        model(token_features=x, token_labels=labels).loss.backward()
        opt.step()
    tags = model.token_outputs(x[0].numpy(), [True] * t)
    assert tags.shape == (t, 2, 2) and tags[2:4, :, 0].tolist() == [[1, 1], [2, 2]]
    offsets = [(i * 5, i * 5 + 4) for i in range(t)]
    spans = {s for s, _ in model.decode([], np.zeros((0, 2)), offsets, [True] * t, tags)}
    assert spans == {Span(10, 19, "Agreement Date"), Span(10, 19, "Effective Date")}


def test_a_saved_bio_clause_model_keeps_its_single_sequence():
    from hf_tune.clause_model import ClauseExtractorConfig

    legacy = ClauseExtractorConfig(token_categories=["Parties"])  # configs saved before token_scheme existed
    assert legacy.token_scheme == "bio" and not legacy.token_casing and legacy.token_outputs_width == 3


def test_token_budget_batches_cover_every_unit_once_within_the_budget():
    from hf_tune.data.batching import token_budget_batches

    lengths = [5, 300, 12, 12, 40, 3, 2500, 7, 64, 64, 9]
    batches = token_budget_batches(lengths, 128)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        padded = len(b) * max(lengths[i] for i in b)
        assert padded <= 128 or len(b) == 1  # a unit longer than the budget reads alone
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)  # shortest first: neighbours pad little
    assert token_budget_batches([], 64) == []


def test_unit_features_batched_by_tokens_equal_each_unit_read_alone(tiny_bert):
    import torch
    from transformers import AutoTokenizer, BertConfig

    from hf_tune.clause_model import ClauseExtractorConfig, ClauseExtractorModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    enc = BertConfig.from_pretrained(tiny_bert)
    model = ClauseExtractorModel(ClauseExtractorConfig(encoder=enc.to_dict(), unit_categories=["Law"], hidden=8))
    text = (
        "1. Governing Law. This Agreement is governed by the laws of the State of New York.\n"
        "2. Term. The term is five (5) years; it renews unless either party gives notice.\n"
        "Short.\n" + "A much longer sentence with many more words in it to pad the others. " * 3
    )
    other = "Exhibit A.\nThe Company shall indemnify the Distributor against all claims; losses; costs."
    # two documents pooled into shared batches of mixed lengths come back split and in order
    docs = model.unit_features_many(tok, [text, other, ""], token_budget=40)
    assert [len(u) for u, _ in docs][2] == 0 and docs[2][1].shape == (0, enc.hidden_size + 1)
    model.encoder.eval()
    for doc, (units, feats) in zip([text, other], docs[:2], strict=True):
        assert len(units) >= 3 and feats.shape == (len(units), enc.hidden_size + 1)
        with torch.no_grad():
            for i, (a, b) in enumerate(units):
                x = tok(doc[a:b], truncation=True, max_length=model.config.unit_max_tokens, return_tensors="pt")
                alone = model.encoder(**x).last_hidden_state[0].mean(0).numpy()
                np.testing.assert_allclose(feats[i, :-1], alone, atol=1e-5, rtol=1e-4)
        assert feats[0, -1] == 0 and feats[-1, -1] == 1  # relative position within its own document
    one_units, one = model.unit_features(tok, other)
    assert one_units == docs[1][0]
    np.testing.assert_allclose(one, docs[1][1], atol=1e-5)


def test_unit_ngrams_hash_words_and_word_pairs_the_same_way_everywhere():
    text = "Most Favored Nation.  most favored nation terms; Exhibit"
    b, c = text.index("most"), text.index("Exhibit")
    units = [(0, 20), (b, c - 1), (c, len(text)), (20, 20)]
    ids = unit_ngrams(text, units, buckets=1000)
    assert ids.shape == (4, 7)  # 4 words + 3 pairs is the longest bag
    assert ((ids >= 0) & (ids < 1000)).all() and (ids[:, :1][:3] >= 1).all()
    # case and punctuation do not matter: unit 0's bag is the bag of the first three words of unit 1
    same = unit_ngrams("most favored nation", [(0, 19)], 1000)[0]
    assert sorted(ids[0][ids[0] > 0]) == sorted(same) and set(same) < set(ids[1])
    assert (ids[2, 1:] == 0).all() and (ids[3] == 0).all()  # padding; an empty unit is an empty bag
    np.testing.assert_array_equal(ids, unit_ngrams(text, units, buckets=1000))  # crc32: no per-process salt
    assert unit_ngrams(text, [(0, 20)], 1000, max_words=2).shape == (1, 3)  # 2 words + 1 pair
    assert unit_ngrams(text, [], 1000).shape == (0, 1)


def _lexical_model(buckets: int):
    from transformers import BertConfig

    from hf_tune.clause_model import ClauseExtractorConfig, ClauseExtractorModel

    enc = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    cfg = ClauseExtractorConfig(encoder=enc.to_dict(), unit_categories=["MFN"], hidden=8, unit_ngrams=buckets)
    return ClauseExtractorModel(cfg)


def test_the_unit_lexicon_separates_units_whose_embeddings_are_alike(tmp_path):
    import torch

    torch.manual_seed(0)
    text = "The price is most favored. The price is fixed. The price is most favored. The price is fixed."
    units = [(0, 26), (27, 46), (47, 73), (74, 93)]
    feats = np.zeros((4, 9), dtype=np.float32)  # the encoder sees no difference between the units
    labels = torch.tensor([[[1, 1], [0, 0], [1, 1], [0, 0]]], dtype=torch.float32)
    model = _lexical_model(257)
    assert model.unit_lexicon.weight.shape == (257, 8) and not model.unit_lexicon.weight[0].any()
    ngrams = model.unit_ngram_ids(text, units)
    x, g = torch.as_tensor(feats)[None], torch.as_tensor(ngrams)[None]
    with pytest.raises(ValueError, match="unit_ngrams"):
        model(unit_features=x, unit_labels=labels)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(80):
        opt.zero_grad()
        model(unit_features=x, unit_labels=labels, unit_ngrams=g).loss.backward()
        opt.step()
    p = model.unit_probs(feats, ngrams)
    assert p[[0, 2], 1].min() > 0.5 > p[[1, 3], 1].max()
    model.save_pretrained(tmp_path)  # the lexicon travels with the model and decodes the same after loading
    again = type(model).from_pretrained(tmp_path)
    assert again.config.unit_ngrams == 257
    np.testing.assert_allclose(again.unit_probs(feats, again.unit_ngram_ids(text, units)), p, atol=1e-6)
    assert _lexical_model(0).unit_lexicon is None and _lexical_model(0).unit_ngram_ids(text, units) is None
    assert again.unit_probs(np.zeros((0, 9), np.float32), again.unit_ngram_ids("", [])).shape == (0, 2)  # no units


def test_a_token_weight_the_crf_never_reads_is_reported_not_refused():
    from hf_tune.recipes.clause_extraction import ClauseModelConfig, ignored_settings

    assert ignored_settings(ClauseModelConfig()) == []
    (warning,) = ignored_settings(ClauseModelConfig(token_pos_weight=4.0))
    assert "model.token_pos_weight=4.0 has no effect" in warning and "model.token_crf=false" in warning
    assert ignored_settings(ClauseModelConfig(token_pos_weight=4.0, token_crf=False)) == []
    assert ignored_settings(ClauseModelConfig(token_pos_weight=4.0, token_scheme="per_category")) == []


@pytest.mark.parametrize(("scheme", "crf"), [("bio", True), ("bio", False), ("per_category", True)])
def test_a_token_bias_turns_a_category_on_and_zero_bias_changes_nothing(scheme, crf):
    import torch

    torch.manual_seed(0)
    model = _tiny_clause_model(scheme, crf)
    t, first = 6, [True] * 6
    logits = torch.zeros(t, model.config.token_outputs_width)
    if scheme == "bio":  # O wins everywhere by 2; B-Effective Date at token 2, I- at 3 are next best
        logits[:, 0] = 2.0
        logits[2, 3], logits[3, 4] = 1.0, 1.0
    else:
        logits.view(t, 2, 3)[:, :, 0] = 2.0
        logits.view(t, 2, 3)[2, 1, 1], logits.view(t, 2, 3)[3, 1, 2] = 1.0, 1.0
    plain = model.tags_from_logits(logits, first)
    assert (plain[..., 0] == 0).all()  # nothing but O
    np.testing.assert_array_equal(model.tags_from_logits(logits, first, {"Effective Date": 0.0}), plain)
    on = model.tags_from_logits(logits, first, {"Effective Date": 1.5})  # 2.5 beats O's 2 only at 2 and 3
    offsets = [(i * 5, i * 5 + 4) for i in range(t)]
    spans = {s for s, _ in model.decode([], np.zeros((0, 2)), offsets, first, on)}
    assert spans == {Span(10, 19, "Effective Date")}
    model.config.token_bias = {"Effective Date": 1.5}  # the saved offsets are what token_outputs applies
    np.testing.assert_array_equal(model.tags_from_logits(logits, first), on)
    vec = model.bias_vector({"Agreement Date": -1.0})
    o_positions = [0] if scheme == "bio" else [0, 3]
    assert vec[o_positions].tolist() == [0.0] * len(o_positions) and sorted(set(vec.tolist())) == [-1.0, 0.0]


def test_copied_spans_and_copy_candidates():
    from hf_tune.clause_model import copied_spans
    from hf_tune.data.spans import Document
    from hf_tune.recipes.clause_extraction import copy_candidates

    found = [(Span(0, 8, "Agreement Date"), 0.9), (Span(20, 25, "Parties"), 0.8), (Span(30, 38, "Effective Date"), 0.7)]
    pairs = [["Agreement Date", "Effective Date"]]
    assert copied_spans(found, pairs) == [(Span(0, 8, "Effective Date"), 0.9)]
    already = [*found, (Span(0, 8, "Effective Date"), 0.5)]
    assert copied_spans(already, pairs) == []  # never the same span twice
    assert copied_spans(found, []) == []

    def doc(*spans):
        return Document("x" * 100, [Span(a, b, c) for a, b, c in spans])

    docs = [
        doc((0, 8, "Agreement Date"), (0, 8, "Effective Date"), (20, 25, "Parties")),
        doc((0, 8, "Agreement Date"), (40, 48, "Effective Date")),
        doc((0, 8, "Agreement Date"), (0, 8, "Effective Date")),
        doc((50, 58, "Agreement Date")),
    ]
    cats = ["Agreement Date", "Effective Date", "Parties"]
    # 2 of 3 Effective Dates are an Agreement Date span; 2 of 4 Agreement Dates are an Effective Date span
    assert copy_candidates(docs, cats, 0.6) == [["Agreement Date", "Effective Date"]]
    assert copy_candidates(docs, cats, 0.5) == [
        ["Effective Date", "Agreement Date"],
        ["Agreement Date", "Effective Date"],
    ]
    assert copy_candidates(docs, cats, 0.9) == []


def test_training_items_report_the_lengths_their_heads_loop_over():
    from hf_tune.recipes.clause_extraction import TrainItems

    items = TrainItems(
        [
            {"unit_features": np.zeros((256, 4)), "unit_labels": np.zeros((256, 2))},
            {"token_features": np.zeros((1020, 4)), "token_labels": np.zeros(1020)},
            {"unit_features": np.zeros((17, 4)), "unit_labels": np.zeros((17, 2))},
        ]
    )
    assert items.lengths == [256, 1020, 17]


def test_the_collator_cuts_token_sequences_into_rows_of_one_batch():
    from hf_tune.data.spans import IGNORE
    from hf_tune.recipes.clause_extraction import ClauseCollator

    x = np.arange(14, dtype=np.float32).reshape(7, 2)
    y = np.arange(7)
    unit = {"unit_features": np.ones((4, 3)), "unit_labels": np.zeros((4, 2))}
    whole = ClauseCollator()([{"token_features": x, "token_labels": y}, unit])
    assert whole["token_features"].shape == (1, 7, 2) and whole["unit_features"].shape == (1, 4, 3)
    cut = ClauseCollator(token_chunk=3)([{"token_features": x, "token_labels": y}, unit])
    assert cut["token_features"].shape == (3, 3, 2) and cut["unit_features"].shape == (1, 4, 3)
    assert cut["token_labels"].tolist() == [[0, 1, 2], [3, 4, 5], [6, IGNORE, IGNORE]]
    assert cut["token_features"][2, 0].tolist() == [12.0, 13.0] and not cut["token_features"][2, 1:].any()


def test_token_decoding_tuning_finds_the_offset_and_the_copy_that_pay(monkeypatch):
    import torch

    from hf_tune.data.spans import Document
    from hf_tune.recipes.clause_extraction import MIN_GOLD_TO_TUNE, ClauseExtractionRecipe, DocFeatures

    model = _tiny_clause_model("bio")
    model.config.token_casing = False
    monkeypatch.setattr(model, "token_logits", lambda inputs: torch.as_tensor(inputs))  # the "states" are logits
    text = "On 1 May 2020 the parties agree."
    offsets = [(0, 2), (3, 4), (5, 8), (9, 13), (14, 17), (18, 25)]
    date = [Span(3, 13, "Agreement Date"), Span(3, 13, "Effective Date")]  # one date, two categories
    logits = np.zeros((6, 5), np.float32)  # O, B-Agreement Date, I-Agreement Date, B-Effective Date, I-Effective Date
    logits[:, 0] = 2.0
    logits[1, 1], logits[2:4, 2] = 1.8, 1.8  # the date is Agreement Date's, just below O
    feats = [
        DocFeatures(Document(text, list(date)), [], np.zeros((0, 17), np.float32), offsets, [True] * 6, logits)
        for _ in range(MIN_GOLD_TO_TUNE)
    ]
    recipe = object.__new__(ClauseExtractionRecipe)
    recipe.model, recipe.docs = model, {"train": [f.doc for f in feats]}
    recipe._tune_token_decoding(feats)
    assert model.config.token_bias == {"Agreement Date": 0.25}  # the smallest offset that finds the dates
    assert model.config.token_copies == [["Agreement Date", "Effective Date"]]
    tags = model.token_outputs(logits, [True] * 6)
    assert {s for s, _ in model.decode([], np.zeros((0, 2)), offsets, [True] * 6, tags)} == set(date)

    recipe._tune_token_decoding(feats[: MIN_GOLD_TO_TUNE - 1])  # too few gold spans to move anything
    assert model.config.token_bias == {} and model.config.token_copies == []


def test_encoder_dtype_resolves_per_device_and_bfloat16_features_stay_close(tiny_bert, monkeypatch):
    import torch
    from transformers import AutoTokenizer, BertConfig

    import hf_tune.clause_model as cm

    cpu = torch.device("cpu")
    assert cm.encoder_compute_dtype("float32", cpu) == torch.float32
    assert cm.encoder_compute_dtype("bfloat16", cpu) == torch.bfloat16
    monkeypatch.setattr(cm, "native_bf16", lambda device: False)
    assert cm.encoder_compute_dtype("auto", cpu) == torch.float32  # emulated bfloat16 would be slower
    monkeypatch.setattr(cm, "native_bf16", lambda device: True)
    assert cm.encoder_compute_dtype("auto", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="encoder_dtype"):
        cm.encoder_compute_dtype("float16", cpu)

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    enc = BertConfig.from_pretrained(tiny_bert)
    model = cm.ClauseExtractorModel(cm.ClauseExtractorConfig(encoder=enc.to_dict(), unit_categories=["Law"], hidden=8))
    text = "1. Governing Law. This Agreement is governed by New York law.\n2. Term. Five years; it renews."
    out = {}
    for dtype in ("float32", "bfloat16"):
        model.config.encoder_dtype = dtype
        _, units = model.unit_features(tok, text)
        _, _, states = model.token_features(tok, text)
        assert units.dtype == states.dtype == np.float32
        out[dtype] = (units[:, :-1], states)
    for f32, b16 in zip(out["float32"], out["bfloat16"], strict=True):
        assert not np.array_equal(f32, b16)  # it really ran in bfloat16
        cos = (f32 * b16).sum(1) / np.linalg.norm(f32, axis=1) / np.linalg.norm(b16, axis=1)
        assert cos.min() > 0.999
