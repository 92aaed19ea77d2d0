from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_tune.data.images import (
    IMAGE_SOURCES,
    DataError,
    ImageSplit,
    check_labels,
    detect_format,
    load_image_source,
    stratified_indices,
    take_stratified,
)
from hf_tune.data.splits import carve

from .conftest import make_images


def test_stratified_indices_keep_class_shares_and_are_seeded():
    labels = np.array([0] * 80 + [1] * 20)
    keep, take = stratified_indices(labels, 0.1, seed=3)
    assert len(take) == 10 and (labels[take] == 1).sum() == 2
    assert set(keep).isdisjoint(take) and len(keep) + len(take) == 100
    np.testing.assert_array_equal(take, stratified_indices(labels, 0.1, seed=3)[1])


def test_carve_811_from_train_only():
    labels = np.array([0] * 500 + [1] * 500)
    out = carve({"train": ImageSplit(np.zeros((1000, 2, 2)), labels)}, [0.8, 0.1, 0.1], 0, "auto", take_stratified)
    assert {k: len(v) for k, v in out.items()} == {"train": 800, "val": 100, "test": 100}
    assert (out["val"].labels == 1).sum() == 50


def test_carve_keeps_existing_val_and_respects_zero_test():
    splits = {
        "train": ImageSplit(np.zeros((90, 2, 2)), np.arange(90) % 2),
        "val": ImageSplit(np.zeros((10, 2, 2)), np.arange(10) % 2),
    }
    out = carve(splits, [0.9, 0.1, 0.0], 0, "auto", take_stratified)
    assert set(out) == {"train", "val"} and len(out["train"]) == 90


def test_npz_source(tiny_npz: Path):
    src = load_image_source(str(tiny_npz))
    assert set(src.splits) == {"train", "val"} and len(src.splits["train"]) == 48
    assert src.splits["train"].image(0).size == (16, 16)


def test_imagefolder_source_and_corrupt_image(tmp_path: Path):
    x, y = make_images(6)
    for i, (img, label) in enumerate(zip(x, y.ravel(), strict=True)):
        d = tmp_path / "imgs" / ("cat" if label else "dog")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    src = load_image_source(str(tmp_path / "imgs"))
    assert src.label_names == ["cat", "dog"] and len(src.splits["train"]) == 6
    (tmp_path / "imgs" / "cat" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"(?s)unreadable image.*broken\.png"):
        load_image_source(str(tmp_path / "imgs"))


def test_missing_path_and_bad_npz(tmp_path: Path):
    with pytest.raises(DataError, match="nope.npz: file or folder not found"):
        load_image_source(str(tmp_path / "nope.npz"))
    np.savez(tmp_path / "bad.npz", something=np.zeros(3))
    with pytest.raises(DataError, match="no '<split>_images' arrays"):
        load_image_source(str(tmp_path / "bad.npz"))


def test_label_outside_class_list_and_empty_split():
    splits = {"train": ImageSplit(np.zeros((3, 2, 2)), [0, 1, 5])}
    with pytest.raises(DataError, match=r"label id\(s\) \[5\] outside the 2 classes"):
        check_labels(splits, 2, "f.npz")
    with pytest.raises(DataError, match="split 'val' is empty"):
        check_labels({"val": ImageSplit(np.zeros((0, 2, 2)), [])}, 2, "f.npz")


def test_format_detection_and_registry():
    assert detect_format("x.npz") == "npz"
    assert detect_format("sklearn:digits") == "sklearn_digits"
    assert detect_format("user/some-dataset") == "hf"
    assert {"npz", "imagefolder", "hf", "sklearn_digits"} <= set(IMAGE_SOURCES.names())


def test_builtin_digits_are_real_data():
    src = load_image_source(None, "sklearn_digits")
    assert len(src.splits["train"]) == 1797 and src.label_names == [str(i) for i in range(10)]


def test_hf_saved_dataset_source(tmp_path: Path):
    import datasets

    x, y = make_images(8)
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["up", "down"])})
    ds = datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in x], "y": y.ravel().tolist()}, features)
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(4))}).save_to_disk(tmp_path / "ds")
    src = load_image_source(str(tmp_path / "ds"), image_column="img", label_column="y")
    assert set(src.splits) == {"train", "val"} and src.label_names == ["up", "down"]
    assert src.splits["val"].image(0).size == (16, 16)
    with pytest.raises(DataError, match="no column 'image'"):
        load_image_source(str(tmp_path / "ds"))
