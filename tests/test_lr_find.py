"""hf-tune lr-find: the LR sequence and the suggestion (pure functions), and the range test through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_tune.cli import main
from hf_tune.errors import ConfigError
from hf_tune.lr_find import has_diverged, lr_schedule, parse_options, smooth_losses, suggest


def test_sequence_is_geometric_between_the_bounds():
    lrs = lr_schedule(1e-7, 10.0, 100)
    assert len(lrs) == 100 and lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(10.0)
    ratios = lrs[1:] / lrs[:-1]
    assert np.allclose(ratios, ratios[0]) and ratios[0] == pytest.approx(1e8 ** (1 / 99))


def test_smoothing_is_bias_corrected_and_divergence_is_relative_to_the_best():
    assert np.allclose(smooth_losses([2.0] * 10, 0.98), 2.0)  # no pull toward zero at the start
    s = smooth_losses([1.0, 3.0], 0.5)
    assert s[1] == pytest.approx((0.5 * 0.5 * 1 + 0.5 * 3) / (1 - 0.25))
    assert not has_diverged(3.9, 1.0, 4.0) and has_diverged(4.1, 1.0, 4.0) and has_diverged(float("nan"), 1.0, 4.0)


def test_suggestion_on_a_constructed_curve_is_the_steepest_descent_inside_the_range():
    lrs = lr_schedule(1e-7, 10.0, 200)
    x = np.log10(lrs)
    # a plateau, a descent centred at 1e-3 (steepest there), a minimum near 1e-1, then divergence
    loss = 2.0 - 1.5 / (1 + np.exp(-3 * (x + 3))) + np.where(x > -1, 5 * (x + 1) ** 2, 0.0)
    s = suggest(lrs, loss)
    assert lrs[0] <= s["suggested"] <= lrs[-1]
    assert np.log10(s["steepest"]) == pytest.approx(-3, abs=0.1)
    assert s["suggested"] == s["steepest"]
    assert 0.08 <= s["min_loss"] <= 0.2 and s["min_div_10"] == pytest.approx(s["min_loss"] / 10)
    # a curve that only falls: the steepest point is still inside the sweep
    falling = suggest(lrs, 3.0 - x)
    assert lrs[0] <= falling["suggested"] <= lrs[-1] and falling["min_loss"] == pytest.approx(lrs[-1])


def test_options_are_checked_by_name():
    assert parse_options({"steps": "50", "end_lr": "1"})["steps"] == 50
    for opts, expected in (
        ({"steps": "5"}, "steps=5"),
        ({"start_lr": "1", "end_lr": "0.1"}, "start_lr=1.0, end_lr=0.1"),
        ({"steps": "many"}, "steps=many: expected a int"),
        ({"diverge": "1"}, "diverge=1.0"),
    ):
        with pytest.raises(ConfigError, match=expected):
            parse_options(opts)


@pytest.mark.slow
def test_lr_find_through_the_cli_keeps_group_ratios_and_leaves_the_run_folder_alone(tiny_image_args, tmp_path, capsys):
    out = tmp_path / "lrf"
    args = [*tiny_image_args, "techniques.lr.layer_decay=0.5", "steps=30", "end_lr=1", f"output={out}"]
    assert main(["lr-find", *args]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 1e-7 <= row["suggested_lr"] <= 1.0 and row["steps"] <= 30
    assert (out / "lr_find.png").is_file() and row["plot"] == str(out / "lr_find.png")
    curve = json.loads((out / "lr_find.json").read_text())
    assert len(curve["lrs"]) == len(curve["losses"]) == row["steps"]
    ratios = row["group_ratios"]  # layer-wise groups scaled together: decay 0.5 per block below the head
    assert ratios[-1] == 1.0 and all(r2 / r1 == pytest.approx(2.0) for r1, r2 in zip(ratios, ratios[1:], strict=False))
    assert not (tmp_path / "run").exists()  # the recipe's training.output_dir is never touched
    assert main(["lr-find", *tiny_image_args, "steps=3"]) == 2
    assert "steps=3" in capsys.readouterr().err
