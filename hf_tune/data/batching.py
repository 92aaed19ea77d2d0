"""Length-aware batching for token sequences: the pure orderings and the samplers that carry them.

Random batches pad every sequence to the longest of its batch; on text with a wide length spread (CoNLL
sentences, the short last window of every long document) most of the encoder's work is then padding.

- Training (:class:`LengthGroupedSampler`): each epoch the examples are shuffled, cut into buckets of
  ``bucket_batches`` batches, sorted by length inside each bucket and cut into batches; the batches are then
  shuffled across the whole epoch, so consecutive batches are not ordered by length. The order depends only on
  (seed, epoch): every process draws the same one, accelerate's batch sharding splits it without overlap, and a
  resumed run sees exactly the batches of the uninterrupted one.
- Evaluation and prediction (:class:`LengthSortedSampler`): longest first (a batch that does not fit shows up
  at once), ties in input order; :func:`in_input_order` puts the results back where the inputs were.
- Frozen-encoder passes (:func:`token_budget_batches`): shortest first, batches cut by padded tokens rather
  than by count.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

MAX_BUCKET_BATCHES = 50
"""Batches per length bucket (Trainer's own mega-batch size): large enough to find similar lengths, small
enough that which examples share a batch still changes from epoch to epoch."""


def bucket_batches(n: int, batch_size: int) -> int:
    """Batches per bucket: :data:`MAX_BUCKET_BATCHES`, or fewer so that a small set still has 4 buckets."""
    return max(1, min(MAX_BUCKET_BATCHES, n // (4 * batch_size)))


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int, bucket: int | None = None
) -> list[np.ndarray]:
    """One epoch's batches (index arrays) of similar lengths, in random order.

    Buckets hold ``bucket`` batches (default :func:`bucket_batches`), so only the last bucket can end in a
    short batch; that one batch goes last, which keeps a DataLoader cutting the flat index stream every
    ``batch_size`` indices aligned with these batches.
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n)
    size = (bucket or bucket_batches(n, batch_size)) * batch_size
    batches = []
    for start in range(0, n, size):
        chunk = perm[start : start + size]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    tail = batches.pop() if batches and len(batches[-1]) < batch_size else None
    shuffled = [batches[i] for i in rng.permutation(len(batches))]
    return shuffled + ([tail] if tail is not None else [])


def longest_first(lengths: Sequence[int]) -> np.ndarray:
    """Indices by decreasing length; equal lengths keep their input order."""
    return np.argsort(-np.asarray(lengths), kind="stable")


def in_input_order(values: Any, order: np.ndarray) -> Any:
    """Rows produced in ``order`` (row k belongs to input ``order[k]``) put back in input order; nested
    tuples, lists and dicts of arrays are handled, None passes through."""
    if values is None:
        return None
    if isinstance(values, dict):
        return {k: in_input_order(v, order) for k, v in values.items()}
    if isinstance(values, (tuple, list)):
        return type(values)(in_input_order(v, order) for v in values)
    values = np.asarray(values)
    if values.shape[:1] != (len(order),):
        raise RuntimeError(f"{values.shape[0]} rows for {len(order)} inputs: cannot restore the input order")
    out = np.empty_like(values)
    out[order] = values
    return out


def sequence_lengths(dataset: Any, key: str = "input_ids") -> np.ndarray:
    """Token count of every item: the dataset's own ``lengths`` when it has them (no item is built, so an
    augmenting dataset draws nothing), a ``datasets`` column, or ``len(item[key])`` per item."""
    own = getattr(dataset, "lengths", None)
    if own is not None:
        return np.asarray(own)
    if key in (getattr(dataset, "column_names", None) or ()):
        return np.asarray([len(x) for x in dataset[key]])
    items = (dataset[i] for i in range(len(dataset)))
    try:
        return np.asarray([len(item[key]) for item in items])
    except (KeyError, TypeError, IndexError):
        raise ValueError(
            f"training.train_sampling_strategy=group_by_length needs items with {key!r} (token sequences); "
            f"choose another train_sampling_strategy for this data"
        ) from None


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Training indices from :func:`length_grouped_batches`, re-drawn per epoch through ``set_epoch`` (Trainer
    calls it at every epoch start, also through accelerate's sharded loader)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int = 0, bucket: int | None = None) -> None:
        self.lengths, self.batch_size, self.seed, self.bucket = np.asarray(lengths), batch_size, seed, bucket
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        batches = length_grouped_batches(
            self.lengths, self.batch_size, seed=self.seed, epoch=self.epoch, bucket=self.bucket
        )
        for batch in batches:
            yield from batch.tolist()


class LengthSortedSampler(torch.utils.data.Sampler[int]):
    """Evaluation indices longest first; ``order`` is what :func:`in_input_order` needs to undo it."""

    def __init__(self, lengths: Sequence[int]) -> None:
        self.order = longest_first(lengths)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]], multiple: int = 1) -> int:
    """Token positions a forward pass computes when each batch is padded to its longest member (rounded up to
    ``multiple``): the cost that length grouping lowers, against ``sum(lengths)`` real tokens."""
    lengths = np.asarray(lengths)
    total = 0
    for b in batches:
        if len(b):
            longest = int(lengths[np.asarray(b)].max())
            total += len(b) * (-(-longest // multiple) * multiple)
    return total


def token_budget_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices grouped into batches whose padded size (count x longest) stays within ``budget`` tokens, shortest
    first. Sorting by length first makes padding small; a unit longer than the budget gets a batch of its own."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
