"""Per-item augmentation draws: a pure function of (seed, epoch, index), whatever was drawn before."""

from __future__ import annotations

import random

import numpy as np
import torch

from hf_tune.data.draws import ItemDraws, seed_item_draws


class Noise(ItemDraws):
    """Draws from all three process-wide RNGs, as library transforms do."""

    def __getitem__(self, i: int) -> tuple[float, float, float]:
        with self.item_draws(i):
            return float(torch.rand(())), random.random(), float(np.random.rand())


def test_an_items_draws_do_not_depend_on_what_was_drawn_before():
    ds = Noise()
    seed_item_draws(ds, 7)
    first = ds[3]
    torch.rand(100), random.random(), np.random.rand(5)  # anything else drawn in between
    assert ds[5] != first and ds[3] == first


def test_draws_differ_between_epochs_and_seeds():
    a, b = Noise(), Noise()
    seed_item_draws(a, 7)
    seed_item_draws(b, 8)
    e0 = a[0]
    a.set_epoch(1)
    assert a[0] != e0 and b[0] != e0
    a.set_epoch(0)
    assert a[0] == e0


def test_the_process_wide_rngs_continue_as_if_nothing_was_drawn():
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    expected = float(torch.rand(())), random.random(), float(np.random.rand())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    Noise()[0]
    assert (float(torch.rand(())), random.random(), float(np.random.rand())) == expected


def test_a_mixture_passes_the_seed_and_the_epoch_to_its_tasks():
    from hf_tune.multitask import TaskMixture

    class Sized(Noise):
        def __len__(self) -> int:
            return 2

    inner = Sized()
    mix = TaskMixture({"a": inner})
    seed_item_draws(mix, 11)
    mix.set_epoch(3)
    assert (inner.draw_seed, inner.epoch) == (11, 3)
