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
    "one hash bucket": ("contract_clauses_minilm", ["model.unit_ngrams=1"], "model.unit_ngrams must be 0"),
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


# ---------------------------------------------------------------------------------------------- the catalogue
# Every case runs through the real CLI (hf_tune.cli.main) as a user would type it: exit code 2 (user error), the
# message names the key or file, no traceback, and nothing is trained, written or deleted. A case is
# ``fn(ctx) -> (argv, [substrings the message must hold])``; ``ctx`` builds the files it needs.


class Ctx:
    """Files for a case, in its own tmp_path; ``run`` is the output folder every train case points at."""

    def __init__(self, tmp_path: Path, tiny_bert: Path) -> None:
        self.tmp, self.bert, self.run = tmp_path, tiny_bert, tmp_path / "run"

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def npz(self, images=X, labels=Y, name: str = "bad.npz") -> Path:
        return _npz(self.tmp / name, images, labels)

    def out(self) -> str:
        return f"training.output_dir={self.run}"

    def image(self, *overrides: str, data: Path | None = None) -> list[str]:
        path = data or self.npz(name="good.npz")
        return ["train", "recipe=quickstart", f"data.path={path}", "model.name=test_resnet", self.out(), *overrides]

    def text(self, data: Path, *overrides: str, recipe: str = "clause_type_minilm") -> list[str]:
        return ["train", f"recipe={recipe}", f"data.path={data}", f"model.name={self.bert}", self.out(), *overrides]

    def contracts(self) -> Path:
        import json

        from .conftest import make_contracts

        return self.file("contracts.jsonl", "".join(json.dumps(d) + "\n" for d in make_contracts(8)))


def _value_case(recipe: str, overrides: list[str], message: str):
    return lambda c: (["train", f"recipe={recipe}", *overrides, c.out()], [message])


def _array_case(images, labels, message: str):
    return lambda c: (c.image(data=c.npz(images, labels)), ["bad.npz"])


def _text_file_case(name: str, content, message: str):
    fmt = Path(name).suffix.lstrip(".")
    return lambda c: (c.text(c.file(name, content), f"data.format={fmt}"), [name, message.split(":")[-1].strip()])


def _span_case(obj, message: str):
    import json

    docs = json.dumps({"text": "fine", "spans": []}) + "\n" + json.dumps(obj) + "\n"
    return lambda c: (c.text(c.file("docs.jsonl", docs), recipe="contract_tagging_minilm"), ["docs.jsonl:2", message])


def _yaml_case(body: str, expected: list[str]):
    return lambda c: (["train", f"recipe={c.file('my_recipe.yaml', body)}", c.out()], expected)


CLI_CASES = {
    **{f"value: {k}": _value_case(*v) for k, v in BAD_VALUES.items()},
    **{f"array: {k}": _array_case(*v) for k, v in BAD_ARRAYS.items()},
    **{f"text file: {k}": _text_file_case(*v) for k, v in BAD_FILES.items()},
    **{f"spans: {k}": _span_case(*v) for k, v in BAD_SPANS.items()},
    # keys and recipe files
    "misspelled section": _value_case("quickstart", ["trainig.learning_rate=1e-3"], 'did you mean "training"'),
    "misspelled model key": _value_case("quickstart", ["model.nmae=resnet50"], "model.nmae: unknown key (did you mean"),
    "misspelled TrainingArguments key": _value_case("quickstart", ["training.learnin_rate=1"], "learning_rate"),
    "removed warmup_ratio": _value_case("quickstart", ["training.warmup_ratio=0.1"], "warmup_steps"),
    "removed evaluation_strategy": _value_case("quickstart", ["training.evaluation_strategy=epoch"], "eval_strategy"),
    "removed overwrite_output_dir": _value_case("quickstart", ["training.overwrite_output_dir=true"], "overwrite"),
    "removed logging_dir": _value_case("quickstart", ["training.logging_dir=logs"], "training.logging_dir"),
    "learning rate not a number": _value_case("quickstart", ["training.learning_rate=abc"], "training.learning_rate"),
    "ema decay not a number": _value_case("quickstart", ["techniques.ema.decay=high"], "techniques.ema.decay"),
    "ema decay out of range": _value_case(
        "quickstart", ["techniques.ema.enabled=true", "techniques.ema.decay=1.5"], "techniques.ema.decay must be"
    ),
    "unknown loss": _value_case("quickstart", ["techniques.loss.name=dice"], "techniques.loss.name: unknown"),
    "unknown optimizer of hf_tune": _value_case("quickstart", ["techniques.optim.name=adamm"], "techniques.optim.name"),
    "unknown clipping mode": _value_case("quickstart", ["techniques.clipping.mode=sometimes"], "techniques.clipping"),
    "layer decay above 1": _value_case("quickstart", ["techniques.lr.layer_decay=1.5"], "techniques.lr.layer_decay"),
    "negative frozen blocks": _value_case("quickstart", ["techniques.freeze.first_n_blocks=-1"], "first_n_blocks"),
    "two input channels": _value_case("quickstart", ["model.in_chans=2"], "model.in_chans must be 1 or 3"),
    "bf16 and fp16": _value_case("quickstart", ["training.bf16=true", "training.fp16=true"], "choose one precision"),
    "resume and overwrite": _value_case("quickstart", ["resume=true", "overwrite=true"], "conflict"),
    "unknown split": _value_case("quickstart", ["data.split=validation"], "data.split: must be one of"),
    "split ratios not summing to 1": _value_case("quickstart", ["data.split_ratios=[0.5,0.2,0.1]"], "split_ratios"),
    "unknown recipe": lambda c: (["train", "recipe=pneumonia_resnet", c.out()], ["recipe=pneumonia_resnet", "did you"]),
    "recipe file missing": lambda c: (["train", f"recipe={c.tmp / 'nope.yaml'}", c.out()], ["nope.yaml", "not found"]),
    "recipe YAML broken": _yaml_case("task: image_classification\ntraining: {lr: [1, 2\n", ["not valid YAML"]),
    "recipe without task": _yaml_case("model: {name: x}\n", ["task: required"]),
    "recipe of an unknown kind": _yaml_case("task: image_segmentation\n", ["image_segmentation"]),
    "argument without =": lambda c: (["train", "recipe=quickstart", "learning_rate", c.out()], ["'learning_rate'"]),
    # data
    "data file missing": lambda c: (c.image(data=c.tmp / "missing.npz"), ["missing.npz"]),
    "data.path beside the built-in digits": _value_case(
        "quickstart", ["data.format=sklearn_digits", "data.path=x.npz"], "data.path=x.npz would be ignored"
    ),
    "image folder without classes": lambda c: (
        c.image("data.format=imagefolder", data=c.file("e/x.txt", "").parent),
        ["no class subfolders"],
    ),
    "labels outside data.labels": lambda c: (
        c.image("data.labels=[a,b]", data=c.npz(X, (np.arange(64) % 3).reshape(-1, 1))),
        ["bad.npz", "outside the 2 classes"],
    ),
    "text file to an image recipe": lambda c: (
        c.image(data=c.file("texts.jsonl", '{"text": "a", "label": "b"}\n')),
        ["texts.jsonl", "not an image source"],
    ),
    "csv without the label column": lambda c: (
        c.text(c.file("texts.csv", "text,lab\nhello,a\n"), "data.format=csv"),
        ["texts.csv", "data.label_column"],
    ),
    "window longer than the model": lambda c: (
        c.text(c.contracts(), "data.window=1024", recipe="contract_tagging_minilm"),
        ["data.window=1024", "512 token positions"],
    ),
    "stride longer than the window": lambda c: (
        c.text(c.contracts(), "data.window=64", "data.stride=100", recipe="contract_tagging_minilm"),
        ["data.stride must be"],
    ),
    "evaluation stride longer than the window": lambda c: (
        c.text(c.contracts(), "data.window=64", "data.eval_stride=63", recipe="contract_tagging_minilm"),
        ["data.eval_stride must be", "eval_stride=63"],
    ),
    "multi-task task length longer than the model": lambda c: (
        [
            "train",
            "recipe=contracts_multitask",
            f"model.name={c.bert}",
            *(f"tasks.{t}.data.path={c.contracts()}" for t in ("clauses", "clause_types")),
            "tasks.clause_types.data.max_length=2048",
            c.out(),
        ],
        ["tasks.clause_types.data.max_length=2048"],
    ),
    "unknown key of a multi-task task": _value_case(
        "contracts_multitask", ["tasks.clauses.data.windw=64"], "tasks.clauses.data.windw"
    ),
    # output folders and run state
    "output folder is a file": lambda c: (
        ["train", "recipe=quickstart", f"training.output_dir={c.file('run', 'x')}"],
        ["is a file, not a folder"],
    ),
    "resume without checkpoints": lambda c: (c.image("resume=true"), ["resume=true", "no complete checkpoint"]),
    # other commands
    "evaluate a missing folder": lambda c: (["evaluate", str(c.tmp / "nope"), "data.path=x"], ["nope", "no such"]),
    "evaluate a folder that is not a run": lambda c: (
        ["evaluate", str(c.file("notes/readme.txt", "x").parent)],
        ["notes", "resolved_config.yaml"],
    ),
    "predict a missing model": lambda c: (["predict", str(c.tmp / "nope"), "x.png"], ["nope"]),
    "report a missing run": lambda c: (["report", str(c.tmp / "nope")], ["nope"]),
    "push a missing run": lambda c: (["push", str(c.tmp / "nope"), "me/x"], ["nope"]),
}


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_catalogue_through_the_cli(case, tmp_path, tiny_bert, capsys, monkeypatch):
    from hf_tune.recipes.base import Recipe

    def no_training(self):
        raise AssertionError(f"{case}: training started; the input should have been refused before")

    monkeypatch.setattr(Recipe, "train", no_training)
    ctx = Ctx(tmp_path, tiny_bert)
    argv, expected = CLI_CASES[case](ctx)
    before = _snapshot(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    for part in expected:
        assert part in err, (part, err[-2000:])
    assert _snapshot(tmp_path) == before  # nothing trained, written, truncated or deleted


def test_the_catalogue_has_at_least_60_cases():
    assert len(CLI_CASES) >= 60
