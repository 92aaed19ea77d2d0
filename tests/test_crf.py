"""The CRF's forward algorithm and Viterbi against brute-force enumeration of every tag path."""

from __future__ import annotations

import itertools

import pytest
import torch

from hf_tune.crf import CRF, NEG, bio_allowed, compact, log_partition, path_score, repair_bio, viterbi

LABELS = ["O", "B-X", "I-X", "B-Y", "I-Y"]


@torch.no_grad()
def _brute(emissions, transitions, start, n):
    k = emissions.shape[-1]
    scores = {}
    for path in itertools.product(range(k), repeat=n):
        tags = torch.tensor([path])
        scores[path] = float(path_score(emissions[:, :n], tags, torch.ones(1, n, dtype=torch.bool), transitions, start))
    return scores


def test_forward_algorithm_equals_brute_force_over_all_paths():
    g = torch.Generator().manual_seed(0)
    emissions = torch.randn(2, 4, 3, generator=g)
    transitions, start = torch.randn(3, 3, generator=g), torch.randn(3, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    z = log_partition(emissions, mask, transitions, start)
    for b, n in enumerate((4, 2)):
        scores = _brute(emissions[b : b + 1], transitions, start, n)
        assert torch.isclose(z[b], torch.logsumexp(torch.tensor(list(scores.values())), 0), atol=1e-5)


def test_viterbi_returns_the_best_path_and_never_an_invalid_transition():
    allowed = bio_allowed(LABELS)
    crf = CRF(LABELS)
    assert (crf.allowed(torch.device("cpu")) == allowed).all()
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        emissions = 3 * torch.randn(1, 5, len(LABELS), generator=g)
        with torch.no_grad():
            crf.transitions.copy_(torch.randn(5, 5, generator=g))
            crf.start.copy_(torch.randn(5, generator=g))
        path = crf.decode(emissions, torch.ones(1, 5, dtype=torch.bool))[0]
        scores = _brute(emissions, crf.scores(), crf.start, 5)
        assert max(scores.values()) == scores[tuple(path)]
        assert all(allowed[a, b] for a, b in itertools.pairwise(path))


def test_bio_constraints_and_gold_repair():
    allowed = bio_allowed(LABELS)
    assert allowed[1, 2] and allowed[2, 2] and not allowed[0, 2] and not allowed[3, 2] and not allowed[2, 4]
    assert allowed[0, 1] and allowed[2, 0] and allowed[4, 3]
    crf = CRF(LABELS)
    assert crf.scores()[0, 2] == NEG
    tags = torch.tensor([[0, 2, 2, 4, 0], [1, 2, 0, 0, 0]])  # O I-X I-X I-Y O: two invalid steps
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    fixed = repair_bio(tags, mask, allowed, torch.tensor(crf._begin))
    assert fixed.tolist() == [[0, 1, 2, 3, 0], [1, 2, 0, 0, 0]]


def test_nll_is_finite_positive_and_learns_a_tiny_sequence():
    crf = CRF(LABELS)
    emissions = torch.zeros(1, 4, len(LABELS), requires_grad=True)
    tags = torch.tensor([[1, 2, 0, 4]])  # the last I-Y has no B: repaired, so the loss stays finite
    mask = torch.ones(1, 4, dtype=torch.bool)
    opt = torch.optim.Adam([emissions, *crf.parameters()], lr=0.3)
    first = None
    for _ in range(50):
        loss = crf.nll(emissions, tags, mask)
        assert torch.isfinite(loss) and loss > 0
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first / 10
    assert crf.decode(emissions, mask)[0] == [1, 2, 0, 3]


def test_compact_moves_kept_positions_to_the_front():
    values = torch.arange(12.0).view(2, 6)
    keep = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    out, mask = compact(values.unsqueeze(-1), keep)
    assert out.shape == (2, 3, 1)
    assert out[0, :, 0].tolist() == [0.0, 2.0, 3.0] and out[1, 0, 0] == 11.0
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert viterbi(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.bool), torch.zeros(2, 2), torch.zeros(2)) == [[]]


def test_crf_scheme_is_refused_as_a_multitask_head_before_training():
    from hf_tune.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"tasks\.clauses: the bio_crf_tagging head cannot be a multi-task head"):
        load_config(["recipe=contracts_multitask", "data.path=x.jsonl", "tasks.clauses.data.scheme=bio_crf"])
