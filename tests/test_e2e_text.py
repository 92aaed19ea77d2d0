"""Text classification end to end: CSV single-label, JSONL multi-label, CUAD-style spans as examples."""

import csv
import json

import pytest

from hf_tune.cli import main

from .conftest import CLAUSES, FILLER

pytestmark = pytest.mark.slow


def _args(model, data, out, *extra):
    return [
        "recipe=clause_type_minilm",
        f"model.name={model}",
        f"data.path={data}",
        "data.format=auto",
        "data.max_length=32",
        f"training.output_dir={out}",
        "training.max_steps=3",
        "training.num_train_epochs=1",
        "training.eval_strategy=no",
        "training.save_strategy=no",
        "training.per_device_train_batch_size=8",
        "training.disable_tqdm=true",
        "training.dataloader_pin_memory=false",
        *extra,
    ]


def test_csv_single_label_train_evaluate_predict(tiny_bert, tmp_path, capsys):
    rows = [{"text": t, "label": c} for c, t in CLAUSES.items()] * 6 + [
        {"text": t, "label": "Other"} for t in FILLER
    ] * 4
    path = tmp_path / "clauses.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    run = tmp_path / "run"
    assert main(["train", *_args(tiny_bert, path, run)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"eval_accuracy", "eval_f1_macro", "eval_precision_macro"} <= set(out)  # AUC needs every class in val
    assert main(["evaluate", str(run), f"data.path={path}"]) == 0
    ev = json.loads(capsys.readouterr().out.strip())
    assert ev["num_examples"] == len(rows) and 0 <= ev["accuracy"] <= 1
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows[:3]))
    assert main(["predict", str(run), str(docs)]) == 0
    preds = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(preds) == 3 and all(p["label"] in {*CLAUSES, "Other"} for p in preds)

    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(run / "model"))
    assert pipe(rows[0]["text"])[0]["label"] == preds[0]["label"]


def test_jsonl_multi_label(tiny_bert, tmp_path, capsys):
    rows = [
        {"text": f"{CLAUSES['Governing Law']} {CLAUSES['Anti-Assignment']}", "label": ["law", "assign"]},
        {"text": CLAUSES["Governing Law"], "label": ["law"]},
        {"text": CLAUSES["Anti-Assignment"], "label": ["assign"]},
    ] * 8
    path = tmp_path / "multi.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert (
        main(
            [
                "train",
                *_args(
                    tiny_bert, path, tmp_path / "run", "data.multi_label=true", "techniques.loss.class_weights=null"
                ),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"eval_subset_accuracy", "eval_f1_micro", "eval_f1_macro"} <= set(out)


def test_spans_become_clause_examples(tiny_bert, contracts_jsonl, tmp_path, capsys):
    assert main(["train", *_args(tiny_bert, contracts_jsonl, tmp_path / "run", "data.format=spans")]) == 0
    assert "3 classes" in capsys.readouterr().err
