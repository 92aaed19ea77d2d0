"""Weight fusion, distillation and anti-forgetting: the math on hand-made cases, then each command and technique
end to end on tiny models (issue: soups, WiSE-FT, SWA, teacher-student, L2-SP/EWC)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hf_tune.cli import main
from hf_tune.fusion import average_states, greedy_soup, interpolate_states, recompute_batchnorm, state_differences
from hf_tune.losses import anchor_penalty, distillation_loss, kd_sigmoid_loss, kd_softmax_loss

# ---------------------------------------------------------------------------------------------- the math


def test_uniform_average_is_the_mean_and_counts_are_not_averaged():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(9)}
    out = average_states([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0])) and int(out["n"]) == 3
    weighted = average_states([a, b], weights=[3, 1])
    assert torch.allclose(weighted["w"], torch.tensor([1.5, 3.0]))


def test_average_keeps_each_dtype_and_accumulates_in_float64():
    a = {"w": torch.tensor([1.0], dtype=torch.float16)}
    b = {"w": torch.tensor([1.0 + 2**-10], dtype=torch.float16)}
    out = average_states([a, a, a, b])
    assert out["w"].dtype == torch.float16


def test_interpolation_endpoints_and_midpoint_and_kept_keys():
    start = {"body": torch.zeros(3), "head": torch.zeros(2)}
    end = {"body": torch.ones(3), "head": torch.full((2,), 5.0)}
    assert torch.equal(interpolate_states(start, end, 0.0)["body"], start["body"])
    assert torch.equal(interpolate_states(start, end, 1.0)["body"], end["body"])
    mid = interpolate_states(start, end, 0.25, keys=["body"])
    assert torch.allclose(mid["body"], torch.full((3,), 0.25)) and torch.equal(mid["head"], end["head"])


def test_greedy_soup_rejects_an_ingredient_that_lowers_the_held_out_score():
    own = {"a": 0.90, "b": 0.88, "c": 0.85}
    soup_scores = {("a", "b"): 0.92, ("a", "b", "c"): 0.91}  # c hurts the soup although it is a fine model alone
    result = greedy_soup(list(own), own, lambda names: soup_scores[tuple(names)])
    assert result.chosen == ["a", "b"] and result.score == 0.92
    assert [s.added for s in result.steps] == [True, True, False]


def test_greedy_soup_minimises_when_lower_is_better():
    own = {"a": 0.5, "b": 0.4}
    result = greedy_soup(list(own), own, lambda names: 0.45, higher_is_better=False)
    assert result.chosen == ["b"]  # the best alone starts the soup; adding a raised the loss


def test_state_differences_name_missing_keys_and_shapes():
    ref = {"x": torch.zeros(2), "fc.weight": torch.zeros(2, 4)}
    other = {"fc.weight": torch.zeros(3, 4), "y": torch.zeros(1)}
    diff = " ".join(state_differences(ref, other))
    assert "missing: x" in diff and "unexpected: y" in diff and "fc.weight (3, 4) vs (2, 4)" in diff


def test_batchnorm_statistics_are_recomputed_from_the_inputs():
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(2))
    model[0].running_mean.fill_(100.0)  # what an average of two models' statistics would leave
    xs = [torch.tensor([[1.0, 10.0], [3.0, 30.0]]), torch.tensor([[5.0, 50.0], [7.0, 70.0]])]
    assert recompute_batchnorm(model, xs) == 2
    assert torch.allclose(model[0].running_mean, torch.tensor([4.0, 40.0]))  # the inputs' mean, not 100
    assert not model.training


def test_kd_loss_equals_its_closed_form_and_reduces_to_the_task_loss():
    student = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.5, 1.5, 0.0]])
    t = 2.0
    p = torch.softmax(teacher / t, -1)
    q = torch.softmax(student / t, -1)
    closed = t * t * float((p * (p.log() - q.log())).sum())
    assert float(kd_softmax_loss(student, teacher, t)) == pytest.approx(closed, rel=1e-6)
    assert float(kd_softmax_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-7)
    ce = F.cross_entropy(student, torch.tensor([0]))
    assert float(distillation_loss(ce, kd_softmax_loss(student, teacher, t), 1.0)) == pytest.approx(float(ce))
    # token level: masked positions do not count
    s2, t2 = torch.stack([student[0], student[0]])[None], torch.stack([teacher[0], student[0]])[None]
    assert float(kd_softmax_loss(s2, t2, t, torch.tensor([[True, False]]))) == pytest.approx(closed, rel=1e-6)


def test_sigmoid_kd_is_zero_when_the_outputs_agree_and_positive_otherwise():
    x = torch.tensor([[1.0, -2.0]])
    assert float(kd_sigmoid_loss(x, x, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_sigmoid_loss(x, -x, 2.0)) > 0


def test_l2sp_is_zero_at_the_anchor_and_its_gradient_points_back():
    anchor = torch.tensor([1.0, -2.0, 0.5])
    w = torch.nn.Parameter(anchor.clone())
    assert float(anchor_penalty([w], [anchor], 0.1).detach()) == 0.0
    with torch.no_grad():
        w.add_(torch.tensor([0.5, 0.0, -1.0]))
    anchor_penalty([w], [anchor], 0.1).backward()
    assert torch.allclose(w.grad, 0.1 * (w.detach() - anchor))  # a descent step moves w toward the anchor
    before = float((w - anchor).detach().norm())
    with torch.no_grad():
        w -= 1.0 * w.grad
    assert float((w - anchor).norm()) < before


def test_ewc_with_a_unit_fisher_equals_l2sp_and_weights_each_coordinate():
    anchor, w = torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])
    l2sp = anchor_penalty([w], [anchor], 0.5)
    assert float(anchor_penalty([w], [anchor], 0.5, [torch.ones(3)])) == pytest.approx(float(l2sp))
    fisher = torch.tensor([1.0, 0.0, 2.0])
    assert float(anchor_penalty([w], [anchor], 0.5, [fisher])) == pytest.approx(0.25 * (1 + 0 + 18))


def test_swa_callback_averages_exactly_the_snapshots_it_took():
    from types import SimpleNamespace

    from hf_tune.callbacks import SwaCallback

    model = torch.nn.Linear(2, 1)
    cb = SwaCallback(start=3, interval=2, bn_batches=None)
    state = SimpleNamespace(max_steps=8, global_step=0, is_world_process_zero=True)
    cb.on_train_begin(None, state, None, model=model)
    snapshots = []
    for step in range(1, 9):
        with torch.no_grad():
            model.weight.add_(float(step))  # "training"
        state.global_step = step
        cb.on_step_end(None, state, None, model=model)
        if step >= 3 and (step - 3) % 2 == 0:
            snapshots.append(model.weight.detach().clone())
    assert int(cb.swa.n_averaged) == len(snapshots) == 3
    cb.on_train_end(None, state, None, model=model)
    assert torch.allclose(model.weight, torch.stack(snapshots).mean(0))


def _tiny_timm(seed: int = 0):
    from hf_tune.modeling import build_timm_classifier

    torch.manual_seed(seed)
    return build_timm_classifier("test_resnet", 2, {0: "a", 1: "b"}, image_size=32)


def _image_batches(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)  # off-centre inputs: statistics far from BatchNorm's 0 / 1 start
    return [
        {"pixel_values": 2.0 * torch.randn(4, 3, 32, 32, generator=gen) + 1.0, "labels": torch.tensor([0, 1, 0, 1])}
        for _ in range(n)
    ]


def _bn_stats(state) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def test_swa_recomputes_a_timm_models_batchnorm_statistics_on_the_training_batches():
    from types import SimpleNamespace

    from hf_tune.callbacks import SwaCallback

    model = _tiny_timm()
    cb = SwaCallback(start=2, interval=1, bn_batches=2)
    state = SimpleNamespace(max_steps=4, global_step=0, is_world_process_zero=True)
    cb.on_train_begin(None, state, None, model=model)
    snapshots = []
    for step, batch in enumerate(_image_batches(4, seed=1), start=1):
        model.train()
        model(pixel_values=batch["pixel_values"])  # a training forward: moves the running statistics
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))  # "the optimizer step"
        state.global_step = step
        cb.on_step_end(None, state, None, model=model)
        if step >= 2:
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    live = _bn_stats(model.state_dict())
    loader = _image_batches(3, seed=2)
    cb.on_train_end(None, state, None, model=model, train_dataloader=loader)

    averaged = average_states(snapshots)  # weights and buffers, as a naive average would leave them
    expected = _tiny_timm()
    expected.load_state_dict(averaged)
    torch.optim.swa_utils.update_bn([b["pixel_values"] for b in loader[:2]], expected)  # bn_batches=2
    got, want = model.state_dict(), expected.state_dict()
    for name, _ in model.named_parameters():
        assert torch.allclose(got[name], averaged[name], atol=1e-6), name
    stats = _bn_stats(got)
    assert stats and not model.training
    for key, value in stats.items():
        assert torch.allclose(value, want[key], atol=1e-5), key  # what update_bn gives on those batches
    differs = [k for k in stats if not torch.allclose(stats[k], averaged[k], atol=1e-3)]
    assert len(differs) == len(stats)  # not the snapshots' averaged statistics
    assert all(not torch.allclose(stats[k], live[k], atol=1e-3) for k in stats)  # nor the live ones


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_stats_keeps_the_running_statistics_while_the_weights_train(freeze):
    from hf_tune.anchor import build_batchnorm_freeze

    model = _tiny_timm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    callback = build_batchnorm_freeze(model, freeze)
    assert (callback is not None) == freeze
    if callback is not None:
        callback.on_train_begin(None, None, None, model=model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for batch in _image_batches(3):
        model.train()  # as Trainer does at every training step, after every callback
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    changed = [k for k in stats if not torch.equal(before[k], after[k])]
    assert changed == ([] if freeze else stats)
    scales = [k for k in before if k.endswith("bn1.weight")]
    assert scales and all(not torch.equal(before[k], after[k]) for k in scales)  # their scale still trains
    if callback is not None:
        callback.on_train_end(None, None, None)  # the hooks go: the model is an ordinary one again
        model.train()
        model(**_image_batches(1, seed=3)[0])
        assert not torch.equal(model.state_dict()[stats[0]], before[stats[0]])


def test_freeze_bn_stats_is_refused_without_batchnorm_and_with_swa():
    from transformers import BertConfig, BertForSequenceClassification

    from hf_tune.anchor import build_batchnorm_freeze
    from hf_tune.config import load_config
    from hf_tune.errors import ConfigError

    bert = BertForSequenceClassification(
        BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    )
    with pytest.raises(ConfigError, match=r"techniques\.anchor\.freeze_bn_stats: this model .* no BatchNorm"):
        build_batchnorm_freeze(bert, True)
    assert build_batchnorm_freeze(bert, False) is None
    with pytest.raises(ConfigError, match=r"freeze_bn_stats keeps the BatchNorm statistics fixed, but techniques\.swa"):
        load_config(["recipe=quickstart", "techniques.anchor.freeze_bn_stats=true", "techniques.swa.enabled=true"])
    with pytest.raises(ConfigError, match=r"techniques\.anchor: not available for clause_extraction"):
        load_config(["recipe=contract_clauses_minilm", "techniques.anchor.freeze_bn_stats=true"])
    cfg = load_config(["recipe=quickstart", "techniques.anchor.freeze_bn_stats=true"])
    assert cfg.techniques.anchor.freeze_bn_stats and cfg.validate() == []


def test_pick_layers_spread_and_first():
    from hf_tune.modeling import pick_layers

    assert pick_layers(6, 3, "spread") == [0, 2, 4]
    assert pick_layers(12, 4, "spread") == [0, 3, 6, 9]
    assert pick_layers(6, 2, "first") == [0, 1]


def test_images_are_renormalised_to_the_teachers_preprocessing():
    from hf_tune.distill import renormalize_images

    raw = torch.tensor([0.3, 0.7])[:, None, None, None].expand(2, 1, 8, 8)  # flat images: resizing is exact
    student = {"mean": (0.5,), "std": (0.5,), "input_size": (1, 8, 8)}
    teacher = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "input_size": (3, 16, 16)}
    out = renormalize_images((raw - 0.5) / 0.5, student, teacher)
    assert out.shape == (2, 3, 16, 16)
    mean, std = torch.tensor(teacher["mean"])[None, :, None, None], torch.tensor(teacher["std"])[None, :, None, None]
    assert torch.allclose(out * std + mean, raw.expand(2, 3, 8, 8)[..., :1, :1].expand(2, 3, 16, 16), atol=1e-5)
    same = renormalize_images((raw - 0.5) / 0.5, student, student)
    assert torch.allclose(same, (raw - 0.5) / 0.5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- end to end


def _image(tiny_image_args: list[str], out: Path, *extra: str) -> list[str]:
    keep = [a for a in tiny_image_args if not a.startswith(("training.output_dir", "training.max_steps"))]
    return ["train", *keep, f"training.output_dir={out}", "training.max_steps=6", *extra]


@pytest.fixture(scope="module")
def soup_data(tmp_path_factory):
    """A base run and three fine-tunes of it (other seeds and learning rates): soup ingredients of one init,
    made once for the module's soup tests."""
    import numpy as np

    from .conftest import make_images

    tmp = tmp_path_factory.mktemp("soup")
    (xtr, ytr), (xva, yva) = make_images(48, seed=0), make_images(16, seed=1)
    npz = tmp / "tiny.npz"
    np.savez(npz, train_images=xtr, train_labels=ytr, val_images=xva, val_labels=yva)
    args = [
        "recipe=quickstart",
        f"data.path={npz}",
        "model.name=test_resnet",
        "model.image_size=32",
        "training.save_strategy=no",
        "training.eval_strategy=no",
        "training.logging_steps=2",
        "training.per_device_train_batch_size=8",
        "training.disable_tqdm=true",
    ]
    base = tmp / "base"
    assert main(_image(args, base)) == 0
    runs = []
    for i, lr in enumerate(("2e-3", "1e-3", "5e-4")):
        run = tmp / f"ft{i}"
        assert main(_image(args, run, f"model.name={base}", f"training.seed={i}", f"training.learning_rate={lr}")) == 0
        runs.append(run)
    return runs, npz, args


@pytest.mark.slow
@pytest.mark.parametrize("method", ["uniform", "greedy"])
def test_soup_writes_a_model_folder_that_loads_everywhere(method, soup_data, tmp_path, capsys):
    fine_tunes, tiny_npz, _ = soup_data
    out = tmp_path / f"soup_{method}"
    assert main(["soup", *map(str, fine_tunes), f"method={method}", f"data.path={tiny_npz}", f"output={out}"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    record = json.loads((out / "fusion.json").read_text())
    assert record["method"] == f"{method}_soup" and len(record["ingredients"]) == 3
    # statistics are recomputed for an average, not for a greedy soup that kept one ingredient as it was
    assert record["batchnorm_recomputed"] == (sum(i["in_soup"] for i in record["ingredients"]) > 1)
    if method == "uniform":
        assert line["ingredients"] == 3 and all(i["in_soup"] for i in record["ingredients"])
        states = [load_file(str(r / "model" / "model.safetensors")) for r in fine_tunes]
        soup = load_file(str(out / "model.safetensors"))
        key = next(k for k in soup if k.endswith("conv1.weight"))
        assert torch.allclose(soup[key], sum(s[key] for s in states) / 3, atol=1e-6)
        bn = next(k for k in soup if k.endswith("running_mean"))
        assert not torch.allclose(soup[bn], sum(s[bn] for s in states) / 3)  # recomputed, not averaged
    else:
        scores = [i["score"] for i in record["ingredients"]]
        assert record["score"] >= max(scores)  # greedy never ends below its best ingredient
        for ingredient in record["ingredients"]:  # ranked by exactly what evaluate gives each one
            assert main(["evaluate", ingredient["name"], f"data.path={tiny_npz}", "data.split=val"]) == 0
            own = json.loads(capsys.readouterr().out.strip())
            assert own["accuracy"] == pytest.approx(ingredient["score"])
    card = (out / "README.md").read_text()
    assert "Weight fusion" in card and str(fine_tunes[0]) in card
    assert (out / "plots" / "soup_ingredients.png").is_file()
    assert main(["evaluate", str(out), f"data.path={tiny_npz}", "data.split=val"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip())
    assert evaluated["accuracy"] == pytest.approx(record["score"])
    assert main(["predict", str(out), str(tiny_npz)]) == 0
    assert capsys.readouterr().out.strip()

    from transformers import pipeline

    assert pipeline("image-classification", model=str(out)).model.config.num_labels == 2


@pytest.mark.slow
def test_soup_of_incompatible_models_names_what_differs(soup_data, tmp_path, capsys):
    fine_tunes, tiny_npz, args = soup_data
    other = tmp_path / "other_labels"
    assert main(_image(args, other, "data.labels=[cat,dog]", "training.max_steps=2")) == 0
    capsys.readouterr()
    code = main(["soup", str(fine_tunes[0]), str(other), f"data.path={tiny_npz}", f"output={tmp_path / 's'}"])
    err = capsys.readouterr().err
    assert code == 2 and "labels ['cat', 'dog'] differ" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()
    assert main(["soup", str(fine_tunes[0]), f"output={tmp_path / 's'}"]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["soup", *map(str, fine_tunes), "method=best", f"output={tmp_path / 's'}"]) == 2
    assert "unknown soup method" in capsys.readouterr().err


@pytest.mark.slow
def test_average_of_a_runs_last_checkpoints(tiny_image_args, tiny_npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_image(tiny_image_args, run, "training.save_total_limit=3")) == 0
    out = tmp_path / "avg"
    assert main(["average", str(run), "last=2", f"data.path={tiny_npz}", f"output={out}"]) == 0
    record = json.loads((out / "fusion.json").read_text())
    assert [Path(i["name"]).name for i in record["ingredients"]] == ["checkpoint-4", "checkpoint-6"]
    assert main(["average", str(run), "last=5", f"output={tmp_path / 'x'}"]) == 2
    assert "complete checkpoints" in capsys.readouterr().err


@pytest.mark.slow
def test_average_of_a_runs_top_checkpoints_by_a_logged_metric(tiny_image_args, tiny_npz, tmp_path, capsys):
    from hf_tune.soup import checkpoints_to_average

    run = tmp_path / "run"
    extra = ["training.save_total_limit=3", "training.eval_strategy=steps", "training.eval_steps=2"]
    assert main(_image(tiny_image_args, run, *extra)) == 0
    state_file = run / "checkpoint-6" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    losses = {h["step"]: h["eval_loss"] for h in state["log_history"] if "eval_loss" in h}
    assert sorted(losses) == [2, 4, 6]
    out = tmp_path / "top"
    assert main(["average", str(run), "top=2", f"data.path={tiny_npz}", f"output={out}"]) == 0
    record = json.loads((out / "fusion.json").read_text())
    lowest = sorted(losses, key=losses.get)[:2]  # eval_loss by default: lower is better
    assert sorted(Path(i["name"]).name for i in record["ingredients"]) == sorted(f"checkpoint-{s}" for s in lowest)

    # a constructed ranking that is not the last two: loss puts 4 then 2 first, accuracy 2 then 6
    made_up = {2: (0.3, 0.9), 4: (0.1, 0.2), 6: (0.9, 0.8)}
    for h in state["log_history"]:
        if "eval_loss" in h:
            h["eval_loss"], h["eval_accuracy"] = made_up[h["step"]]
    state_file.write_text(json.dumps(state))
    picked = checkpoints_to_average(run, last=None, top=2, metric=None)
    assert [c.name for c in picked] == ["checkpoint-4", "checkpoint-2"]
    out = tmp_path / "top_acc"
    assert main(["average", str(run), "top=2", "metric=eval_accuracy", f"data.path={tiny_npz}", f"output={out}"]) == 0
    record = json.loads((out / "fusion.json").read_text())
    assert [Path(i["name"]).name for i in record["ingredients"]] == ["checkpoint-2", "checkpoint-6"]
    soup = load_file(str(out / "model.safetensors"))
    states = [load_file(str(run / c / "model.safetensors")) for c in ("checkpoint-2", "checkpoint-6")]
    weights = [k for k in soup if soup[k].is_floating_point() and "running_" not in k]
    assert weights and not torch.equal(states[0][weights[0]], states[1][weights[0]])
    for key in weights:
        assert torch.allclose(soup[key], (states[0][key] + states[1][key]) / 2, atol=1e-6), key
    capsys.readouterr()
    assert main(["average", str(run), "top=2", "metric=eval_f1", f"output={tmp_path / 'x'}"]) == 2
    assert "only 0 checkpoints have eval_f1 logged" in capsys.readouterr().err


def _merged_by_hand(base: dict[str, torch.Tensor], adapter: Path) -> dict[str, torch.Tensor]:
    """``W + (alpha / r) * B @ A`` for every LoRA pair in a saved adapter, plus its own copy of the head."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    out = {}
    for key, a in weights.items():
        name = key.removeprefix("base_model.model.")
        if ".lora_A." in name:
            target = name.replace(".lora_A.weight", ".weight")
            b = weights[key.replace(".lora_A.", ".lora_B.")]
            out[target] = base[target.removeprefix("bert.")] + scale * b @ a
        elif ".lora_" not in name:  # the head (modules_to_save), trained in full
            out[name.replace("modules_to_save.", "")] = a
    return out


@pytest.mark.slow
def test_soup_of_lora_runs_is_the_mean_of_their_merged_weights(tiny_bert, tmp_path, capsys):
    data = _text_rows(tmp_path / "texts.jsonl")
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"lora{seed}"
        lora = ["techniques.lora.enabled=true", "techniques.lora.merge_on_save=false", "training.learning_rate=5e-3"]
        assert main(_text(data, run, f"model.name={tiny_bert}", f"training.seed={seed}", *lora)) == 0
        assert not (run / "model" / "model.safetensors").exists() and (run / "model" / "adapter").is_dir()
        runs.append(run)
    out = tmp_path / "soup"
    assert main(["soup", *map(str, runs), "method=uniform", f"data.path={data}", f"output={out}"]) == 0
    soup = load_file(str(out / "model.safetensors"))
    assert not any("lora" in k or "modules_to_save" in k for k in soup)  # a plain model
    base = load_file(str(tiny_bert / "model.safetensors"))
    merged = [_merged_by_hand(base, r / "model" / "adapter") for r in runs]
    assert {"classifier.weight", "bert.encoder.layer.0.attention.self.query.weight"} <= set(merged[0])
    for key in merged[0]:
        assert torch.allclose(soup[key], (merged[0][key] + merged[1][key]) / 2, atol=1e-6), key
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(soup[query], base[query.removeprefix("bert.")], atol=1e-6)  # the adapters count
    word = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(soup[word], base[word.removeprefix("bert.")])  # no adapter there: the base as it was
    capsys.readouterr()
    assert main(["evaluate", str(out), f"data.path={data}"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out.strip())["accuracy"] <= 1


@pytest.mark.slow
def test_interpolation_sweep_keeps_the_head_and_spans_the_endpoints(tiny_bert, tmp_path, capsys):
    rows = [
        {"text": f"clause number {i} about {'payment' if i % 2 else 'termination'}", "label": i % 2} for i in range(40)
    ]
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    args = [
        "train",
        "recipe=clause_type_minilm",
        f"data.path={data}",
        "data.format=jsonl",
        f"model.name={tiny_bert}",
        "training.max_steps=8",
        "training.eval_strategy=no",
        "training.save_strategy=no",
        "training.learning_rate=1e-3",
        "techniques.loss.class_weights=null",
        f"training.output_dir={run}",
    ]
    assert main(args) == 0
    out = tmp_path / "wise"
    assert main(["interpolate", str(run), "alpha=sweep", f"output={out}"]) == 0
    record = json.loads((out / "fusion.json").read_text())
    assert [s["alpha"] for s in record["sweep"]] == [round(0.1 * i, 2) for i in range(11)]
    assert record["kept_fine_tuned"] and all(k.startswith("classifier") for k in record["kept_fine_tuned"])
    assert record["sweep"][-1]["metrics"]["f1_macro"] == pytest.approx(
        json.loads((run / "model" / "metrics.json").read_text())["eval_f1_macro"]
    )  # alpha=1 is the fine-tuned model
    zero = tmp_path / "zero"
    assert main(["interpolate", str(run), "alpha=0", f"output={zero}"]) == 0
    w0, tuned = load_file(str(zero / "model.safetensors")), load_file(str(run / "model" / "model.safetensors"))
    start = load_file(str(tiny_bert / "model.safetensors"))
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(w0[key], start[key.removeprefix("bert.")]) and not torch.equal(w0[key], tuned[key])
    assert torch.equal(w0["classifier.weight"], tuned["classifier.weight"])
    assert main(["interpolate", str(run), "alpha=1.5", f"output={tmp_path / 'bad'}"]) == 2
    assert "alpha=1.5" in capsys.readouterr().err


@pytest.mark.slow
def test_swa_run_averages_from_its_start_and_resumes_to_the_same_weights(tiny_image_args, tmp_path, capsys):
    import shutil

    args = [
        "techniques.swa.enabled=true",
        "techniques.swa.start=3",
        "techniques.swa.interval=1",
        "techniques.swa.bn_batches=2",
        "training.save_total_limit=3",
    ]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(_image(tiny_image_args, straight, *args)) == 0
    err = capsys.readouterr().err
    assert "SWA: the final weights average 4 snapshots from step 3" in err
    assert "BatchNorm statistics recomputed on 2 training batches" in err  # Trainer hands the callback its loader
    final = load_file(str(straight / "model" / "model.safetensors"))
    average = load_file(str(straight / "checkpoint-6" / "swa.safetensors"))  # saved after step 6's snapshot
    live = load_file(str(straight / "checkpoint-6" / "model.safetensors"))  # the live weights at the same step
    stats = [k for k in final if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.allclose(final[k], live[k]) for k in stats)  # not the live statistics
    weights = [k for k in final if final[k].is_floating_point() and k not in stats]
    assert all(torch.equal(final[k], average[k]) for k in weights)
    assert main(_image(tiny_image_args, killed, *args)) == 0
    shutil.rmtree(killed / "model")
    (killed / "metrics.json").unlink()
    shutil.rmtree(killed / "checkpoint-6")
    assert (killed / "checkpoint-4" / "swa.safetensors").is_file()
    assert main(_image(tiny_image_args, killed, *args, "resume=true")) == 0
    a = load_file(str(straight / "model" / "model.safetensors"))
    b = load_file(str(killed / "model" / "model.safetensors"))
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) == 0.0


@pytest.mark.slow
def test_swa_learning_rate_takes_over_at_the_start(tiny_image_args, tmp_path):
    run = tmp_path / "run"
    extra = [
        "techniques.swa.enabled=true",
        "techniques.swa.start=3",
        "techniques.swa.lr=1e-4",
        "techniques.swa.anneal_steps=1",
    ]
    assert main(_image(tiny_image_args, run, *extra)) == 0
    lrs = [
        h["learning_rate"] for h in json.loads((run / "model" / "log_history.json").read_text()) if "learning_rate" in h
    ]
    assert lrs[-1] == pytest.approx(1e-4)


@pytest.mark.slow
def test_image_distillation_from_a_teacher_with_other_preprocessing(tiny_image_args, tiny_npz, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    assert main(_image(tiny_image_args, teacher, "model.image_size=48")) == 0
    student = tmp_path / "student"
    extra = [
        f"techniques.distill.teacher={teacher}",
        "techniques.distill.alpha=0.3",
        "techniques.distill.temperature=3",
    ]
    assert main(_image(tiny_image_args, student, *extra)) == 0
    assert f"distillation from {teacher}" in capsys.readouterr().err
    assert (student / "model" / "model.safetensors").is_file()
    assert not any("teacher" in k for k in load_file(str(student / "model" / "model.safetensors")))
    other = tmp_path / "three"
    assert main(_image(tiny_image_args, other, "data.labels=[a,b,c]")) == 0
    capsys.readouterr()
    assert main(_image(tiny_image_args, tmp_path / "bad", f"techniques.distill.teacher={other}")) == 2
    assert "differ from the student's" in capsys.readouterr().err


@pytest.mark.slow
def test_shallower_text_student_distils_from_its_teacher(tiny_bert, tmp_path, capsys):
    rows = [{"text": f"clause {i} on {'payment' if i % 2 else 'termination'} terms", "label": i % 2} for i in range(40)]
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [
        "train",
        "recipe=clause_type_minilm",
        f"data.path={data}",
        "data.format=jsonl",
        "training.max_steps=4",
        "training.eval_strategy=no",
        "training.save_strategy=no",
        "techniques.loss.class_weights=null",
    ]
    teacher = tmp_path / "teacher"
    assert main([*common, f"model.name={tiny_bert}", f"training.output_dir={teacher}"]) == 0
    student = tmp_path / "student"
    extra = [f"techniques.distill.teacher={teacher}", "techniques.distill.hidden_weight=1.0", "model.num_layers=1"]
    assert main([*common, f"model.name={teacher}", f"training.output_dir={student}", *extra]) == 0
    cfg = json.loads((student / "model" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 1
    assert main(["evaluate", str(student), f"data.path={data}"]) == 0


def test_distill_teacher_is_a_folder_or_a_hub_id_before_anything_loads(tmp_path):
    from hf_tune.config import load_config
    from hf_tune.errors import ConfigError
    from hf_tune.schema import DistillConfig

    for fine in ("org/teacher-model", "bert-base-uncased", "timm/resnet18.a1_in1k", str(tmp_path)):
        assert DistillConfig(teacher=fine).errors() == [], fine
    for bad in ("./missing/teacher", str(tmp_path / "missing" / "teacher"), "runs/a/model", "~/teacher"):
        errors = DistillConfig(teacher=bad).errors()
        assert len(errors) == 1 and errors[0].startswith(f"techniques.distill.teacher={bad}: no such"), errors
        assert "Hub id" in errors[0]
    with pytest.raises(ConfigError, match=r"techniques\.distill\.teacher=\./missing/teacher"):
        load_config(["recipe=quickstart", "techniques.distill.teacher=./missing/teacher"])


def test_distill_hidden_loss_counts_and_num_layers_keeps_the_teachers_layers_bit_for_bit(tmp_path):
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    from hf_tune.distill import DistillLoss, hidden_state_loss
    from hf_tune.heads import HEADS
    from hf_tune.modeling import load_pretrained
    from hf_tune.trainer import LogitsLoss, LossInputs

    torch.manual_seed(0)
    id2label = {0: "a", 1: "b"}
    names = {"num_labels": 2, "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.0,  # the two losses below must see the same forward
        attention_probs_dropout_prob=0.0,
        initializer_range=0.5,  # layers that change the states a lot: the hidden term is far above float noise
        **names,
    )
    teacher = BertForSequenceClassification(config).eval()
    teacher.save_pretrained(tmp_path / "teacher")
    teacher_sd = teacher.state_dict()
    for pick, kept in (("spread", [0, 2]), ("first", [0, 1])):
        student = load_pretrained(
            AutoModelForSequenceClassification, str(tmp_path / "teacher"), num_layers=2, layer_pick=pick, **names
        )
        assert len(student.bert.encoder.layer) == 2 and student.config.num_hidden_layers == 2
        for key, value in student.state_dict().items():
            source = key
            if key.startswith("bert.encoder.layer."):
                i = int(key.split(".")[3])
                source = key.replace(f"bert.encoder.layer.{i}.", f"bert.encoder.layer.{kept[i]}.", 1)
            assert torch.equal(value, teacher_sd[source]), (pick, key, source)  # embeddings and head too

    student.train()  # the teacher's terms apply to training batches only
    inputs = {"input_ids": torch.randint(5, 40, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long)}
    inputs["attention_mask"][0, 4:] = 0
    labels = torch.tensor([0, 1, 1])

    def total(hidden_weight: float):
        loss = DistillLoss(
            LogitsLoss(F.cross_entropy),
            HEADS.get("single_label"),
            teacher,
            temperature=2.0,
            alpha=0.5,
            hidden_weight=hidden_weight,
        )
        out = loss.run_model(student, dict(inputs), labels)
        return loss(LossInputs(out.logits, labels, out, inputs, student)), out

    without, out0 = total(0.0)
    with_hidden, out1 = total(0.5)
    assert out0.hidden_states is None  # hidden_weight=0 does not even ask for them
    with torch.no_grad():
        teacher_last = teacher(**inputs, output_hidden_states=True).hidden_states[-1]
    expected = 0.5 * hidden_state_loss(out1.hidden_states[-1].detach(), teacher_last, inputs["attention_mask"]).item()
    assert expected > 0.01
    assert (with_hidden - without).item() == pytest.approx(expected, rel=1e-5)
    (with_hidden - without).backward()  # the hidden term alone: it trains the student and leaves the teacher be
    assert float(student.bert.encoder.layer[1].output.dense.weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.slow
def test_distill_hub_teacher_goes_through_from_pretrained_and_fails_clearly(
    tiny_image_args, tmp_path, capsys, monkeypatch
):
    from transformers import AutoConfig

    from hf_tune.recipes import RECIPES

    calls, original = [], AutoConfig.from_pretrained

    def spy(name, *args, **kwargs):
        calls.append(str(name))
        return original(name, *args, **kwargs)

    monkeypatch.setattr(AutoConfig, "from_pretrained", spy)
    name = "hf-tune-tests/no-such-teacher"  # offline in tests (conftest): the Hub answers nothing
    student = tmp_path / "student"
    assert main(_image(tiny_image_args, student, f"techniques.distill.teacher={name}")) == 2
    err = capsys.readouterr().err
    assert name in calls
    assert f"techniques.distill.teacher={name}: no such folder" in err and "Hugging Face Hub id" in err
    assert not (student / "model").exists()
    for kind in ("image_classification", "text_classification", "token_classification"):
        with pytest.raises(OSError, match="huggingface.co"):  # each kind's loader hands a Hub id to from_pretrained
            RECIPES.get(kind).load_model(Path(name))


@pytest.mark.slow
def test_distill_from_a_plain_image_model_folder(tiny_image_args, tmp_path, capsys):
    from transformers import BertConfig, BertForSequenceClassification

    from hf_tune.modeling import build_timm_classifier

    plain = tmp_path / "plain"  # what save_pretrained writes: no resolved_config.yaml, other preprocessing
    build_timm_classifier("test_resnet", 2, {0: "top", 1: "bottom"}, image_size=48).save_pretrained(plain)
    assert sorted(p.name for p in plain.iterdir()) == ["config.json", "model.safetensors"]
    student = tmp_path / "student"
    labels = "data.labels=[top,bottom]"
    assert main(_image(tiny_image_args, student, labels, f"techniques.distill.teacher={plain}")) == 0
    assert f"distillation from {plain}" in capsys.readouterr().err
    assert not any("teacher" in k for k in load_file(str(student / "model" / "model.safetensors")))

    other = tmp_path / "other"
    build_timm_classifier("test_resnet", 2, {0: "cat", 1: "dog"}, image_size=32).save_pretrained(other)
    assert main(_image(tiny_image_args, tmp_path / "bad", labels, f"techniques.distill.teacher={other}")) == 2
    err = capsys.readouterr().err
    assert "['cat', 'dog'] differ from the student's ['top', 'bottom']" in err and "id2label" in err

    text = tmp_path / "text"
    BertForSequenceClassification(
        BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    ).save_pretrained(text)
    assert main(_image(tiny_image_args, tmp_path / "bad", labels, f"techniques.distill.teacher={text}")) == 2
    assert f"techniques.distill.teacher={text} is a bert model" in capsys.readouterr().err


def _text_rows(path: Path) -> Path:
    rows = [{"text": f"clause {i} on {'payment' if i % 2 else 'termination'} terms"} for i in range(40)]
    path.write_text("".join(json.dumps({**r, "label": r["text"].split()[3]}) + "\n" for r in rows))
    return path


def _text(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "recipe=clause_type_minilm",
        f"data.path={data}",
        "data.format=jsonl",
        "data.labels=[payment,termination]",
        "training.max_steps=2",
        "training.eval_strategy=no",
        "training.save_strategy=no",
        "techniques.loss.class_weights=null",
        f"training.output_dir={out}",
        *extra,
    ]


@pytest.mark.slow
def test_distill_from_a_plain_text_model_folder_and_what_it_refuses(tiny_bert, tmp_path, capsys):
    import shutil

    from transformers import AutoTokenizer, BertForSequenceClassification, BertForTokenClassification

    data = _text_rows(tmp_path / "texts.jsonl")
    names = {"num_labels": 2, "id2label": {0: "payment", 1: "termination"}}
    plain = tmp_path / "plain"
    BertForSequenceClassification.from_pretrained(tiny_bert, **names).save_pretrained(plain)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(plain)
    student = tmp_path / "student"
    extra = [f"model.name={tiny_bert}", f"techniques.distill.teacher={plain}", "techniques.distill.hidden_weight=1.0"]
    assert main(_text(data, student, *extra)) == 0
    assert f"distillation from {plain}" in capsys.readouterr().err
    assert (student / "model" / "model.safetensors").is_file()

    bare = tmp_path / "bare"  # weights without the tokenizer: nothing to check the student's against
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(plain / f, bare / f)
    assert main(_text(data, tmp_path / "bad", f"model.name={tiny_bert}", f"techniques.distill.teacher={bare}")) == 2
    assert f"techniques.distill.teacher={bare}: no tokenizer beside the teacher" in capsys.readouterr().err

    tagger = tmp_path / "tagger"  # another head: from_pretrained would start a sequence head untrained
    BertForTokenClassification.from_pretrained(tiny_bert, **names).save_pretrained(tagger)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tagger)
    assert main(_text(data, tmp_path / "bad", f"model.name={tiny_bert}", f"techniques.distill.teacher={tagger}")) == 2
    err = capsys.readouterr().err
    assert "names ['BertForTokenClassification'], not the BertForSequenceClassification" in err


@pytest.mark.slow
def test_distill_text_teacher_with_another_tokenizer_is_refused(tiny_bert, tmp_path, capsys):
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "clause", "on", "terms", "pay", "##ment", "termination"]
    other = tmp_path / "other_bert"  # a BERT of its own small vocabulary: its token ids mean other words
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(other)
    config = BertConfig(
        vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(other)
    data = _text_rows(tmp_path / "texts.jsonl")
    teacher = tmp_path / "teacher"
    assert main(_text(data, teacher, f"model.name={other}")) == 0
    capsys.readouterr()
    assert (
        main(_text(data, tmp_path / "student", f"model.name={tiny_bert}", f"techniques.distill.teacher={teacher}")) == 2
    )
    assert f"techniques.distill.teacher={teacher}: its tokenizer differs from the student's" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["bio", "multilabel"])
def test_token_classification_distillation_end_to_end(tiny_bert, contracts_jsonl, tmp_path, capsys, scheme):
    def args(out: Path, *extra: str) -> list[str]:
        return [
            "train",
            "recipe=contract_tagging_minilm",
            f"data.path={contracts_jsonl}",
            f"data.scheme={scheme}",
            "data.window=32",
            "data.stride=15",
            "data.negative_window_keep=1.0",
            "data.split_ratios=[0.75,0.25,0.0]",
            f"training.output_dir={out}",
            "training.max_steps=3",
            "training.save_strategy=no",
            "training.logging_steps=1",
            "training.per_device_train_batch_size=8",
            "training.disable_tqdm=true",
            *extra,
        ]

    teacher, student = tmp_path / "teacher", tmp_path / "student"
    assert main(args(teacher, f"model.name={tiny_bert}")) == 0
    extra = [
        f"model.name={teacher}",  # DistilBERT-style: the student starts from the teacher's own layers
        "model.num_layers=1",
        f"techniques.distill.teacher={teacher}",
        "techniques.distill.hidden_weight=1.0",
        "techniques.distill.alpha=0.3",
    ]
    assert main(args(student, *extra)) == 0
    assert f"distillation from {teacher}" in capsys.readouterr().err
    assert json.loads((student / "model" / "config.json").read_text())["num_hidden_layers"] == 1
    weights = load_file(str(student / "model" / "model.safetensors"))
    assert not any("teacher" in k for k in weights) and not any(".layer.1." in k for k in weights)
    losses = [h["loss"] for h in json.loads((student / "model" / "log_history.json").read_text()) if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert main(["evaluate", str(student), f"data.path={contracts_jsonl}"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out.strip().splitlines()[-1])["span_f1_micro"] <= 1


@pytest.mark.slow
def test_ewc_estimates_and_saves_the_earlier_tasks_fisher_and_pulls_toward_it(tiny_bert, tmp_path, capsys):
    first = tmp_path / "a.jsonl"
    first.write_text(
        "".join(json.dumps({"text": f"pay the fee {i}", "label": "pay" if i % 2 else "end"}) + "\n" for i in range(32))
    )
    second = tmp_path / "b.jsonl"
    second.write_text(
        "".join(json.dumps({"text": f"notice {i} to party", "label": f"t{i % 3}"}) + "\n" for i in range(32))
    )
    common = [
        "train",
        "recipe=clause_type_minilm",
        "data.format=jsonl",
        "training.max_steps=4",
        "training.eval_strategy=no",
        "training.save_strategy=no",
        "techniques.loss.class_weights=null",
        "training.logging_steps=1",
    ]
    a = tmp_path / "A"
    assert main([*common, f"data.path={first}", f"model.name={tiny_bert}", f"training.output_dir={a}"]) == 0
    ewc = ["techniques.anchor.method=ewc", "techniques.anchor.strength=100", "techniques.anchor.fisher_samples=8"]
    b = tmp_path / "B"
    assert main([*common, f"data.path={second}", f"model.name={a}", f"training.output_dir={b}", *ewc]) == 0
    fisher = load_file(str(a / "model" / "fisher.safetensors"))
    assert fisher and all(float(v.min()) >= 0 for v in fisher.values())
    logged = [h for h in json.loads((b / "model" / "log_history.json").read_text()) if "anchor_penalty" in h]
    assert logged and logged[0]["anchor_penalty"] >= 0
    l2sp = tmp_path / "C"
    assert (
        main(
            [
                *common,
                f"data.path={second}",
                f"model.name={tiny_bert}",
                f"training.output_dir={l2sp}",
                "techniques.anchor.method=l2sp",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                *common,
                f"data.path={second}",
                f"model.name={tiny_bert}",
                f"training.output_dir={tmp_path / 'D'}",
                "techniques.anchor.method=ewc",
            ]
        )
        == 2
    )
    assert "not an hf_tune run" in capsys.readouterr().err
    assert math.isfinite(logged[-1]["loss"])


@pytest.mark.slow
def test_freeze_bn_stats_run_keeps_the_earlier_tasks_statistics_and_saves_a_normal_model(
    tiny_image_args, tiny_npz, tiny_bert, tmp_path, capsys
):
    from transformers import pipeline

    quiet = ["training.save_strategy=no"]
    a = tmp_path / "A"
    assert main(_image(tiny_image_args, a, *quiet)) == 0
    start = load_file(str(a / "model" / "model.safetensors"))
    stats = [k for k in start if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    ewc = ["techniques.anchor.method=ewc", "techniques.anchor.strength=100", "techniques.anchor.fisher_samples=4"]
    frozen, free = tmp_path / "B_frozen", tmp_path / "B_free"
    capsys.readouterr()
    freeze = "techniques.anchor.freeze_bn_stats=true"
    assert main(_image(tiny_image_args, frozen, *quiet, f"model.name={a}", *ewc, freeze)) == 0
    assert "BatchNorm layers stay as the model started" in capsys.readouterr().err
    assert main(_image(tiny_image_args, free, *quiet, f"model.name={a}", *ewc)) == 0
    kept, moved = (load_file(str(r / "model" / "model.safetensors")) for r in (frozen, free))
    assert stats and all(torch.equal(kept[k], start[k]) for k in stats)
    assert all(not torch.equal(moved[k], start[k]) for k in stats)
    assert any(not torch.equal(kept[k], start[k]) for k in start if k not in stats)  # the weights did train
    logged = [h for h in json.loads((frozen / "model" / "log_history.json").read_text()) if "anchor_penalty" in h]
    assert logged  # with EWC's penalty on
    assert sorted(p.name for p in (frozen / "model").glob("*.safetensors")) == ["model.safetensors"]
    capsys.readouterr()
    assert main(["evaluate", str(frozen), f"data.path={tiny_npz}", "data.split=val"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out.strip())["accuracy"] <= 1
    assert pipeline("image-classification", model=str(frozen / "model")).model.config.num_labels == 2

    text = tmp_path / "text"  # BERT has no BatchNorm: refused by name before anything is written
    data = _text_rows(tmp_path / "texts.jsonl")
    assert main(_text(data, text, f"model.name={tiny_bert}", "techniques.anchor.freeze_bn_stats=true")) == 2
    err = capsys.readouterr().err
    assert "techniques.anchor.freeze_bn_stats: this model (BertForSequenceClassification) has no BatchNorm" in err
    assert not (text / "model").exists()
