import math

import pytest
import torch

from hf_tune.clipping import (
    adaptive_clip_,
    clip_by_value_,
    global_grad_norm,
    percentile_threshold,
    unitwise_norm,
)


def _params_with_grads():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(torch.randn(4))
    a.grad = torch.randn(4, 3) * 10
    b.grad = torch.randn(4) * 10
    return [a, b]


def test_norm_clipping_bounds_the_global_norm():
    ps = _params_with_grads()
    before = global_grad_norm(ps)
    torch.nn.utils.clip_grad_norm_(ps, 1.0)  # Trainer's max_grad_norm does exactly this
    assert before > 1.0 and global_grad_norm(ps) <= 1.0 + 1e-5


def test_value_clipping_bounds_every_element():
    ps = _params_with_grads()
    clip_by_value_(ps, 0.5)
    assert all(p.grad.abs().max() <= 0.5 for p in ps)


def test_agc_matches_formula_on_hand_made_case():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))  # unit norms 5 and 0 (-> eps)
    w.grad = torch.tensor([[6.0, 8.0], [0.003, 0.004]])  # unit grad norms 10 and 0.005
    adaptive_clip_([w], factor=0.1, eps=0.01)
    # unit 0: max = 0.1 * 5 = 0.5 < 10 -> scaled by 0.05; unit 1: max = 0.1 * 0.01 = 0.001 < 0.005 -> x0.2
    torch.testing.assert_close(w.grad, torch.tensor([[0.3, 0.4], [0.0006, 0.0008]]))


def test_agc_leaves_small_gradients_alone():
    w = torch.nn.Parameter(torch.ones(2, 2))
    w.grad = torch.full((2, 2), 1e-4)
    adaptive_clip_([w], factor=0.01)
    torch.testing.assert_close(w.grad, torch.full((2, 2), 1e-4))


def test_unitwise_norm_shapes():
    assert unitwise_norm(torch.ones(3, 2, 2)).shape == (3, 1, 1)
    assert unitwise_norm(torch.tensor([3.0, 4.0])).item() == pytest.approx(5.0)


def test_percentile_threshold():
    assert percentile_threshold([1.0, 2.0], 90, min_history=3, fallback=7.0) == 7.0
    hist = [float(i) for i in range(1, 101)] + [math.inf, math.nan]
    assert percentile_threshold(hist, 50, min_history=10, fallback=7.0) == pytest.approx(50.5)
