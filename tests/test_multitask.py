"""Multi-task math and sampling: each against its formula or a hand-computed case."""

import math

import numpy as np
import pytest
import torch

from hf_tune.multitask import (
    SAMPLING,
    WEIGHTINGS,
    TaskLossMeter,
    TaskLossWeighting,
    TaskMixture,
    TaskSampler,
    dwa_weights,
    pcgrad_project,
    pcgrad_surrogate,
    sampling_probabilities,
    uncertainty_terms,
)

SIZES = [900, 100]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("proportional", [0.9, 0.1]),
        ("temperature", [30 / 40, 10 / 40]),  # T=2: sqrt(900)=30, sqrt(100)=10
        ("uniform", [0.5, 0.5]),
        ("round_robin", [0.5, 0.5]),
    ],
)
def test_sampling_probabilities_match_formulas(strategy, expected):
    np.testing.assert_allclose(sampling_probabilities(strategy, SIZES, temperature=2.0), expected)


def test_temperature_interpolates_between_proportional_and_uniform():
    np.testing.assert_allclose(sampling_probabilities("temperature", SIZES, 1.0), [0.9, 0.1])
    p = sampling_probabilities("temperature", SIZES, 1e6)
    np.testing.assert_allclose(p, [0.5, 0.5], atol=1e-5)


@pytest.mark.parametrize("strategy", SAMPLING.names())
def test_every_sampling_strategy_is_a_distribution(strategy):
    p = sampling_probabilities(strategy, [5, 50, 500], 3.0)
    assert p.shape == (3,) and np.all(p > 0) and math.isclose(p.sum(), 1.0)


def test_empty_task_is_refused():
    with pytest.raises(ValueError, match="every task needs"):
        sampling_probabilities("uniform", [10, 0])


def test_sampler_draws_tasks_at_their_probabilities_and_is_seeded():
    probs = sampling_probabilities("temperature", SIZES, 2.0)
    s = TaskSampler(SIZES, probs, seed=3, epoch_size=20000)
    idx = np.fromiter(iter(s), dtype=int)
    share = np.mean(idx >= SIZES[0])
    assert abs(share - probs[1]) < 0.015
    assert idx.min() >= 0 and idx.max() < sum(SIZES) and len(idx) == len(s) == 20000
    again = np.fromiter(iter(TaskSampler(SIZES, probs, seed=3, epoch_size=20000)), dtype=int)
    np.testing.assert_array_equal(idx, again)  # every process draws the same sequence
    s.set_epoch(1)
    assert not np.array_equal(idx, np.fromiter(iter(s), dtype=int))


def test_sampler_walks_each_task_without_replacement_before_repeating():
    s = TaskSampler([4, 6], [0.5, 0.5], seed=0, epoch_size=200)
    small = [i for i in s if i < 4]
    for start in range(0, len(small) - 3, 4):
        assert sorted(small[start : start + 4]) == [0, 1, 2, 3]


def test_round_robin_gives_homogeneous_batches_in_turn():
    s = TaskSampler([50, 7, 20], [1 / 3] * 3, round_robin_batch=4, seed=0, epoch_size=48)
    idx = list(s)
    offsets = [0, 50, 57, 77]
    tasks = [next(k for k in range(3) if offsets[k] <= i < offsets[k + 1]) for i in idx]
    batches = [tasks[b : b + 4] for b in range(0, 48, 4)]
    assert all(len(set(b)) == 1 for b in batches)
    assert [b[0] for b in batches] == [0, 1, 2] * 4


def test_mixture_tags_examples_with_task_ids():
    mix = TaskMixture({"a": [{"x": 1}, {"x": 2}], "b": [{"x": 3}]})
    assert len(mix) == 3 and mix.sizes == [2, 1]
    assert [mix[i]["task_ids"] for i in range(3)] == [0, 0, 1] and mix[2]["x"] == 3
    only_b = TaskMixture({"b": [{"x": 3}]}, task_ids={"b": 1})
    assert only_b[0]["task_ids"] == 1


def test_uncertainty_terms_hand_computed_and_optimum_at_log_loss():
    losses, w = torch.tensor([2.0, 0.5]), torch.ones(2)
    s = torch.tensor([0.0, math.log(2.0)])
    np.testing.assert_allclose(uncertainty_terms(losses, s, w).numpy(), [2.0, 0.25 + math.log(2.0)], rtol=1e-6)
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L: gradient descent on s settles at s = log L
    s = torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([s], lr=0.1)
    for _ in range(2000):
        opt.zero_grad()
        uncertainty_terms(losses, s, w).sum().backward()
        opt.step()
    np.testing.assert_allclose(s.detach().numpy(), np.log([2.0, 0.5]), atol=1e-3)


def test_dwa_weights_hand_computed():
    # ratios r = [1.0, 0.5]; T=2: w = 2 * softmax([0.5, 0.25])
    w = dwa_weights([1.0, 0.5], [1.0, 1.0], temperature=2.0)
    e = np.exp([0.5, 0.25])
    np.testing.assert_allclose(w, 2 * e / e.sum())
    assert math.isclose(w.sum(), 2.0) and w[0] > w[1]  # the task whose loss fell less gets more weight


def test_pcgrad_projects_only_conflicting_gradients():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # dot = -1 < 0
    out = pcgrad_project(g)
    np.testing.assert_allclose(out[0].numpy(), [0.5, 0.5])  # g1 - (g1.g2)/|g2|^2 g2
    np.testing.assert_allclose(out[1].numpy(), [0.0, 1.0])  # g2 - (g2.g1)/|g1|^2 g1
    assert torch.dot(out[0], g[1]) == pytest.approx(0.0) and torch.dot(out[1], g[0]) == pytest.approx(0.0)
    agree = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(pcgrad_project(agree), agree)


def test_pcgrad_surrogate_gives_projected_gradient_on_shared_and_plain_on_heads():
    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 2, bias=False)
    heads = [torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)]
    x = torch.randn(8, 3)
    y = [torch.randn(8, 1), -torch.randn(8, 1)]

    def terms():
        h = shared(x)
        return [torch.nn.functional.mse_loss(hd(h), t) for hd, t in zip(heads, y, strict=True)]

    plain = terms()
    g = [torch.autograd.grad(t, shared.weight, retain_graph=True)[0].reshape(-1) for t in plain]
    expected = pcgrad_project(torch.stack(g)).sum(0).reshape(2, 3)
    head_grads = [torch.autograd.grad(sum(plain), hd.weight, retain_graph=True)[0] for hd in heads]

    loss = pcgrad_surrogate(terms(), [shared.weight], np.random.default_rng(0))
    assert loss.item() == pytest.approx(sum(t.item() for t in plain))
    loss.backward()
    torch.testing.assert_close(shared.weight.grad, expected)
    for hd, hg in zip(heads, head_grads, strict=True):
        torch.testing.assert_close(hd.weight.grad, hg)


@pytest.mark.parametrize("method", WEIGHTINGS.names())
def test_loss_weighting_terms_sum_to_the_weighted_loss(method):
    lw = TaskLossWeighting(["a", "b", "c"], method, [1.0, 0.5, 2.0])
    losses = {"a": torch.tensor(1.0), "c": torch.tensor(3.0)}  # task b absent from this batch
    terms = lw.terms(losses)
    assert set(terms) == {"a", "c"}
    assert sum(t.item() for t in terms.values()) == pytest.approx(1.0 * 1.0 + 2.0 * 3.0)  # s = 0, DWA = 1
    lw.set_dynamic([2.0, 1.0, 0.5])
    assert lw.effective_weights() == pytest.approx({"a": 2.0, "b": 0.5, "c": 1.0})


def test_loss_meter_means_for_logs_and_periods():
    m = TaskLossMeter(["a", "b"])
    m.add({"a": torch.tensor(1.0), "b": torch.tensor(4.0)})
    m.add({"a": torch.tensor(3.0)})
    assert m.take_logs() == {"loss_a": 2.0, "loss_b": 4.0}
    assert m.take_logs() == {}
    assert m.take_period() == {"a": 2.0, "b": 4.0}
