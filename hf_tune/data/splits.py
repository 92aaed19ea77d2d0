"""One split policy for every recipe kind and data format.

Training: a source gives the splits it has (``train`` only for a single file; npz/datasets/folders may also
hold ``val``/``test``), ``data.val_path``/``data.test_path`` add theirs, and :func:`carve` takes what is still
wanted out of ``train`` under ``data.carve``: ``auto`` carves val/test (``data.split_ratios``) only from a
single source, so once the user supplies a validation or test set the training file is used whole;
``missing`` carves whichever is missing; ``never`` carves nothing.

Evaluation (``data.split``): ``auto`` scores ``test`` if the source has one, else ``val``, else all of a
source without splits; ``train``/``val``/``test`` score that split as training made it (carved the same way,
same seed); ``all`` scores every example of the source.

The functions are generic over the split container; each kind passes how to take a seeded fraction out of
its training split (stratified for labelled images, by document for spans) and how to concatenate splits.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TypeVar

import numpy as np

from hf_tune.errors import DataError

T = TypeVar("T")
Take = Callable[[T, float, int], tuple[T, T]]
"""``take(split, fraction, seed) -> (kept, taken)``."""


def splits_to_carve(available: Collection[str], ratios: Sequence[float], mode: str) -> list[str]:
    """Which of val/test are carved out of train, in order."""
    if "train" not in available or mode == "never":
        return []
    wanted = [s for s, r in (("val", ratios[1]), ("test", ratios[2])) if r > 0 and s not in available]
    if mode == "auto" and set(available) != {"train"}:
        return []
    return wanted


def carve(splits: dict[str, T], ratios: Sequence[float], seed: int, mode: str, take: Take) -> dict[str, T]:
    """``splits`` with the splits :func:`splits_to_carve` names taken out of ``train`` at ``ratios``."""
    out = dict(splits)
    todo = splits_to_carve(out, ratios, mode)
    share = {"val": ratios[1], "test": ratios[2]}
    pool = ratios[0] + sum(share[s] for s in todo)
    train = out.get("train")
    for i, name in enumerate(todo):
        train, out[name] = take(train, share[name] / pool, seed + i)
        pool -= share[name]
    if todo:
        out["train"] = train
    return out


def select(
    splits: dict[str, T],
    requested: str,
    *,
    carved: Callable[[dict[str, T]], dict[str, T]],
    concat: Callable[[list[T]], T],
    source: str | None,
) -> tuple[str, T]:
    """The split ``data.split=requested`` scores, and its name (``all`` for a whole source)."""
    if requested == "all":
        return "all", concat(list(splits.values())) if len(splits) > 1 else next(iter(splits.values()))
    if requested == "auto":
        if set(splits) == {"train"}:
            return "all", splits["train"]
        name = next(s for s in ("test", "val", "train") if s in splits)
        return name, splits[name]
    made = carved(splits)
    if requested not in made:
        raise DataError(f"data.split={requested}: {source} gives splits {sorted(made)}; use data.split=auto or all")
    return requested, made[requested]


def take_items(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random ``fraction`` of list items (whole documents or texts), at least one; order kept."""
    n = len(items)
    k = min(n, max(1, int(round(n * fraction))))
    chosen = set(np.random.default_rng(seed).permutation(n)[:k].tolist())
    return [x for i, x in enumerate(items) if i not in chosen], [x for i, x in enumerate(items) if i in chosen]


def concat_items(parts: list[list]) -> list:
    return [x for part in parts for x in part]
