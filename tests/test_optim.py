import math

import pytest
import torch
from transformers import TrainingArguments, get_scheduler

from hf_tune.callbacks import GradientCallback, NonFiniteTrainingError, block_name
from hf_tune.optim import (
    OPTIMIZERS,
    SCHEDULES,
    assign_block_ids,
    build_schedule,
    layerwise_lrs,
    param_groups,
)
from hf_tune.schema import OptimConfig
from hf_tune.trainer import HfTuneTrainer

BERT_NAMES = [
    "bert.embeddings.word_embeddings.weight",
    "bert.embeddings.LayerNorm.weight",
    "bert.encoder.layer.0.attention.self.query.weight",
    "bert.encoder.layer.1.output.dense.weight",
    "bert.encoder.layer.1.output.dense.bias",
    "classifier.weight",
    "classifier.bias",
]
RESNET_NAMES = [
    "timm_model.conv1.weight",
    "timm_model.bn1.weight",
    "timm_model.layer1.0.conv1.weight",
    "timm_model.layer4.1.bn2.bias",
    "timm_model.fc.weight",
]


def test_block_ids_for_bert_and_resnet():
    ids, n = assign_block_ids(BERT_NAMES, {"classifier.weight", "classifier.bias"})
    assert n == 2
    assert [ids[x] for x in BERT_NAMES] == [0, 0, 1, 2, 2, 3, 3]
    ids, n = assign_block_ids(RESNET_NAMES, {"timm_model.fc.weight"})
    assert n == 2 and [ids[x] for x in RESNET_NAMES] == [0, 0, 1, 2, 3]
    assert block_name("bert.encoder.layer.3.attention.self.query.weight") == "bert.encoder.layer.3"
    assert block_name("timm_model.layer1.0.conv1.weight") == "timm_model.layer1.0"


def _params(names):
    return [
        (n, torch.nn.Parameter(torch.zeros(2, 2) if n.endswith("weight") and "LayerNorm" not in n else torch.zeros(2)))
        for n in names
    ]


def test_layerwise_lrs_follow_decay_and_move_with_the_scheduler():
    assert layerwise_lrs(1e-3, 2, 0.5, None) == pytest.approx([1.25e-4, 2.5e-4, 5e-4, 1e-3])
    groups = param_groups(
        _params(BERT_NAMES), {"classifier.weight", "classifier.bias"}, lr=1e-3, weight_decay=0.01, layer_decay=0.5
    )
    by_block = {g["block"]: g["lr"] for g in groups}
    assert by_block == pytest.approx({0: 1.25e-4, 1: 2.5e-4, 2: 5e-4, 3: 1e-3})
    assert all(g["weight_decay"] == 0.0 for g in groups if any(n.endswith("bias") for n in g["names"]))
    opt = torch.optim.AdamW(groups)
    sched = get_scheduler("linear", opt, num_warmup_steps=2, num_training_steps=10)
    for _ in range(5):
        opt.step()
        sched.step()
    lrs = {g["block"]: g["lr"] for g in opt.param_groups}
    factor = lrs[3] / 1e-3
    assert 0 < factor < 1 and all(lrs[b] == pytest.approx(by_block[b] * factor) for b in lrs)


def test_backbone_lr():
    assert layerwise_lrs(1e-3, 2, None, 1e-5) == [1e-5, 1e-5, 1e-5, 1e-3]


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_matches_its_formula(name):
    kw = {
        "step_size": 3,
        "gamma": 0.5,
        "milestones": [2, 5],
        "restart_period": 4,
        "restart_mult": 2,
        "min_lr_ratio": 0.1,
    }
    fn = SCHEDULES.get(name)
    expect = {
        "step": lambda t: 0.5 ** (t // 3),
        "multistep": lambda t: 0.5 ** sum(t >= m for m in (2, 5)),
        "exponential": lambda t: 0.5**t,
        "cosine_restarts": lambda t: _sgdr(t),
    }[name]
    assert [fn(s, 2, **kw) for s in range(2)] == pytest.approx([0.5, 1.0])  # linear warmup over 2 steps
    assert [fn(s + 2, 2, **kw) for s in range(12)] == pytest.approx([expect(t) for t in range(12)])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = build_schedule(name, opt, 2, **kw)
    for _ in range(6):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * expect(4))


def _sgdr(t):
    period = 4
    while t >= period:
        t -= period
        period *= 2
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / period))


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_registered_optimizer_builds_through_trainer_and_steps(name, tmp_path):
    entry = OPTIMIZERS.entry(name)
    model = torch.nn.Linear(3, 2)
    args = TrainingArguments(str(tmp_path), optim=entry.meta["trainer_optim"], learning_rate=0.1, report_to="none")
    trainer = HfTuneTrainer(
        model=model, args=args, optimizer_kwargs=entry.obj(OptimConfig()), optimizer_cls=entry.meta.get("cls")
    )
    opt = trainer.create_optimizer()
    if hasattr(opt, "train"):
        opt.train()  # schedule-free optimizers switch modes
    before = model.weight.detach().clone()
    model(torch.ones(4, 3, device=model.weight.device)).sum().backward()  # Trainer may have moved it to a GPU
    opt.step()
    assert not torch.equal(before, model.weight)
    if name == "adam":
        assert type(opt) is torch.optim.Adam
    if name == "sgd":
        assert opt.param_groups[0]["momentum"] == 0.9


def _cb(**kw):
    base = dict(
        mode="norm",
        max_norm=1.0,
        value=0.5,
        agc_factor=0.01,
        agc_eps=1e-3,
        auto_percentile=50.0,
        auto_window=100,
        auto_min_history=3,
        monitor=True,
        depth=2,
        skip_nonfinite=True,
        max_nonfinite_in_a_row=2,
        plot=False,
    )
    return GradientCallback(**(base | kw))


class _S:
    global_step = 7


def _model_with_grads(scale=10.0):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    for p in m.parameters():
        p.grad = torch.randn_like(p) * scale
    return m


def test_callback_norm_clip_bounds_global_norm_and_logs_pre_and_post():
    m = _model_with_grads()
    cb = _cb()
    cb.on_train_begin(None, None, None, model=m)
    cb.on_pre_optimizer_step(None, _S(), None)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m.parameters()]))
    assert total <= 1.0 + 1e-5
    logs = cb.take_logs()
    assert logs["grad_norm_pre/0"] > logs["grad_norm_post/0"] and logs["grad_norm_post_total"] <= 1.0 + 1e-5


def test_callback_value_and_auto_modes():
    m = _model_with_grads()
    cb = _cb(mode="value")
    cb.on_train_begin(None, None, None, model=m)
    cb.on_pre_optimizer_step(None, _S(), None)
    assert max(p.grad.abs().max() for p in m.parameters()) <= 0.5
    cb = _cb(mode="auto")
    cb.history = [1.0, 2.0, 3.0, 4.0]
    m = _model_with_grads()
    cb.on_train_begin(None, None, None, model=m)
    cb.on_pre_optimizer_step(None, _S(), None)
    assert cb.last_threshold == pytest.approx(2.5)  # median of the history


def test_nonfinite_step_is_skipped_and_leaves_weights_unchanged():
    m = _model_with_grads()
    next(m.parameters()).grad[0, 0] = float("nan")
    opt = torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.1)
    before = [p.detach().clone() for p in m.parameters()]
    cb = _cb()
    cb.on_train_begin(None, None, None, model=m)
    cb.on_pre_optimizer_step(None, _S(), None)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))
    assert cb.take_logs()["nonfinite_steps_skipped"] == 1
    for p in m.parameters():
        p.grad = torch.full_like(p, float("inf"))
    with pytest.raises(NonFiniteTrainingError, match="2 optimizer steps in a row"):
        cb.on_pre_optimizer_step(None, _S(), None)
