"""Clause extraction end to end on a tiny BERT: cached features, threshold tuning, evaluate and predict."""

import json

import numpy as np
import pytest

from hf_tune.cli import main
from hf_tune.config import load_config
from hf_tune.recipes import RECIPES

pytestmark = pytest.mark.slow


def _args(model, data, out, *extra):
    return [
        "recipe=contract_clauses_minilm",
        f"model.name={model}",
        "model.hidden=16",
        f"data.path={data}",
        "data.max_train_docs=null",
        "data.max_eval_docs=null",
        "data.split_ratios=[0.75,0.25,0.0]",
        f"training.output_dir={out}",
        "training.num_train_epochs=3",
        "training.disable_tqdm=true",
        *extra,
    ]


def test_cached_features_equal_the_live_encoder_and_are_reused(tiny_bert, contracts_jsonl, tmp_path, monkeypatch):
    cfg = load_config(_args(tiny_bert, contracts_jsonl, tmp_path / "run"))
    recipe = RECIPES.get(cfg.task)(cfg)
    recipe.args = recipe.training_args()
    recipe.prepare_data()
    f = recipe.features["train"][0]
    units, live = recipe._probe.unit_features(recipe.tokenizer, f.doc.text)
    offsets, first, states = recipe._probe.token_features(recipe.tokenizer, f.doc.text)
    assert units == f.units and offsets == f.offsets and first == f.first
    np.testing.assert_allclose(f.unit_features, live, atol=2e-3, rtol=2e-3)  # cached in float16
    np.testing.assert_allclose(f.token_states, states, atol=2e-3, rtol=2e-3)
    assert len(list((tmp_path / "run" / "features").glob("*.npz"))) == 24

    again = RECIPES.get(cfg.task)(cfg)
    again.args = again.training_args()
    from hf_tune.clause_model import ClauseExtractorModel

    def refuse(*a, **k):
        raise AssertionError("the encoder ran although the features were cached")

    monkeypatch.setattr(ClauseExtractorModel, "unit_features", refuse)
    again.prepare_data()
    # a run reading the cache trains on exactly the features a run computing them did (float16-rounded in both)
    np.testing.assert_array_equal(again.features["train"][0].unit_features, f.unit_features)
    np.testing.assert_array_equal(again.features["train"][0].token_states, f.token_states)

    # features the encoder computed in another precision (model.encoder_dtype) are another cache entry
    key = again._cache_key(f.doc)
    other = "float32" if str(again._probe.encoder_dtype) == "torch.bfloat16" else "bfloat16"
    again._probe.config.encoder_dtype = other
    assert again._cache_key(f.doc) != key


@pytest.mark.parametrize(
    "extra",
    [[], ["model.token_scheme=per_category", "model.token_casing=true"], ["model.unit_ngrams=4096"]],
    ids=["bio", "per_category_casing", "unit_ngrams"],
)
def test_train_evaluate_predict(tiny_bert, contracts_jsonl, tmp_path, capsys, extra):
    run = tmp_path / "run"
    assert main(["train", *_args(tiny_bert, contracts_jsonl, run, *extra)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("eval_span_f1_micro", "eval_overlap_f1", "eval_jaccard_f1", "eval_aupr", "eval_gold_spans"):
        assert key in out, key
    thresholds = json.loads((run / "model" / "config.json").read_text())["thresholds"]
    assert thresholds and all(t is None or 0 < t < 1 for t in thresholds.values())  # tuned on val, saved

    assert main(["evaluate", str(run), f"data.path={contracts_jsonl}"]) == 0
    ev = json.loads(capsys.readouterr().out.strip())
    assert ev["split"] == "all" and ev["num_documents"] == 24 and ev["gold_spans"] > 0
    assert {"precision_at_80_recall", "precision_at_90_recall", "predicted_spans"} <= set(ev)

    docs = [json.loads(line) for line in contracts_jsonl.read_text().splitlines()]
    assert main(["predict", str(run), str(contracts_jsonl)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 24
    for row, doc in zip(rows, docs, strict=True):
        for s in row["spans"]:
            assert doc["text"][s["start"] : s["end"]] == s["text"] and 0 <= s["score"] <= 1
    if not extra:  # the int8 CPU path runs this kind's encoder and heads too (speed.int8_inference)
        assert main(["evaluate", str(run), f"data.path={contracts_jsonl}", "speed.int8_inference=true"]) == 0
        q = json.loads(capsys.readouterr().out.strip())
        assert q["num_documents"] == 24 and q["gold_spans"] == ev["gold_spans"]


def test_train_minutes_fit_the_head_epochs_and_a_resumed_run_keeps_its_plan(tiny_bert, contracts_jsonl, tmp_path):
    from hf_tune.recipes.base import checkpoints

    run = tmp_path / "run"
    # through the CLI: a budget already spent when the data is ready still trains one epoch (of the 3 asked for)
    assert main(["train", *_args(tiny_bert, contracts_jsonl, run, "speed.train_minutes=0.001")]) == 0
    ckpt = checkpoints(run)[-1]
    assert json.loads((ckpt / "trainer_state.json").read_text())["num_train_epochs"] == 1

    cfg = load_config(_args(tiny_bert, contracts_jsonl, tmp_path / "other", "speed.train_minutes=60"))
    recipe = RECIPES.get(cfg.task)(cfg)
    recipe.args = recipe.training_args()
    recipe.prepare_data()
    recipe.build_model()
    recipe.fit_time_budget(3600.0)
    assert recipe.args.num_train_epochs == 3  # an hour fits more: the configured epochs are the cap
    recipe.fit_time_budget(1.0)
    assert recipe.args.num_train_epochs == 1
    recipe._resume_from = ckpt  # resuming: the checkpoint's plan, not this machine's speed now
    recipe.args.num_train_epochs = 3
    recipe.fit_time_budget(3600.0)
    assert recipe.args.num_train_epochs == 1


def test_with_ema_decoding_is_tuned_on_the_saved_weights(tiny_bert, contracts_jsonl, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from hf_tune.recipes.clause_extraction import ClauseExtractionRecipe

    seen = {}
    tune = ClauseExtractionRecipe._tune_thresholds

    def record(self, feats):
        seen.update({k: v.detach().clone() for k, v in self.model.state_dict().items() if "head" in k})
        return tune(self, feats)

    monkeypatch.setattr(ClauseExtractionRecipe, "_tune_thresholds", record)
    run = tmp_path / "run"
    extra = ["techniques.ema.enabled=true", "techniques.ema.decay=0.9", "speed.train_minutes=null"]
    assert main(["train", *_args(tiny_bert, contracts_jsonl, run, *extra)]) == 0
    saved = load_file(str(run / "model" / "model.safetensors"))
    assert seen and all(torch.equal(saved[k], v) for k, v in seen.items())
