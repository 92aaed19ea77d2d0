"""Bad input is refused before training with a message that names the file/key and the fix (issue: nothing
silent). The catalogue starts with malformed image arrays; each case also runs through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hf_tune.cli import main
from hf_tune.data.images import load_npz
from hf_tune.errors import DataError

from .conftest import make_images

X, Y = make_images(64, size=16)

BAD_ARRAYS = {
    "flat images": (X.reshape(64, -1), Y, r"train_images has shape \(64, 256\).*reshape"),
    "fewer labels than images": (X, Y[:50], "64 images but 50 labels"),
    "NaN image": (np.where(np.arange(64)[:, None, None] == 3, np.nan, X / 255.0), Y, "NaN or infinite"),
    "float labels": (X, Y + 0.5, "non-integer values"),
    "string labels": (X, Y.astype(str), "expected integer class ids"),
    "negative int images": (X.astype(np.int16) - 100, Y, "expected uint8 0-255"),
    "float images out of range": (X * 4.0, Y, r"float values in \[0, \d+\]; expected \[0, 1\] or \[0, 255\]"),
    "two labels per image": (X, np.concatenate([Y, Y], 1), r"train_labels has shape \(64, 2\)"),
    "5 channels": (np.repeat(X[..., None], 5, -1), Y, r"C = 1, 3 or 4"),
}


def _npz(path: Path, images, labels) -> Path:
    np.savez(path, train_images=images, train_labels=labels)
    return path


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_malformed_arrays_are_refused_with_the_fix(case, tmp_path):
    images, labels, message = BAD_ARRAYS[case]
    with pytest.raises(DataError, match=message):
        load_npz(str(_npz(tmp_path / "bad.npz", images, labels)))


def test_float_images_in_unit_range_are_scaled_not_blackened(tmp_path):
    split = load_npz(str(_npz(tmp_path / "f.npz", X / 255.0, Y))).splits["train"]
    assert split.items.dtype == np.uint8 and np.abs(split.items.astype(int) - X.astype(int)).max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("case", ["flat images", "fewer labels than images", "NaN image"])
def test_cli_refuses_malformed_arrays_before_training(case, tiny_image_args, tmp_path, capsys):
    images, labels, message = BAD_ARRAYS[case]
    bad = _npz(tmp_path / "bad.npz", images, labels)
    args = [a for a in tiny_image_args if not a.startswith("data.path")] + [f"data.path={bad}"]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "bad.npz" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.safetensors"))


# ---------------------------------------------------------------------------------------------- config values
# (recipe, overrides, the key the message must name): refused when the config is read, all problems at once

BAD_VALUES = {
    "negative learning rate": ("quickstart", ["training.learning_rate=-1"], "training.learning_rate must be > 0"),
    "zero batch size": ("quickstart", ["training.per_device_train_batch_size=0"], "per_device_train_batch_size"),
    "zero eval batch size": ("quickstart", ["training.per_device_eval_batch_size=0"], "per_device_eval_batch_size"),
    "zero accumulation": ("quickstart", ["training.gradient_accumulation_steps=0"], "gradient_accumulation_steps"),
    "unknown scheduler": ("quickstart", ["training.lr_scheduler_type=cosine_restart"], 'cosine_with_restarts"'),
    "unknown eval strategy": ("quickstart", ["training.eval_strategy=sometimes"], "training.eval_strategy: unknown"),
    "unknown save strategy": ("quickstart", ["training.save_strategy=often"], "training.save_strategy: unknown"),
    "unknown optimizer": ("quickstart", ["training.optim=adamw_fancy"], "training.optim: unknown"),
    "zero epochs": ("quickstart", ["training.num_train_epochs=0", "training.max_steps=-1"], "num_train_epochs"),
    "zero max steps": ("quickstart", ["training.max_steps=0"], "training.max_steps must be > 0"),
    "negative weight decay": ("quickstart", ["training.weight_decay=-0.1"], "training.weight_decay must be >= 0"),
    "negative warmup": ("quickstart", ["training.warmup_steps=-5"], "training.warmup_steps must be >= 0"),
    "label smoothing 1.5": ("quickstart", ["training.label_smoothing_factor=1.5"], "label_smoothing_factor"),
    "zero save limit": ("quickstart", ["training.save_total_limit=0"], "training.save_total_limit must be >= 1"),
    "zero logging steps": ("quickstart", ["training.logging_steps=0"], "training.logging_steps must be > 0"),
    "best model, strategies differ": (
        "quickstart",
        ["training.load_best_model_at_end=true", "training.eval_strategy=steps", "training.save_strategy=epoch"],
        "load_best_model_at_end needs",
    ),
    "best model, save not multiple of eval": (
        "quickstart",
        [
            "training.load_best_model_at_end=true",
            "training.eval_strategy=steps",
            "training.save_strategy=steps",
            "training.eval_steps=3",
            "training.save_steps=4",
        ],
        "must be a multiple of eval_steps",
    ),
    "negative max_train_samples": ("quickstart", ["data.max_train_samples=-10"], "data.max_train_samples must be"),
    "zero max_eval_samples": ("quickstart", ["data.max_eval_samples=0"], "data.max_eval_samples must be"),
    "zero max_train_docs": ("contract_tagging_minilm", ["data.max_train_docs=0"], "data.max_train_docs must be"),
    "multitask task limit": (
        "contracts_multitask",
        ["tasks.clauses.data.max_train_docs=-1"],
        "tasks.clauses.data.max_train_docs must be",
    ),
    "mlm probability": ("contracts_mlm_minilm", ["data.mlm_probability=1.5"], "data.mlm_probability"),
    "mlm tiny block": ("contracts_mlm_minilm", ["data.block_size=4"], "data.block_size"),
    "mlm without held-out text": ("contracts_mlm_minilm", ["data.split_ratios=[1.0, 0.0, 0.0]"], "held-out text"),
    "mlm with lora": ("contracts_mlm_minilm", ["techniques.lora.enabled=true"], "techniques.lora.enabled: not for"),
    "augment probability": ("clause_type_minilm", ["data.augment.prob=2"], "data.augment.prob must be in"),
    "augment lexicon missing": (
        "clause_type_minilm",
        ["data.augment.enabled=true", "data.augment.synonyms=nope.json"],
        "data.augment.synonyms=nope.json",
    ),
    "pretrained and pretrained_file": (
        "quickstart",
        ["model.pretrained=true", "model.pretrained_file=w.safetensors"],
        "keep one",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_refused_when_the_config_is_read(case):
    from hf_tune.config import load_config
    from hf_tune.errors import ConfigError

    recipe, overrides, message = BAD_VALUES[case]
    with pytest.raises(ConfigError, match=message):
        load_config([f"recipe={recipe}", *overrides])


def test_every_problem_is_reported_in_one_pass():
    from hf_tune.config import load_config
    from hf_tune.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(["recipe=quickstart", "training.learning_rate=-1", "data.max_train_samples=0", "model.nmae=x"])
    text = str(info.value)
    assert "model.nmae" in text and "learning_rate" in text and "max_train_samples" in text


def test_cli_names_the_key_without_a_traceback(capsys, tmp_path):
    code = main(["train", "recipe=quickstart", "training.learning_rate=-1", f"training.output_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert code == 2 and "training.learning_rate" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------- data files

BAD_FILES = {
    "csv empty label": ("texts.csv", "text,label\nhello there,a\nsecond text,\n", "row 2 has an empty 'label'"),
    "csv empty text": ("texts.csv", "text,label\nhello there,a\n,b\n", "row 2 has an empty 'text'"),
    "jsonl broken line": (
        "texts.jsonl",
        '{"text": "a", "label": "x"}\n{"text": "b", "label": \n',
        r"texts.jsonl:2: not",
    ),
    "jsonl not an object": (
        "texts.jsonl",
        '{"text": "a", "label": "x"}\n["b", "y"]\n',
        r"texts.jsonl:2: expected a JSON",
    ),
    "not utf-8": ("texts.jsonl", b'{"text": "caf\xe9", "label": "x"}\n', r"texts.jsonl:1: not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_text_files_name_the_file_and_line(case, tmp_path):
    from hf_tune.data.documents import load_texts

    name, content, message = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message):
        load_texts(str(path))


BAD_SPANS = {
    "start not a number": ({"text": "abcdef", "spans": [{"start": "abc", "end": 3, "category": "X"}]}, "integer"),
    "start a float": ({"text": "abcdef", "spans": [{"start": 1.5, "end": 3, "category": "X"}]}, "integer"),
    "text null": ({"text": None, "spans": []}, "'text' is NoneType"),
    "spans not a list": ({"text": "abc", "spans": {"start": 0}}, "must be a list"),
    "span outside": ({"text": "abc", "spans": [{"start": 1, "end": 9, "category": "X"}]}, "outside the text"),
    "span without category": ({"text": "abc", "spans": [{"start": 0, "end": 2}]}, "span without 'category'"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPANS))
def test_bad_span_documents_name_the_line(case, tmp_path):
    import json

    from hf_tune.data.documents import load_span_jsonl

    obj, message = BAD_SPANS[case]
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "fine", "spans": []}) + "\n" + json.dumps(obj) + "\n")
    with pytest.raises(DataError, match=rf"docs.jsonl:2: .*{message}"):
        load_span_jsonl(str(path))


def test_window_longer_than_the_model_positions_is_refused_before_training(tmp_path, tiny_bert, contracts_jsonl):
    from hf_tune.api import Run
    from hf_tune.errors import ConfigError
    from hf_tune.recipes import RECIPES

    overrides = {"data.path": str(contracts_jsonl), "model.name": str(tiny_bert), "data.window": 1024}
    cfg = Run.from_recipe("contract_tagging_minilm", **overrides, **{"training.output_dir": str(tmp_path / "r")}).cfg
    with pytest.raises(ConfigError, match="data.window=1024: .* 512 token positions"):
        RECIPES.get(cfg.task)(cfg).prepare_data()


def test_predict_batch_size_zero_is_refused(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("x")
    run = tmp_path / "run" / "model"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "resolved_config.yaml").write_text("task: text_classification\nrecipe: clause_type_minilm\n")
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "in.txt"), "batch_size=0"]) == 2
    assert "batch_size=0: must be a whole number >= 1" in capsys.readouterr().err


def test_image_with_a_broken_data_stream_is_named_before_training(tmp_path):
    import zlib

    from PIL import Image

    from hf_tune.data.images import load_image_source

    for cls in ("normal", "pneumonia"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(X[i]).save(tmp_path / "imgs" / cls / f"{i}.png")
    bad = tmp_path / "imgs" / "pneumonia" / "1.png"
    data = bytearray(bad.read_bytes())
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    data[start : start + length] = zlib.compress(b"\x00" * 7)[:length].ljust(length, b"\x00")  # wrong pixels
    crc = zlib.crc32(bytes(data[start - 4 : start + length])).to_bytes(4, "big")
    data[start + length : start + length + 4] = crc  # a valid chunk checksum: Image.verify() accepts the file
    bad.write_bytes(bytes(data))
    with Image.open(bad) as im:
        im.verify()
    with pytest.raises(DataError, match=r"(?s)unreadable image.*pneumonia/1.png"):
        load_image_source(str(tmp_path / "imgs"), verify_images=True)


def test_a_text_file_given_to_an_image_recipe_is_not_a_hub_lookup(tmp_path):
    from hf_tune.data.images import load_image_source

    (tmp_path / "texts.jsonl").write_text('{"text": "a", "label": "b"}\n')
    with pytest.raises(DataError, match=r"not an image source \(text data: use a text recipe\)"):
        load_image_source(str(tmp_path / "texts.jsonl"))
