"""Decision calibration (techniques.calibration): the fits (pure functions) on constructed imbalanced cases, the
output layer it folds into for BERT, timm and peft models, and end to end: offsets recorded, applied by
``hf-tune evaluate``, ``hf-tune predict`` and ``transformers.pipeline()`` from the saved weights alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_tune.calibration import (
    CALIBRATION_METRICS,
    all_metrics,
    decide,
    fit,
    fit_offsets,
    fit_prior_strength,
    fold_offsets,
    log_prior,
    output_layer,
)
from hf_tune.cli import main


def imbalanced(n0: int = 900, n1: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes, 90% class 0; the minority's logit margin is shifted so plain argmax predicts class 0 for
    (nearly) everything, while a threshold between the two margin distributions separates them well."""
    rng = np.random.default_rng(seed)
    labels = np.array([0] * n0 + [1] * n1)
    margin = np.where(labels == 0, rng.normal(-2.0, 0.4, labels.size), rng.normal(-0.6, 0.4, labels.size))
    return np.stack([np.zeros(labels.size), margin], axis=1), labels


def test_metrics_agree_with_scikit_learn():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    p[p == 3] = 2  # class 3 never predicted
    m = {name: CALIBRATION_METRICS.get(name)(p, y, 4) for name in CALIBRATION_METRICS.names()}
    assert m["f1_macro"] == pytest.approx(f1_score(y, p, labels=range(4), average="macro", zero_division=0))
    assert m["f1_weighted"] == pytest.approx(f1_score(y, p, labels=range(4), average="weighted", zero_division=0))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))


def test_fit_improves_macro_f1_on_a_constructed_imbalanced_case():
    z, y = imbalanced()
    before = CALIBRATION_METRICS.get("f1_macro")(decide(z, np.zeros(2)), y, 2)
    assert before < 0.6  # the minority class is (almost) never predicted
    for method in ("prior", "offsets", "prior+offsets"):
        cal = fit(z, y, y, metric="f1_macro", method=method, max_strength=2.0, max_offset=4.0, steps=81, rounds=3)
        assert cal.before["f1_macro"] == pytest.approx(before)
        assert cal.after["f1_macro"] > 0.85 > before + 0.25, method
        assert cal.offsets[1] - cal.offsets[0] > 0.5  # the rare class is favoured
        assert cal.after == all_metrics(z, y, cal.offsets)  # the reported numbers are those of argmax(z + b)
    strength, _ = fit_prior_strength(
        z, y, log_prior(y, 2), metric=CALIBRATION_METRICS.get("f1_macro"), max_strength=2.0, steps=81
    )
    assert strength > 0  # positive strength: logit adjustment toward the rare class


def test_prior_strength_can_undo_an_over_correction():
    # a model that over-predicts the rare class (as balanced class weights can): accuracy gains from a negative
    z, y = imbalanced()
    z = z + np.array([0.0, 2.5])
    cal = fit(z, y, y, metric="accuracy", method="prior", max_strength=2.0, max_offset=4.0, steps=81, rounds=3)
    assert cal.strength < 0 and cal.after["accuracy"] > cal.before["accuracy"] + 0.1


def test_fits_never_lower_the_metric_and_match_brute_force_decisions():
    rng = np.random.default_rng(3)
    f1 = CALIBRATION_METRICS.get("f1_macro")
    for seed in range(5):
        k = 3 + seed % 3
        y = rng.integers(0, k, 150)
        z = rng.normal(size=(150, k)) + np.eye(k)[y] * 0.8
        start = rng.normal(size=k)
        offsets, score = fit_offsets(z, y, metric=f1, init=start, max_offset=2.0, steps=9, rounds=2)
        assert score >= f1(decide(z, start), y, k) - 1e-12
        assert score == pytest.approx(f1(decide(z, offsets), y, k))  # the fast per-class update is exact


def _tiny_bert_classifier(num_labels: int = 3):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=3
    )
    return BertForSequenceClassification(cfg).eval()


def test_output_layer_of_bert_timm_and_peft_models_and_folding_adds_the_offsets():
    from hf_tune.modeling import build_timm_classifier
    from hf_tune.techniques import wrap_lora

    offsets = np.array([0.5, -1.0, 0.25])
    bert = _tiny_bert_classifier()
    name, layer = output_layer(bert)
    assert name == "classifier"
    ids = torch.randint(0, 50, (2, 5))
    before = bert(input_ids=ids).logits
    fold_offsets(layer, offsets)
    assert torch.allclose(bert(input_ids=ids).logits - before, torch.tensor(offsets, dtype=torch.float32), atol=1e-6)

    timm = build_timm_classifier("test_resnet", 3, {0: "a", 1: "b", 2: "c"}, image_size=16).eval()
    name, layer = output_layer(timm)
    assert name.startswith("timm_model.") and layer is timm.timm_model.get_classifier()

    peft = wrap_lora(_tiny_bert_classifier(), r=2, alpha=4, dropout=0.0, target_modules=None, task_type="SEQ_CLS")
    name, layer = output_layer(peft)
    assert "modules_to_save" in name and layer.weight.requires_grad  # the trained copy, not the frozen original


def _imbalanced_npz(folder: Path) -> Path:
    from .conftest import make_images

    x, y = make_images(80, seed=0)
    keep = np.r_[np.flatnonzero(y[:, 0] == 0), np.flatnonzero(y[:, 0] == 1)[:8]]  # 40 vs 8
    xv, yv = make_images(40, seed=1)
    keep_v = np.r_[np.flatnonzero(yv[:, 0] == 0), np.flatnonzero(yv[:, 0] == 1)[:5]]
    path = folder / "imbalanced.npz"
    np.savez(path, train_images=x[keep], train_labels=y[keep], val_images=xv[keep_v], val_labels=yv[keep_v])
    return path


@pytest.mark.slow
def test_image_calibration_is_saved_in_the_weights_and_applied_everywhere(tiny_image_args, tmp_path, capsys):
    from PIL import Image
    from transformers import pipeline

    data = _imbalanced_npz(tmp_path)
    args = [a for a in tiny_image_args if not a.startswith("data.path=")] + [f"data.path={data}"]
    args += [
        "techniques.calibration.enabled=true",
        "techniques.calibration.method=prior+offsets",
        "techniques.calibration.metric=f1_macro",
        "techniques.ema.enabled=true",  # the final weights are the EMA copy: the offsets must reach it too
        "techniques.ema.decay=0.5",
    ]
    assert main(["train", *args]) == 0
    captured = capsys.readouterr()
    assert "calibration (prior+offsets, f1_macro)" in captured.err
    run = tmp_path / "run"
    metrics = json.loads((run / "model" / "metrics.json").read_text())
    rec = metrics["calibration"]
    assert set(rec["offsets"]) == {"0", "1"} and rec["folded_into"] == "timm_model.fc"
    assert rec["val"]["after"]["f1_macro"] >= rec["val"]["before"]["f1_macro"]
    # the saved model decides with the offsets: its val metrics are the "after" ones, with no hf_tune code
    assert metrics["eval_f1_macro"] == pytest.approx(rec["val"]["after"]["f1_macro"], abs=1e-6)
    assert main(["evaluate", str(run), "data.split=val"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["accuracy"] == pytest.approx(rec["val"]["after"]["accuracy"], abs=1e-6)
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["hf_tune_calibration"]["offsets"] == rec["offsets"]
    assert "## Decision calibration" in (run / "model" / "README.md").read_text()
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    for i, a in enumerate(np.load(data)["val_images"][-6:]):
        Image.fromarray(a).save(img_dir / f"{i}.png")
    assert main(["predict", str(run), str(img_dir)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    pipe = pipeline("image-classification", model=str(run / "model"), device="cpu")
    assert [pipe(r["input"])[0]["label"] for r in rows] == [r["label"] for r in rows]


@pytest.mark.slow
def test_text_calibration_with_lora_reaches_pipeline(tmp_path, tiny_bert, capsys):
    from transformers import pipeline

    rows = [
        {"text": f"clause {i} about {'assignment' if i % 6 == 0 else 'payment'} terms", "label": i % 6 == 0}
        for i in range(60)
    ]
    data = tmp_path / "texts.jsonl"
    data.write_text(
        "".join(json.dumps({"text": r["text"], "label": "rare" if r["label"] else "common"}) + "\n" for r in rows)
    )
    run = tmp_path / "run"
    args = [
        "recipe=clause_type_minilm",
        f"data.path={data}",
        "data.format=jsonl",
        f"model.name={tiny_bert}",
        f"training.output_dir={run}",
        "training.max_steps=4",
        "training.eval_strategy=no",
        "training.save_strategy=no",
        "training.report_to=none",
        "training.disable_tqdm=true",
        "data.split_ratios=[0.6,0.4,0.0]",
        "techniques.lora.enabled=true",
        "techniques.calibration.enabled=true",
        "techniques.calibration.method=offsets",
    ]
    assert main(["train", *args]) == 0
    capsys.readouterr()
    rec = json.loads((run / "model" / "metrics.json").read_text())["calibration"]
    assert "modules_to_save" in rec["folded_into"]
    texts = [r["text"] for r in rows[:12]]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    assert main(["predict", str(run), str(tmp_path / "in.jsonl")]) == 0
    predicted = [json.loads(line)["label"] for line in capsys.readouterr().out.strip().splitlines()]
    pipe = pipeline("text-classification", model=str(run / "model"), device="cpu")
    assert [p["label"] for p in pipe(texts)] == predicted


def test_calibration_is_refused_where_it_cannot_apply(tmp_path, contracts_jsonl, tiny_bert, capsys):
    run = tmp_path / "run"
    base = ["train", f"training.output_dir={run}", "techniques.calibration.enabled=true"]
    tagging = ["recipe=contract_tagging_minilm", f"data.path={contracts_jsonl}", f"model.name={tiny_bert}"]
    assert main([*base, *tagging]) == 2
    assert "techniques.calibration applies to single-label classification" in capsys.readouterr().err
    assert main([*base, "recipe=quickstart", "techniques.calibration.metric=f1_macr"]) == 2
    assert 'did you mean "f1_macro"' in capsys.readouterr().err
    assert not run.exists()
