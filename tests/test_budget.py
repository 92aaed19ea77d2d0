"""speed.train_minutes: the epochs that fit a wall-clock budget (hf_tune.budget) and where the key is refused."""

import json

import pytest
import torch

from hf_tune.budget import fitting_epochs, planned_epochs, seconds_per_step
from hf_tune.config import load_config
from hf_tune.errors import ConfigError


def test_fitting_epochs_fill_what_is_left_up_to_the_configured_cap():
    # 600 s left, 60 s kept for tuning, 10 steps of 2 s per epoch: 27 epochs fit
    assert fitting_epochs(600, 2.0, 10, 60, most=100) == 27
    assert fitting_epochs(600, 2.0, 10, 60, most=25) == 25  # never more than asked for
    assert fitting_epochs(600, 2.0, 10, 60, most=25.7) == 25  # whole epochs
    assert fitting_epochs(10, 2.0, 10, 60, most=25) == 1  # too little time still trains one epoch
    assert fitting_epochs(-50, 2.0, 10, 0, most=25) == 1


def test_planned_epochs_come_from_the_checkpoint_state(tmp_path):
    assert planned_epochs(tmp_path) is None
    (tmp_path / "trainer_state.json").write_text(json.dumps({"num_train_epochs": 17, "max_steps": 170}))
    assert planned_epochs(tmp_path) == 17.0


def test_seconds_per_step_times_a_copy_and_leaves_the_model_alone():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 1)

        def forward(self, x, y):
            return type("Out", (), {"loss": torch.nn.functional.mse_loss(self.lin(x), y)})()

    torch.manual_seed(0)
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [{"x": torch.randn(4, 8), "y": torch.randn(4, 1)} for _ in range(5)]
    assert seconds_per_step(model, batches) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="batches"):
        seconds_per_step(model, batches[:2])


@pytest.mark.parametrize(
    "args, message",
    [
        (["recipe=contract_clauses_minilm", "speed.train_minutes=0"], "speed.train_minutes must be > 0"),
        (["recipe=clause_type_minilm", "speed.train_minutes=20"], "does not fit its training to a time budget"),
    ],
)
def test_the_budget_key_is_refused_where_it_cannot_work(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(args)
