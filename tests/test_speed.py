"""Speed: length-grouped training batches, length-sorted evaluation in input order, the stitch plan, FLOP counts
and CPU settings (issue 15)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from hf_tune.data.batching import (
    LengthGroupedSampler,
    LengthSortedSampler,
    bucket_batches,
    in_input_order,
    length_grouped_batches,
    longest_first,
    padded_tokens,
    sequence_lengths,
)
from hf_tune.data.spans import stitch_owner, stitch_plan, window_starts
from hf_tune.flops import (
    conv_linear_forward_flops,
    gpu_bf16_peak,
    non_embedding_parameters,
    transformer_flops,
    utilisation,
)
from hf_tune.speed import cgroup_cpu_limit, int8_linear, intra_op_threads, pad_multiple

LENGTHS = np.random.default_rng(0).integers(2, 120, size=203)  # not a multiple of the batch: a short last batch
BATCH = 8


def _epoch(sampler: LengthGroupedSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


# ---------------------------------------------------------------------------------------------- training sampler
def test_every_example_exactly_once_per_epoch_and_epochs_differ():
    sampler = LengthGroupedSampler(LENGTHS, BATCH, seed=3)
    orders = [_epoch(sampler, e) for e in range(3)]
    for order in orders:
        assert sorted(order) == list(range(len(LENGTHS)))
    assert orders[0] != orders[1] and orders[1] != orders[2]
    assert _epoch(sampler, 1) == orders[1]  # (seed, epoch) alone decide: a resumed run sees the same batches
    assert _epoch(LengthGroupedSampler(LENGTHS, BATCH, seed=4), 1) != orders[1]


def test_two_ranks_draw_the_same_order_and_their_shards_cover_the_epoch_once():
    # every rank builds its own sampler; accelerate then deals the batches out (BatchSamplerShard)
    ranks = [LengthGroupedSampler(LENGTHS, BATCH, seed=7) for _ in range(2)]
    for epoch in (0, 1):
        assert _epoch(ranks[0], epoch) == _epoch(ranks[1], epoch)
        shards = [
            list(BatchSamplerShard(BatchSampler(s, BATCH, False), 2, rank, even_batches=False))
            for rank, s in enumerate(ranks)
        ]
        seen = [i for shard in shards for batch in shard for i in batch]
        assert sorted(seen) == list(range(len(LENGTHS)))
        assert not set(i for b in shards[0] for i in b) & set(i for b in shards[1] for i in b)


def test_dataloader_batches_are_the_length_groups_and_pad_much_less_than_random_batches():
    sampler = LengthGroupedSampler(LENGTHS, BATCH, seed=0)
    batches = [list(b) for b in BatchSampler(sampler, BATCH, drop_last=False)]
    groups = length_grouped_batches(LENGTHS, BATCH, seed=0, epoch=0)
    assert batches == [g.tolist() for g in groups]  # the short batch is last, so nothing shifts
    assert all(len(b) == BATCH for b in batches[:-1]) and len(batches[-1]) == len(LENGTHS) % BATCH
    perm = np.random.default_rng(0).permutation(len(LENGTHS))
    random_batches = [perm[i : i + BATCH] for i in range(0, len(perm), BATCH)]
    real = int(LENGTHS.sum())
    assert padded_tokens(LENGTHS, batches) < real * 1.15 < padded_tokens(LENGTHS, random_batches)


def test_batches_stay_random_across_buckets():
    groups = length_grouped_batches(LENGTHS, BATCH, seed=0, epoch=0)
    maxima = [int(LENGTHS[g].max()) for g in groups[:-1]]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)
    assert bucket_batches(len(LENGTHS), BATCH) == len(LENGTHS) // (4 * BATCH)  # small set: 4+ buckets
    assert bucket_batches(10**6, BATCH) == 50


def test_lengths_come_from_the_dataset_without_building_items():
    class Lazy:
        lengths = [3, 1, 2]

        def __len__(self):
            return 3

        def __getitem__(self, i):
            raise AssertionError("no item may be built (an augmenting set would draw)")

    assert sequence_lengths(Lazy()).tolist() == [3, 1, 2]
    assert sequence_lengths([{"input_ids": [1, 2]}, {"input_ids": [1]}]).tolist() == [2, 1]
    with pytest.raises(ValueError, match="group_by_length"):
        sequence_lengths([{"pixel_values": 1}])


# ---------------------------------------------------------------------------------------------- sorted evaluation
def test_sorted_order_round_trips():
    lengths = [3, 9, 9, 1, 5]
    order = longest_first(lengths)
    assert order.tolist() == [1, 2, 4, 0, 3]  # ties keep their input order
    values = np.array([[10, 10], [11, 11], [12, 12], [13, 13], [14, 14]])[order]
    assert in_input_order(values, order).tolist() == [[10, 10], [11, 11], [12, 12], [13, 13], [14, 14]]
    nested = in_input_order((values, {"a": values[:, 0]}), order)
    assert nested[1]["a"].tolist() == [10, 11, 12, 13, 14]
    assert list(LengthSortedSampler(lengths)) == order.tolist()
    with pytest.raises(RuntimeError, match="input order"):
        in_input_order(values[:3], order)


def _eval_with(strategy: str, tiny_bert, tmp_path, dataset):
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        TrainingArguments,
    )

    from hf_tune.trainer import HfTuneTrainer

    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(str(tiny_bert), num_labels=3)
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    seen = {}

    def metrics(p):  # a metric that depends on which prediction belongs to which example
        seen["preds"], seen["labels"] = p.predictions, p.label_ids
        first = [int(np.argmax(p.predictions[i, 1])) for i in range(len(dataset))]
        return {"first_token_matches_id": float(np.mean([f == i % 3 for i, f in enumerate(first)]))}

    args = TrainingArguments(
        str(tmp_path / strategy),
        per_device_eval_batch_size=3,
        train_sampling_strategy=strategy,
        report_to="none",
        use_cpu=True,
        dataloader_pin_memory=False,
    )
    trainer = HfTuneTrainer(
        model=model,
        args=args,
        data_collator=DataCollatorForTokenClassification(tok),
        processing_class=tok,
        compute_metrics=metrics,
    )
    sampler = trainer._get_eval_sampler(dataset)
    out = trainer.predict(dataset)
    return out, seen, sampler


def test_sorted_evaluation_gives_unsorted_results_in_input_order(tiny_bert, tmp_path):
    rng = np.random.default_rng(1)
    dataset = []
    for i, n in enumerate([5, 17, 3, 11, 17, 8, 2, 14, 6, 9, 4]):
        ids = [101, *rng.integers(1000, 5000, size=n).tolist(), 102]
        dataset.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] + [i % 3] * n + [-100]})
    sorted_out, sorted_seen, sampler = _eval_with("group_by_length", tiny_bert, tmp_path, dataset)
    plain_out, plain_seen, plain_sampler = _eval_with("random", tiny_bert, tmp_path, dataset)
    assert isinstance(sampler, LengthSortedSampler) and not isinstance(plain_sampler, LengthSortedSampler)
    assert sampler.order.tolist() != list(range(len(dataset)))  # the evaluation really ran in another order
    np.testing.assert_array_equal(sorted_out.label_ids, plain_out.label_ids)
    np.testing.assert_array_equal(sorted_seen["labels"], plain_seen["labels"])
    for i, item in enumerate(dataset):  # real tokens (padding differs with the batch an example lands in)
        n = len(item["input_ids"])
        np.testing.assert_allclose(sorted_out.predictions[i, :n], plain_out.predictions[i, :n], atol=1e-5)
    key = "test_first_token_matches_id"
    assert sorted_out.metrics[key] == plain_out.metrics[key]


# ---------------------------------------------------------------------------------------------- stitching
def test_stitch_plan_gathers_what_the_per_window_loop_stitches():
    rng = np.random.default_rng(2)
    docs = [window_starts(n, 10, 4) for n in (0, 3, 10, 11, 37)]
    sizes = [0, 3, 10, 11, 37]
    n_windows = sum(len(w) for w in docs)
    preds = rng.random((n_windows, 12, 2)).astype(np.float32)  # [CLS] + up to 10 tokens + [SEP]
    plan = stitch_plan(docs, sizes)
    assert plan.n_windows == n_windows and plan.doc_starts.tolist() == [0, 0, 3, 13, 24, 61]
    gathered = preds[plan.rows, plan.cols]
    row = 0
    for d, (wins, n) in enumerate(zip(docs, sizes, strict=True)):
        owner = stitch_owner(wins, n)
        expected = np.zeros((n, 2), dtype=np.float32)
        for w, (a, b) in enumerate(wins):
            mine = np.flatnonzero(owner[a:b] == w)
            expected[a + mine] = preds[row + w, 1 : 1 + (b - a)][mine]
        row += len(wins)
        np.testing.assert_array_equal(gathered[plan.doc_starts[d] : plan.doc_starts[d + 1]], expected)


# ---------------------------------------------------------------------------------------------- FLOPs
def test_flop_counts_on_a_hand_computed_case():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3))
    assert non_embedding_parameters(model) == 4 * 3 + 3  # the 40 embedding weights are looked up, not multiplied
    # sequences of 2 and 3 tokens, 1 layer of width 4: forward 2*15*5 + 4*1*4*(4+9) = 150 + 208
    assert transformer_flops(15, [2, 3], n_layers=1, d_model=4) == 358
    assert transformer_flops(15, [2, 3], n_layers=1, d_model=4, training=True) == 3 * 358
    assert transformer_flops(15, [2, 3]) == 150  # the "2 x parameters per token" rule alone

    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(18, 2))
    # conv: 2 x 3 x 3 outputs, 9 multiply-adds each = 162 MACs; linear: 2 outputs x 18 = 36 MACs
    assert conv_linear_forward_flops(cnn, torch.zeros(1, 1, 5, 5)) == 2 * (162 + 36)


def test_utilisation_and_gpu_peaks():
    u = utilisation(290e9, 2.0, 145e9)
    assert u == {"achieved_gflops": 145.0, "peak_gflops": 145.0, "utilisation": 1.0}
    assert utilisation(1e9, 1.0, None)["utilisation"] is None
    assert gpu_bf16_peak("NVIDIA H100 PCIe") == 756e12 and gpu_bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_bf16_peak("Tesla T4") is None


# ---------------------------------------------------------------------------------------------- CPU settings
def test_threads_are_physical_cores_shared_among_processes():
    assert intra_op_threads(allowed_logical=2, logical=2, physical=2, local_processes=1) == 2
    assert intra_op_threads(allowed_logical=2, logical=2, physical=2, local_processes=2) == 1
    assert intra_op_threads(allowed_logical=16, logical=16, physical=8, local_processes=1) == 8  # hyper-threads
    assert intra_op_threads(allowed_logical=64, logical=64, physical=64, local_processes=2, quota=4.0) == 2
    assert intra_op_threads(allowed_logical=1, logical=8, physical=4, local_processes=4) == 1
    assert cgroup_cpu_limit("200000 100000\n") == 2.0
    assert cgroup_cpu_limit("max 100000") is None and cgroup_cpu_limit(None) is None
    assert pad_multiple(None, cuda=True) == 8 and pad_multiple(None, cuda=False) is None
    assert pad_multiple(16, cuda=False) == 16 and pad_multiple(1, cuda=True) is None


def test_speed_settings_are_validated():
    from hf_tune.config import load_config
    from hf_tune.errors import ConfigError

    cases = {
        "speed.cpu_threads must be >= 1": ["recipe=quickstart", "speed.cpu_threads=0"],
        "image data has none": ["recipe=quickstart", "training.train_sampling_strategy=group_by_length"],
        "unknown 'sdpaa' \\(did you mean \"sdpa\"": ["recipe=clause_type_minilm", "model.attn_implementation=sdpaa"],
        "max_train_eval_docs: single-task recipes only": [
            "recipe=contracts_multitask",
            "tasks.clauses.data.max_train_eval_docs=2",
        ],
    }
    for message, argv in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(argv)
    assert load_config(["recipe=clause_type_minilm", "model.attn_implementation=eager"]).model.kwargs() == {
        "attn_implementation": "eager"
    }


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_token_run_groups_by_length_and_predict_reports_throughput(tiny_bert, contracts_jsonl, tmp_path, capsys):
    from hf_tune.cli import main

    run = tmp_path / "run"
    args = [
        "recipe=contract_tagging_minilm",
        f"data.path={contracts_jsonl}",
        f"model.name={tiny_bert}",
        f"training.output_dir={run}",
        "training.max_steps=4",
        "training.per_device_train_batch_size=4",
        "training.save_strategy=no",
        "training.eval_strategy=steps",
        "training.eval_steps=2",
        "data.window=32",
        "data.stride=15",
        "data.max_train_docs=null",
        "data.max_eval_docs=null",
        "data.max_train_eval_docs=1",
    ]
    assert main(["train", *args]) == 0
    captured = capsys.readouterr()
    final = json.loads(captured.out.strip().splitlines()[-1])
    assert "eval_span_f1_micro" in final
    history = json.loads((run / "model" / "log_history.json").read_text())
    evals = [h for h in history if "eval_gold_spans" in h]  # step 2 and 4 during training, then the final one
    assert [h["step"] for h in evals] == [2, 4, 4]
    assert evals[0]["eval_gold_spans"] == evals[1]["eval_gold_spans"] < evals[2]["eval_gold_spans"]
    assert evals[2]["eval_gold_spans"] == final["eval_gold_spans"]  # a subset during training, then all
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, d in enumerate(json.loads(x) for x in contracts_jsonl.read_text().splitlines()[:3]):
        (docs / f"{i}.txt").write_text(d["text"] * 4)
    assert main(["predict", str(run), str(docs)]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [r["id"].rsplit("/", 1)[-1] for r in rows] == ["0.txt", "1.txt", "2.txt"]
    assert "3 documents" in captured.err and "documents/s" in captured.err and "tokens/s" in captured.err


def test_prediction_windows_batched_longest_first_come_back_in_input_order(tiny_bert):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from hf_tune.config import load_config
    from hf_tune.recipes.token_classification import TokenClassificationRecipe

    recipe = TokenClassificationRecipe(load_config(["recipe=contract_tagging_minilm", f"model.name={tiny_bert}"]))
    recipe.tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    torch.manual_seed(0)
    recipe.model = AutoModelForTokenClassification.from_pretrained(str(tiny_bert), num_labels=3).eval()
    rng = np.random.default_rng(3)
    feats = []
    for n in (4, 30, 9, 30, 1, 17, 12):
        ids = [101, *rng.integers(1000, 5000, size=n).tolist(), 102]
        feats.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    batched = recipe._window_outputs(feats, batch_size=3)
    for f, out in zip(feats, batched, strict=True):
        alone = recipe._window_outputs([f], batch_size=1)[0]
        assert out.shape == (len(f["input_ids"]) - 2, 2)
        np.testing.assert_allclose(out, alone, atol=1e-5)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_token_run_scores_like_a_single_process_evaluation(tiny_bert, contracts_jsonl, tmp_path, capsys):
    """Length-grouped training and length-sorted evaluation through accelerate's sharding and gathering: both ranks
    report the same metrics, and they are those of ``hf-tune evaluate`` on the same split in one process."""
    import re

    from hf_tune.cli import main

    from .test_multiprocess import _launch

    run = tmp_path / "run"
    args = [
        "recipe=contract_tagging_minilm",
        f"data.path={contracts_jsonl}",
        f"model.name={tiny_bert}",
        f"training.output_dir={run}",
        "training.max_steps=4",
        "training.learning_rate=1e-3",
        "training.per_device_train_batch_size=4",
        "training.per_device_eval_batch_size=3",
        "training.save_strategy=no",
        "data.window=32",
        "data.stride=15",
        "data.max_train_docs=null",
        "data.max_eval_docs=null",
    ]
    r = _launch(args, tmp_path, 29541)
    ranks = {k: json.loads(v) for k, v in re.findall(r"\[hf_tune\] rank (\d) metrics (\{.*\})", r.stderr)}
    assert set(ranks) == {"0", "1"}
    keys = ("eval_span_f1_micro", "eval_overlap_f1", "eval_predicted_spans", "eval_gold_spans")
    assert all(ranks["0"][k] == ranks["1"][k] for k in keys)
    assert main(["evaluate", str(run), "data.split=val"]) == 0
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for k in keys:
        assert single[k.removeprefix("eval_")] == pytest.approx(ranks["0"][k]), k


def test_int8_linear_quantizes_every_linear_of_a_copy_and_stays_close(tiny_bert):
    from transformers import AutoModelForTokenClassification

    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(str(tiny_bert), num_labels=5).eval()
    quantized = int8_linear(model)
    linear = [m for m in quantized.modules() if type(m) is torch.nn.Linear]
    assert not linear, "every Linear is replaced"
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in quantized.modules())
    assert any(type(m) is torch.nn.Linear for m in model.modules()), "the original model is left as it was"
    x = torch.randint(5, 90, (3, 24))
    with torch.inference_mode():
        a, b = model(input_ids=x).logits, quantized(input_ids=x).logits
    assert b.shape == a.shape
    assert float((a - b).norm() / a.norm()) < 0.05  # int8 per-channel weights: a small relative error
