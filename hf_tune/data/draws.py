"""Random draws of a training item as a pure function of (seed, epoch, index).

Augmentation draws random numbers while a DataLoader builds a batch. Drawn from the process-wide RNGs,
they depend on everything drawn before, which breaks exact resuming: on a resume in the middle of an epoch
Trainer puts the checkpoint's RNG state back only *after* fetching the first batch (so the shuffle order
is drawn from the same state as in the uninterrupted run), and that batch is then augmented from the wrong
state. Seeding each item's draws from (seed, epoch, index) makes them the same whatever came before, in a
resumed run, in every DataLoader worker and on every rank.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one item of one epoch (numpy's SeedSequence mixes the three words)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Run a block with torch's CPU generator, numpy's global RNG and Python's ``random`` seeded from ``seed``,
    and put all three back afterwards (library transforms such as timm's and torchvision's draw from them).
    Only the CPU generator is touched: ``torch.manual_seed`` would reseed the GPUs too."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class ItemDraws:
    """Mixin for training datasets that draw random numbers per item (augmentation).

    accelerate's ``DataLoaderShard.set_epoch`` (called by Trainer before every epoch) calls :meth:`set_epoch`;
    the recipe sets ``draw_seed`` from ``training.seed`` (:func:`seed_item_draws`). DataLoader workers get a
    copy of the dataset when an epoch's iterator starts, so the epoch reaches them too (not with
    ``training.dataloader_persistent_workers``, whose workers keep their first copy).
    """

    draw_seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def item_rng(self, index: int) -> np.random.Generator:
        """A generator for item ``index`` of the current epoch."""
        return np.random.default_rng(item_seed(self.draw_seed, self.epoch, index))

    def item_draws(self, index: int) -> contextlib.AbstractContextManager[None]:
        """The process-wide RNGs seeded for item ``index`` of the current epoch, for a block of library calls."""
        return seeded_global_rngs(item_seed(self.draw_seed, self.epoch, index))


def seed_item_draws(dataset: object, seed: int) -> None:
    """Give ``dataset`` (and the datasets a mixture holds, ``.datasets``) the seed of their item draws."""
    if isinstance(dataset, ItemDraws):
        dataset.draw_seed = int(seed)
    for inner in getattr(dataset, "datasets", None) or []:
        seed_item_draws(inner, seed)
