"""Multi-task end to end through the CLI on a tiny BERT: train, evaluate and predict per task."""

import json

import pytest

from hf_tune.cli import main

pytestmark = pytest.mark.slow


def _args(model, data, out, *extra: str) -> list[str]:
    args = [
        "recipe=contracts_multitask",
        f"model.name={model}",
        f"training.output_dir={out}",
        "training.max_steps=6",
        "training.save_steps=3",
        "training.save_total_limit=null",
        "training.logging_steps=2",
        "training.per_device_train_batch_size=8",
        "training.disable_tqdm=true",
        "training.dataloader_pin_memory=false",
        "tasks.clauses.data.window=32",
        "tasks.clauses.data.stride=15",
        "tasks.clauses.data.negative_window_keep=1.0",
    ]
    for t in ("clauses", "clause_types"):
        args += [f"tasks.{t}.data.path={data}", f"tasks.{t}.data.split_ratios=[0.75,0.25,0.0]"]
    return args + list(extra)


def test_multitask_train_evaluate_predict(tiny_bert, contracts_jsonl, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_args(tiny_bert, contracts_jsonl, run)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"eval_clauses_span_f1_micro", "eval_clauses_overlap_f1", "eval_clause_types_f1_micro"} <= set(out)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "resolved_config.yaml"):
        assert (run / "model" / name).is_file(), name
    state = json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert logged and all({"loss_clauses", "loss_clause_types", "weight_clauses"} <= set(h) for h in logged)

    from hf_tune.multihead import MultiHeadModel

    model = MultiHeadModel.from_pretrained(run / "model")  # no training code needed
    assert model.config.task_names == ["clauses", "clause_types"]

    assert main(["evaluate", str(run), f"data.path={contracts_jsonl}"]) == 0
    ev = json.loads(capsys.readouterr().out.strip())
    assert ev["clauses_num_documents"] == 24 and ev["clause_types_num_examples"] == 24
    assert main(["evaluate", str(run), "task=clause_types", f"data.path={contracts_jsonl}"]) == 0
    one = json.loads(capsys.readouterr().out.strip())
    assert one["task"] == "clause_types" and "f1_micro" in one and "span_f1_micro" not in one

    doc = tmp_path / "doc.txt"
    doc.write_text(json.loads(contracts_jsonl.read_text().splitlines()[0])["text"])
    assert main(["predict", str(run), str(doc)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["task"] for r in rows] == ["clauses", "clause_types"]
    text = doc.read_text()
    assert all(text[s["start"] : s["end"]] == s["text"] for s in rows[0]["spans"])
    assert set(rows[1]["scores"]) == set(model.config.tasks["clause_types"]["labels"])
    assert main(["predict", str(run), str(doc), "task=clauses"]) == 0
    assert "task" not in json.loads(capsys.readouterr().out.strip())
    assert main(["predict", str(run), str(doc), "task=nope"]) == 2
    assert "not a task of this model" in capsys.readouterr().err

    assert main(["train", *_args(tiny_bert, contracts_jsonl, run, "training.max_steps=8", "resume=true")]) == 0
    capsys.readouterr()
    state = json.loads((run / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8


@pytest.mark.parametrize(
    "options",
    [
        ["multitask.weighting=uncertainty", "multitask.pcgrad=true"],
        ["multitask.weighting=dwa", "multitask.dwa_interval=2", "multitask.sampling=round_robin"],
    ],
)
def test_multitask_weighting_options_train(tiny_bert, contracts_jsonl, tmp_path, capsys, options):
    run = tmp_path / "run"
    assert main(["train", *_args(tiny_bert, contracts_jsonl, run, *options)]) == 0
    capsys.readouterr()
    state = json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())
    weights = [h["weight_clause_types"] for h in state["log_history"] if "weight_clause_types" in h]
    assert weights and weights[-1] != 1.0  # learned (uncertainty) or recomputed (DWA) weights moved


def test_multitask_bad_inputs(tiny_bert, contracts_jsonl, tmp_path, capsys):
    bad = _args(tiny_bert, contracts_jsonl, tmp_path / "r", "tasks.clauses.data.windw=64", "tasks.extra.type=audio")
    assert main(["train", *bad]) == 2
    err = capsys.readouterr().err
    assert 'tasks.clauses.data.windw: unknown key (did you mean "window"?)' in err
    assert "tasks.extra.type: 'audio' cannot be a task; known: image_classification" in err
    assert main(["train", *_args(tiny_bert, contracts_jsonl, tmp_path / "r", "multitask.sampling=tempreature")]) == 2
    assert 'did you mean "temperature"' in capsys.readouterr().err
    renamed = [
        a.replace("tasks.clause_types.", "tasks.half.") for a in _args(tiny_bert, contracts_jsonl, tmp_path / "r")
    ]
    assert main(["train", *renamed, "tasks.half.type=text_classification"]) == 2
    assert "'half' is a torch.nn.Module attribute" in capsys.readouterr().err


def test_image_multitask_shares_a_timm_encoder(tiny_npz, tmp_path, capsys):
    import numpy as np

    flipped = tmp_path / "flipped.npz"
    d = np.load(tiny_npz)
    np.savez(flipped, **{k: (1 - v if k.endswith("labels") else v) for k, v in d.items()})
    recipe = tmp_path / "img_mt.yaml"
    recipe.write_text(
        f"""task: multitask
model: {{name: test_resnet, image_size: 32}}
tasks:
  position: {{type: image_classification, data: {{path: {tiny_npz}, labels: [top, bottom]}}}}
  flipped: {{type: image_classification, data: {{path: {flipped}, augment: false}}}}
multitask: {{sampling: uniform}}
training: {{output_dir: {tmp_path / "run"}, max_steps: 4, per_device_train_batch_size: 8, save_strategy: "no",
  report_to: none, disable_tqdm: true, logging_steps: 2}}
"""
    )
    assert main(["train", f"recipe={recipe}"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"eval_position_accuracy", "eval_flipped_accuracy", "eval_position_roc_auc"} <= set(out)
    model = tmp_path / "run" / "model"
    assert {"confusion_position.png", "roc_pr_flipped.png"} <= {p.name for p in (model / "plots").glob("*.png")}
    assert main(["predict", str(tmp_path / "run"), str(tiny_npz), "task=position", "data.split=val"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 16 and {r["label"] for r in rows} <= {"top", "bottom"}
