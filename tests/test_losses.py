import pytest
import torch
import torch.nn.functional as F

from hf_tune.losses import LOSSES, balanced_class_weights, build_loss, cross_entropy, focal_loss


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(12, 3, generator=g), torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 0, 1, -100, 0])


def test_focal_gamma0_equals_cross_entropy(batch):
    logits, labels = batch
    ref = F.cross_entropy(logits, labels, ignore_index=-100)
    assert focal_loss(logits, labels, gamma=0.0) == pytest.approx(ref.item(), rel=1e-6)


def test_focal_downweights_easy_examples():
    logits = torch.tensor([[4.0, 0.0], [0.2, 0.0]])  # an easy and a hard example of class 0
    labels = torch.tensor([0, 0])
    per = [focal_loss(logits[i : i + 1], labels[i : i + 1], gamma=2.0).item() for i in range(2)]
    ce = [F.cross_entropy(logits[i : i + 1], labels[i : i + 1]).item() for i in range(2)]
    assert per[0] / ce[0] < 0.001 and per[1] / ce[1] > 0.2  # (1-p)^2 factor


def test_focal_alpha_and_token_shape(batch):
    logits, labels = batch
    # alpha weights class 0 by 1-alpha: with alpha=1 only non-zero classes count
    tok_logits, tok_labels = logits.reshape(3, 4, 3), labels.reshape(3, 4)
    full = focal_loss(tok_logits, tok_labels, gamma=0.0, alpha=1.0)
    keep = (labels != -100) & (labels != 0)
    manual = F.cross_entropy(logits[keep], labels[keep], reduction="sum") / (labels != -100).sum()
    assert full.item() == pytest.approx(manual.item(), rel=1e-6)


def test_class_weights_match_torch(batch):
    logits, labels = batch
    w = torch.tensor([0.5, 2.0, 1.0])
    ref = F.cross_entropy(logits, labels, weight=w, ignore_index=-100)
    assert cross_entropy(logits, labels, class_weights=w).item() == pytest.approx(ref.item(), rel=1e-6)


def test_label_smoothing_matches_torch(batch):
    logits, labels = batch
    ref = F.cross_entropy(logits, labels, ignore_index=-100, label_smoothing=0.1)
    assert focal_loss(logits, labels, gamma=0.0, label_smoothing=0.1).item() == pytest.approx(ref.item(), rel=1e-6)


def test_balanced_weights():
    assert balanced_class_weights([0, 0, 0, 1], 2) == pytest.approx([4 / 6, 2.0])
    assert balanced_class_weights([0, 0, -100], 3) == pytest.approx([2 / 6, 1.0, 1.0])


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_registered_loss_is_differentiable_and_ignores_padding(name, batch):
    logits, labels = batch
    logits = logits.clone().requires_grad_(True)
    fn = build_loss(name, class_weights=[1.0, 1.0, 2.0])
    loss = fn(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad[10].abs().sum() == 0  # row 10 is ignored


def test_plain_cross_entropy_uses_model_loss():
    assert build_loss("cross_entropy") is None
