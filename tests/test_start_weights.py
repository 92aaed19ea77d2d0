"""Starting from better weights: masked-LM adaptation, weights from files, continuing from a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_tune.data.mlm import MaskingCollator, line_examples, mask_once, pack_blocks, pad_features
from hf_tune.metrics import masked_lm_metrics, masked_token_stats
from hf_tune.modeling import ModelLoadError, build_timm_classifier, load_pretrained, resolve_model_name

# ---------------------------------------------------------------------------------------------- pure parts


def test_pack_blocks_joins_documents_and_cuts_full_blocks():
    blocks = pack_blocks([[5, 6, 7], [8, 9, 10, 11, 12]], None, block_size=8, cls_id=1, sep_id=2)
    # stream 5 6 7 [SEP] 8 9 10 11 12 -> body 6 per block -> one full block, the 3-token tail dropped
    assert [b["input_ids"] for b in blocks] == [[1, 5, 6, 7, 2, 8, 9, 2]]
    assert blocks[0]["special_tokens_mask"] == [1, 0, 0, 0, 1, 0, 0, 1]
    short = pack_blocks([[5, 6]], [[(0, 1), (2, 3)]], block_size=8, cls_id=1, sep_id=2)
    assert short[0]["input_ids"] == [1, 5, 6, 2] and short[0]["offset_mapping"][1] == (0, 1)  # only block kept


def test_line_examples_truncate_and_pad_features_fill_each_field():
    ex = line_examples([[5] * 10, [], [6, 7]], None, block_size=8, cls_id=1, sep_id=2)
    assert [len(e["input_ids"]) for e in ex] == [8, 4]
    rows = pad_features([{**ex[1], "labels": [-100, 6, -100, -100]}, {**ex[0], "labels": [-100] * 8}], pad_id=0)
    assert rows[0]["input_ids"] == [1, 6, 7, 2, 0, 0, 0, 0]
    assert rows[0]["attention_mask"][-1] == 0 and rows[0]["special_tokens_mask"][-1] == 1
    assert rows[0]["labels"][-1] == -100


def test_masked_lm_metrics_are_token_weighted():
    logits = torch.zeros(2, 3, 4)
    logits[0, 1, 2] = 10.0  # confident and right
    labels = torch.tensor([[-100, 2, -100], [1, 3, -100]])
    stats = masked_token_stats(logits, labels)
    assert stats[:, 1].tolist() == [1.0, 2.0] and stats[:, 2].tolist() == [1.0, 0.0]
    m = masked_lm_metrics(stats.numpy())
    nll = (float(-torch.log_softmax(logits[0, 1], -1)[2]) + 2 * np.log(4)) / 3
    assert m["perplexity"] == pytest.approx(np.exp(nll)) and m["masked_accuracy"] == pytest.approx(1 / 3)


def test_evaluation_masks_are_fixed_and_training_masks_are_fresh(tiny_bert: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    enc = tok(["the supplier shall deliver the goods to the buyer within thirty days"] * 8, add_special_tokens=False)
    blocks = line_examples(enc["input_ids"], None, 32, tok.cls_token_id, tok.sep_token_id)
    fixed = [mask_once(blocks, MaskingCollator(tok, 0.3, seed=3)) for _ in range(2)]
    assert fixed[0] == fixed[1] and any(x != -100 for e in fixed[0] for x in e["labels"])
    collator = MaskingCollator(tok, 0.3)
    assert torch.equal(collator(fixed[0][:4])["labels"], torch.tensor([e["labels"] for e in fixed[0][:4]]))
    torch.manual_seed(0)
    a = collator(blocks)["labels"]
    assert not torch.equal(a, collator(blocks)["labels"])


def test_unlabelled_text_sources(tmp_path: Path):
    from hf_tune.data.documents import load_raw_texts
    from hf_tune.errors import DataError

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("first contract")
    (tmp_path / "docs" / "sub").mkdir()
    (tmp_path / "docs" / "sub" / "b.txt").write_text("second contract")
    assert load_raw_texts(str(tmp_path / "docs")) == {"train": ["first contract", "second contract"]}
    assert load_raw_texts(str(tmp_path / "docs" / "a.txt")) == {"train": ["first contract"]}
    spans = tmp_path / "spans.jsonl"
    spans.write_text(json.dumps({"text": "a deal", "spans": [{"start": 0, "end": 1, "category": "X"}]}) + "\n")
    assert load_raw_texts(str(spans)) == {"train": ["a deal"]}
    (tmp_path / "t.csv").write_text("body,x\nhello,1\n")
    assert load_raw_texts(str(tmp_path / "t.csv"), text_column="body") == {"train": ["hello"]}
    with pytest.raises(DataError, match="no 'text' field"):
        load_raw_texts(str(tmp_path / "t.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        load_raw_texts(str(tmp_path / "empty"))


# ---------------------------------------------------------------------------------------------- weights from files


def _save_timm(path: Path, name: str, **kwargs) -> dict[str, torch.Tensor]:
    import timm
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in timm.create_model(name, **kwargs).state_dict().items()}
    save_file(sd, str(path))
    return sd


def test_timm_pretrained_file_loads_the_backbone_bit_for_bit_and_replaces_the_head(tmp_path: Path):
    sd = _save_timm(tmp_path / "w.safetensors", "test_resnet", num_classes=10)
    torch.save(sd, tmp_path / "w.pth")
    for f in ("w.safetensors", "w.pth"):
        model = build_timm_classifier(
            "test_resnet", 2, {0: "a", 1: "b"}, pretrained_file=str(tmp_path / f), image_size=32
        )
        got = model.timm_model.state_dict()
        assert got["fc.weight"].shape[0] == 2
        for k, v in sd.items():
            if not k.startswith("fc."):
                assert torch.equal(got[k], v), k
    same = build_timm_classifier(
        "test_resnet", 10, dict(enumerate("abcdefghij")), pretrained_file=str(tmp_path / "w.pth")
    )
    assert torch.equal(same.timm_model.state_dict()["fc.weight"], sd["fc.weight"])  # a head that fits is kept
    gray = build_timm_classifier(
        "test_resnet", 2, {0: "a", 1: "b"}, pretrained_file=str(tmp_path / "w.pth"), in_chans=1
    )
    stem = next(k for k in sd if k.endswith("weight") and sd[k].ndim == 4)
    assert torch.allclose(gray.timm_model.state_dict()[stem], sd[stem].sum(1, keepdim=True))  # timm's RGB -> gray


def test_timm_pretrained_file_refuses_other_architectures_and_channel_counts(tmp_path: Path):
    _save_timm(tmp_path / "r18.safetensors", "resnet18", num_classes=5)
    with pytest.raises(ModelLoadError, match=r"not a test_resnet state dict: missing .*unexpected"):
        build_timm_classifier("test_resnet", 2, {0: "a", 1: "b"}, pretrained_file=str(tmp_path / "r18.safetensors"))
    _save_timm(tmp_path / "g.safetensors", "test_resnet", in_chans=1)
    with pytest.raises(ModelLoadError, match=r"1 input channels .* set model.in_chans=1"):
        build_timm_classifier("test_resnet", 2, {0: "a", 1: "b"}, pretrained_file=str(tmp_path / "g.safetensors"))
    with pytest.raises(ModelLoadError, match="file not found"):
        build_timm_classifier("test_resnet", 2, {0: "a", 1: "b"}, pretrained_file=str(tmp_path / "none.safetensors"))
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a readable"):
        build_timm_classifier("test_resnet", 2, {0: "a", 1: "b"}, pretrained_file=str(tmp_path / "bad.pth"))


def test_bert_pretrained_file_loads_into_model_name_architecture(tmp_path: Path, tiny_bert: Path):
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoModelForSequenceClassification, BertConfig, BertModel

    donor = BertModel(BertConfig.from_pretrained(str(tiny_bert)))
    sd = {k: v.contiguous() for k, v in donor.state_dict().items()}
    save_file(sd, str(tmp_path / "enc.safetensors"))
    model = load_pretrained(
        AutoModelForSequenceClassification,
        str(tiny_bert),
        pretrained_file=str(tmp_path / "enc.safetensors"),
        num_labels=3,
        id2label={0: "a", 1: "b", 2: "c"},
        label2id={"a": 0, "b": 1, "c": 2},
    )
    for k, v in sd.items():
        assert torch.equal(model.bert.state_dict()[k], v), k
    other = BertModel(BertConfig.from_pretrained(str(tiny_bert), hidden_size=48, intermediate_size=96))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelLoadError, match="does not fit .*wrong shape"):
        load_pretrained(AutoModel, str(tiny_bert), pretrained_file=str(tmp_path / "other.safetensors"))
    _save_timm(tmp_path / "img.safetensors", "test_resnet")
    with pytest.raises(ModelLoadError, match="does not fit .*missing"):
        load_pretrained(AutoModel, str(tiny_bert), pretrained_file=str(tmp_path / "img.safetensors"))


# ---------------------------------------------------------------------------------------------- continuing from runs


def _labels(names: list[str]) -> dict:
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }


def test_continuing_a_text_run_keeps_the_backbone_and_the_head_only_for_the_same_labels(
    tmp_path: Path, tiny_bert: Path
):
    from transformers import AutoModelForSequenceClassification

    first = load_pretrained(AutoModelForSequenceClassification, str(tiny_bert), **_labels(["neg", "pos"]))
    (tmp_path / "run" / "model").mkdir(parents=True)
    first.save_pretrained(tmp_path / "run" / "model")
    assert resolve_model_name(str(tmp_path / "run")) == str(tmp_path / "run" / "model")
    backbone = {k: v for k, v in first.state_dict().items() if k.startswith("bert.")}
    for names, head_kept in ((["neg", "pos"], True), (["spam", "ham"], False), (["a", "b", "c"], False)):
        model = load_pretrained(AutoModelForSequenceClassification, str(tmp_path / "run"), **_labels(names))
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in backbone.items()), names
        same_head = state["classifier.weight"].shape == first.classifier.weight.shape and torch.equal(
            state["classifier.weight"], first.classifier.weight
        )
        assert same_head == head_kept, names


def test_continuing_an_image_run(tmp_path: Path):
    first = build_timm_classifier("test_resnet", 2, {0: "normal", 1: "pneumonia"}, image_size=32)
    first.save_pretrained(tmp_path / "m")
    backbone = {k: v for k, v in first.timm_model.state_dict().items() if not k.startswith("fc.")}
    kept = build_timm_classifier(str(tmp_path / "m"), 2, {0: "normal", 1: "pneumonia"})
    swapped = build_timm_classifier(str(tmp_path / "m"), 2, {0: "cat", 1: "dog"})
    grown = build_timm_classifier(str(tmp_path / "m"), 3, {0: "a", 1: "b", 2: "c"})
    for model in (kept, swapped, grown):
        state = model.timm_model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in backbone.items())
    assert torch.equal(kept.timm_model.fc.weight, first.timm_model.fc.weight)
    assert not torch.equal(swapped.timm_model.fc.weight, first.timm_model.fc.weight)
    assert grown.timm_model.fc.weight.shape[0] == 3
    grown.save_pretrained(tmp_path / "grown")  # the saved config names the new classes, not the earlier run's
    saved = json.loads((tmp_path / "grown" / "config.json").read_text())
    assert saved["label_names"] == ["a", "b", "c"] and saved["num_classes"] == 3


def test_a_text_recipe_refuses_an_image_run(tmp_path: Path):
    from transformers import AutoModelForSequenceClassification

    build_timm_classifier("test_resnet", 2, {0: "a", 1: "b"}).save_pretrained(tmp_path / "img")
    with pytest.raises(ModelLoadError, match="is an image model"):
        load_pretrained(AutoModelForSequenceClassification, str(tmp_path / "img"), num_labels=2)
    with pytest.raises(ModelLoadError, match="without config.json or a finished model/"):
        resolve_model_name(str(tmp_path))


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_masked_lm_adaptation_lowers_perplexity_and_feeds_every_text_kind(tmp_path: Path, tiny_bert: Path, capsys):
    from hf_tune.api import Run
    from hf_tune.cli import main
    from hf_tune.recipes import RECIPES

    from .conftest import make_contracts

    docs = make_contracts(40)
    corpus = tmp_path / "contracts.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    run = tmp_path / "mlm"
    args = [
        "train",
        "recipe=contracts_mlm_minilm",
        f"data.path={corpus}",
        f"model.name={tiny_bert}",
        "data.block_size=32",
        "data.max_eval_blocks=64",
        "training.max_steps=60",
        "training.learning_rate=3e-3",
        "training.per_device_train_batch_size=16",
        "training.save_strategy=no",
        "training.logging_steps=20",
        "training.disable_tqdm=true",
        f"training.output_dir={run}",
    ]
    assert main(args) == 0
    metrics = json.loads((run / "model" / "metrics.json").read_text())
    assert metrics["eval_perplexity"] < 0.5 * metrics["eval_perplexity_before"], metrics
    capsys.readouterr()
    assert main(["evaluate", str(run), f"data.path={corpus}", "data.split=val"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["perplexity"] == pytest.approx(metrics["eval_perplexity"], rel=1e-3)

    from transformers import AutoModelForMaskedLM

    adapted = AutoModelForMaskedLM.from_pretrained(str(run / "model")).bert.state_dict()
    contracts = tmp_path / "c.jsonl"
    contracts.write_text(corpus.read_text())
    for recipe, extra in (
        ("clause_type_minilm", {"data.path": str(contracts)}),
        ("contract_tagging_minilm", {"data.path": str(contracts), "data.window": 32, "data.stride": 16}),
        ("contract_clauses_minilm", {"data.path": str(contracts)}),
        (
            "contracts_multitask",
            {
                "tasks.clauses.data.path": str(contracts),
                "tasks.clause_types.data.path": str(contracts),
                "tasks.clauses.data.window": 32,
                "tasks.clauses.data.stride": 16,
            },
        ),
    ):
        cfg = Run.from_recipe(
            recipe, **{"model.name": str(run), "training.output_dir": str(tmp_path / recipe), **extra}
        ).cfg
        r = RECIPES.get(cfg.task)(cfg)
        r.args = r.training_args()
        r.prepare_data()
        r.build_model()
        state = r.model.state_dict()
        prefix = next(p for p in ("bert.", "encoder.", "") if all(f"{p}{k}" in state for k in adapted))
        for k, v in adapted.items():
            assert torch.equal(state[f"{prefix}{k}"], v), (recipe, k)
        assert any(k.startswith(("classifier", "heads", "unit_head")) for k in state), recipe  # a new task head
