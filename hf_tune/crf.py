"""A linear-chain CRF for BIO tagging: the forward algorithm, Viterbi decoding and BIO transition constraints as
pure functions, and a small module that holds the learned transition scores.

Why a CRF: a per-token softmax decides each token alone, so a name comes out fragmented ("B-Party I-Party O
I-Party") or starts with an I. The CRF scores whole tag paths (emissions plus transition scores) and decodes the
best *valid* path: an ``I-X`` may only follow ``B-X`` or ``I-X``. The pieces are written here (about 100 lines)
rather than taken from ``pytorch-crf`` because that package is unmaintained and requires the first position of
every sequence to be unmasked, which first-subword labelling breaks; here sequences are compacted to their
labelled positions first (:func:`compact`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

NEG = -1.0e4  # score of a forbidden transition: exp(NEG) underflows to 0 but stays finite in float32 sums


def bio_allowed(labels: Sequence[str]) -> torch.Tensor:
    """(K, K) bool: may tag j follow tag i? ``I-X`` only after ``B-X`` or ``I-X``; everything else is free."""
    k = len(labels)
    allowed = torch.ones(k, k, dtype=torch.bool)
    for j, name in enumerate(labels):
        if name.startswith("I-"):
            cat = name[2:]
            for i, prev in enumerate(labels):
                allowed[i, j] = prev in (f"B-{cat}", f"I-{cat}")
    return allowed


def repair_bio(tags: torch.Tensor, mask: torch.Tensor, allowed: torch.Tensor, to_begin: torch.Tensor) -> torch.Tensor:
    """Gold tag paths made valid: an ``I-X`` after a tag it may not follow becomes ``B-X`` (overlapping spans
    resolved first-come can leave such paths; a CRF would give them probability 0). ``to_begin`` maps each tag
    to its B tag (identity for O and B tags). One pass suffices: ``B-X`` and ``I-X`` allow the same successors."""
    if tags.shape[1] < 2:
        return tags
    bad = ~allowed[tags[:, :-1], tags[:, 1:]] & mask[:, 1:]
    fixed = tags.clone()
    fixed[:, 1:] = torch.where(bad, to_begin[tags[:, 1:]], tags[:, 1:])
    return fixed


def path_score(
    emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor
) -> torch.Tensor:
    """(B,) score of the given tag paths: start + emissions + transitions over the masked (left-aligned) steps."""
    m = mask.to(emissions.dtype)
    emit = emissions.gather(-1, tags.unsqueeze(-1)).squeeze(-1)
    score = start[tags[:, 0]] * m[:, 0] + (emit * m).sum(1)
    if tags.shape[1] > 1:
        score = score + (transitions[tags[:, :-1], tags[:, 1:]] * m[:, 1:]).sum(1)
    return score


def log_partition(
    emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor
) -> torch.Tensor:
    """(B,) log of the sum over all tag paths of exp(score): the forward algorithm, O(T K^2)."""
    alpha = start + emissions[:, 0]  # (B, K)
    for t in range(1, emissions.shape[1]):
        nxt = torch.logsumexp(alpha.unsqueeze(2) + transitions.unsqueeze(0), dim=1) + emissions[:, t]
        alpha = torch.where(mask[:, t : t + 1], nxt, alpha)
    return torch.logsumexp(alpha, dim=1)


def viterbi(
    emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor
) -> list[list[int]]:
    """The best tag path of each sequence (length = its number of masked steps)."""
    score = start + emissions[:, 0]
    back = []
    for t in range(1, emissions.shape[1]):
        cand = score.unsqueeze(2) + transitions.unsqueeze(0)  # (B, from, to)
        best, idx = cand.max(1)
        back.append(idx)
        score = torch.where(mask[:, t : t + 1], best + emissions[:, t], score)
    paths = []
    lengths = mask.sum(1).tolist()
    for b, n in enumerate(lengths):
        if n == 0:
            paths.append([])
            continue
        tag = int(score[b].argmax())
        path = [tag]
        for t in range(n - 1, 0, -1):
            tag = int(back[t - 1][b, tag])
            path.append(tag)
        paths.append(path[::-1])
    return paths


def compact(values: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the kept positions of each row to the front: (B, T, ...) -> (B, L, ...) plus a (B, L) mask, L the
    most kept positions of any row. A CRF runs over the labelled words only, not over continuation subwords."""
    n = keep.sum(1)
    width = max(int(n.max()) if n.numel() else 0, 1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]
    idx = order.view(*order.shape, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
    mask = torch.arange(width, device=keep.device).unsqueeze(0) < n.unsqueeze(1)
    return values.gather(1, idx), mask


class CRF(nn.Module):
    """Learned transition and start scores over ``labels`` (BIO names), forbidden transitions fixed at NEG.

    ``nll`` is the training loss (mean negative log-likelihood of the gold paths), ``decode`` the Viterbi paths.
    No start constraint: a training window may begin inside a span, so an I can open a sequence.

    The BIO constraints are derived from the labels on use, not stored as buffers: transformers 5 builds models
    on the meta device in ``from_pretrained`` and leaves non-persistent buffers uninitialised."""

    def __init__(self, labels: Sequence[str]) -> None:
        super().__init__()
        k = len(labels)
        self.labels = list(labels)
        self.transitions = nn.Parameter(torch.zeros(k, k))
        self.start = nn.Parameter(torch.zeros(k))
        index = {n: i for i, n in enumerate(labels)}
        self._begin = [index.get(f"B-{n[2:]}", i) if n.startswith("I-") else i for i, n in enumerate(labels)]
        self._allowed: dict[torch.device, torch.Tensor] = {}  # built on first use: __init__ may run on "meta"

    def allowed(self, device: torch.device) -> torch.Tensor:
        if device not in self._allowed:
            self._allowed[device] = bio_allowed(self.labels).to(device)
        return self._allowed[device]

    def scores(self) -> torch.Tensor:
        allowed = self.allowed(self.transitions.device)
        return torch.where(allowed, self.transitions, torch.full_like(self.transitions, NEG))

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """-log p(tags | emissions) summed over the sequences and divided by the number of labelled tokens;
        (B, L, K), (B, L), (B, L). Per token, like cross-entropy: a per-sequence sum grows with the sequence
        length, dominates the global gradient norm and, once clipped, starves every other loss term."""
        emissions, mask = emissions.float(), mask.bool()
        device = emissions.device
        to_begin = torch.tensor(self._begin, device=device)
        tags = repair_bio(tags.clamp_min(0), mask, self.allowed(device), to_begin)
        trans = self.scores()
        ll = path_score(emissions, tags, mask, trans, self.start) - log_partition(emissions, mask, trans, self.start)
        return -(ll * mask[:, 0]).sum() / mask.sum().clamp_min(1)

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Viterbi paths, computed on the CPU (the backtrack reads single entries; on a GPU each is a sync)."""
        trans, start = self.scores().detach().cpu(), self.start.detach().cpu()
        return viterbi(emissions.detach().float().cpu(), mask.bool().cpu(), trans, start)


def crf_tagging_loss(crf: CRF, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-classification loss with a CRF: (B, T, K) logits, (B, T) tag ids with -100 where a token is not
    labelled (special tokens, padding, continuation subwords). The CRF runs over each row's labelled tokens."""
    keep = labels >= 0
    emissions, mask = compact(logits, keep)
    return crf.nll(emissions, compact(labels, keep)[0], mask)
