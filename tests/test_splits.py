"""The one split policy (hf_tune.data.splits): what is carved for training, what evaluate scores."""

import numpy as np
import pytest

from hf_tune.data.images import ImageSplit, concat_splits, take_stratified
from hf_tune.data.splits import carve, concat_items, select, splits_to_carve, take_items
from hf_tune.errors import DataError

RATIOS = [0.8, 0.1, 0.1]


@pytest.mark.parametrize(
    "available, mode, expected",
    [
        ({"train"}, "auto", ["val", "test"]),  # a single source: 8:1:1
        ({"train", "val"}, "auto", []),  # a validation set given: train is used whole
        ({"train", "test"}, "auto", []),
        ({"train", "val"}, "missing", ["test"]),  # the old behaviour, on request
        ({"train"}, "never", []),
        ({"val"}, "auto", []),
    ],
)
def test_what_is_carved(available, mode, expected):
    assert splits_to_carve(available, RATIOS, mode) == expected


def test_zero_ratio_is_never_carved():
    assert splits_to_carve({"train"}, [0.9, 0.1, 0.0], "auto") == ["val"]


def test_carve_lists_by_item_seeded_and_disjoint():
    items = list(range(100))
    out = carve({"train": items}, RATIOS, 7, "auto", take_items)
    assert {k: len(v) for k, v in out.items()} == {"train": 80, "val": 10, "test": 10}
    assert sorted(out["train"] + out["val"] + out["test"]) == items
    assert out == carve({"train": items}, RATIOS, 7, "auto", take_items)
    assert out != carve({"train": items}, RATIOS, 8, "auto", take_items)


def test_val_file_keeps_the_training_file_whole():
    splits = {"train": list(range(100)), "val": list(range(100, 120))}
    assert carve(splits, RATIOS, 0, "auto", take_items) == splits


def test_images_and_lists_follow_the_same_rule():
    labels = np.arange(100) % 2
    images = {"train": ImageSplit(np.zeros((100, 2, 2)), labels)}
    lists = {"train": list(range(100))}
    a = carve(images, RATIOS, 0, "auto", take_stratified)
    b = carve(lists, RATIOS, 0, "auto", take_items)
    assert {k: len(v) for k, v in a.items()} == {k: len(v) for k, v in b.items()}


def _select(splits, requested, take=take_items, concat=concat_items):
    return select(splits, requested, carved=lambda s: carve(s, RATIOS, 0, "auto", take), concat=concat, source="src")


def test_auto_scores_all_of_a_source_without_splits():
    name, items = _select({"train": list(range(44))}, "auto")
    assert name == "all" and items == list(range(44))
    name, split = _select({"train": ImageSplit(np.zeros((44, 2, 2)), np.zeros(44))}, "auto", take_stratified)
    assert name == "all" and len(split) == 44


def test_auto_prefers_test_then_val():
    assert _select({"train": [1], "val": [2], "test": [3]}, "auto") == ("test", [3])
    assert _select({"train": [1], "val": [2]}, "auto") == ("val", [2])


def test_named_split_is_carved_as_in_training_and_all_concatenates():
    items = list(range(100))
    name, val = _select({"train": items}, "val")
    assert name == "val" and val == carve({"train": items}, RATIOS, 0, "auto", take_items)["val"]
    parts = {"train": [ImageSplit(np.zeros((3, 2, 2)), [0, 1, 0])], "val": [ImageSplit(np.zeros((2, 2, 2)), [1, 1])]}
    name, both = _select({k: v[0] for k, v in parts.items()}, "all", take_stratified, concat_splits)
    assert name == "all" and len(both) == 5 and list(both.labels) == [0, 1, 0, 1, 1]


def test_missing_split_is_a_data_error():
    with pytest.raises(DataError, match="data.split=test"):
        _select({"train": [1, 2], "val": [3]}, "test")
