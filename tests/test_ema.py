import pytest
import torch

from hf_tune.callbacks import EmaCallback


class _State:
    def __init__(self, step):
        self.global_step = step


def test_ema_matches_closed_form_on_a_toy_sequence():
    """shadow_t = d * shadow_{t-1} + (1 - d) * w_t; the first update copies (timm's step convention)."""
    model = torch.nn.Linear(1, 1, bias=False)
    cb = EmaCallback(decay=0.9, warmup=False)
    cb.on_train_begin(None, None, None, model=model)
    seq = [1.0, 2.0, 4.0, 8.0, 16.0]
    for step, w in enumerate(seq, start=1):
        model.weight.data.fill_(w)
        cb.on_step_end(None, _State(step), None, model=model)
    expected = seq[0]
    for w in seq[1:]:
        expected = 0.9 * expected + 0.1 * w
    assert cb.state_dict()["weight"].item() == pytest.approx(expected, rel=1e-6)
    assert model.weight.item() == 16.0  # live weights untouched


def test_ema_warmup_follows_weights_early():
    model = torch.nn.Linear(1, 1, bias=False)
    cb = EmaCallback(decay=0.999, warmup=True)
    cb.on_train_begin(None, None, None, model=model)
    for step in range(1, 4):
        model.weight.data.fill_(float(step))
        cb.on_step_end(None, _State(step), None, model=model)
    # with warmup the effective decay at step 3 is 1 - (1 + 2)^(-2/3) ~ 0.52, not 0.999
    assert cb.state_dict()["weight"].item() > 2.0
