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
