"""MultiHeadModel: one encoder, routed heads, safetensors round trip."""

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel

from hf_tune.multihead import MultiHeadModel

TASKS = {
    "tag": {"head": "bio_tagging", "labels": ["O", "B-x", "I-x"]},
    "cls": {"head": "single_label", "labels": ["a", "b"]},
    "ml": {"head": "multi_label", "labels": ["p", "q", "r"]},
    "tagml": {"head": "multilabel_tagging", "labels": ["B-x", "I-x"]},
    "reg": {"head": "regression", "labels": []},
}


@pytest.fixture()
def text_model():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    encoder = BertModel(cfg)
    model = MultiHeadModel.from_encoder(encoder, "text", cfg.to_dict(), tasks=TASKS, loss_weighting="uncertainty")
    return encoder, model.eval()


def _labels(n_tok: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    tagml = torch.randint(0, 2, (1, n_tok, 2), generator=g).float()
    tagml[0, -2:] = -100.0
    return {
        "tag": torch.tensor([[0, 1, 2, 0, 0, -100, -100]]),
        "cls": torch.tensor([1]),
        "ml": torch.tensor([[1.0, 0.0, 1.0]]),
        "tagml": tagml,
        "reg": torch.tensor([0.5]),
    }


def test_encoder_exists_once_and_heads_share_it(text_model):
    encoder, model = text_model
    params = list(model.parameters())
    assert len(params) == len({id(p) for p in params})  # no tied or duplicated tensors
    enc_params = {n for n, _ in model.named_parameters() if n.startswith("encoder.")}
    assert len(enc_params) == len(list(encoder.parameters()))
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder.")) == sum(
        p.numel() for p in encoder.parameters()
    )
    assert all(not n.startswith("heads.") or n.count("encoder") == 0 for n, _ in model.named_parameters())
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)
    # a gradient from any head reaches the one shared embedding matrix
    for k, name in enumerate(TASKS):
        model.zero_grad()
        x = torch.randint(1, 99, (1, 7))
        out = model(input_ids=x, task_ids=torch.tensor([k]), labels={name: _labels(7)[name]})
        out.loss.backward()
        assert model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0, name


def test_mixed_batch_routes_to_the_same_losses_as_separate_batches(text_model):
    _, model = text_model
    torch.manual_seed(2)
    x = torch.randint(1, 99, (5, 7))
    mask = torch.ones_like(x)
    mask[1, 5:] = 0
    labels = _labels(7)
    mixed = model(input_ids=x, attention_mask=mask, task_ids=torch.arange(5), labels=labels)
    total = 0.0
    for k, name in enumerate(TASKS):
        alone = model(input_ids=x[k : k + 1], attention_mask=mask[k : k + 1], task=name, labels={name: labels[name]})
        torch.testing.assert_close(mixed.task_losses[name], alone.task_losses[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mixed.logits[name], alone.logits[name], rtol=1e-5, atol=1e-6)
        total += alone.loss.item()
    assert mixed.loss.item() == pytest.approx(total, rel=1e-5)


def test_save_load_round_trip_gives_identical_outputs_for_every_head(text_model, tmp_path):
    _, model = text_model
    with torch.no_grad():
        model.loss_weighting.log_vars.fill_(0.3)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    loaded = MultiHeadModel.from_pretrained(tmp_path).eval()
    via_auto = AutoModel.from_pretrained(tmp_path).eval()
    assert type(via_auto) is MultiHeadModel and loaded.config.task_names == list(TASKS)
    x = torch.randint(1, 99, (5, 7))
    for other in (loaded, via_auto):
        a = model(input_ids=x, task_ids=torch.arange(5), labels=_labels(7))
        b = other(input_ids=x, task_ids=torch.arange(5), labels=_labels(7))
        for name in TASKS:
            torch.testing.assert_close(a.logits[name], b.logits[name], rtol=0, atol=0)
        torch.testing.assert_close(a.loss, b.loss)


def test_image_encoder_with_timm(tmp_path):
    import timm

    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    enc_cfg = {"architecture": "test_resnet", "model_args": {}, "num_features": backbone.num_features}
    tasks = {"finding": {"head": "single_label", "labels": ["normal", "pneumonia"]}, "severity": {"head": "regression"}}
    model = MultiHeadModel.from_encoder(backbone, "image", enc_cfg, tasks=tasks).eval()
    x = torch.randn(4, 3, 32, 32)
    out = model(pixel_values=x, task_ids=torch.tensor([0, 1, 0, 1]))
    assert out.logits["finding"].shape == (2, 2) and out.logits["severity"].shape == (2, 1)
    model.save_pretrained(tmp_path)
    again = MultiHeadModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(
        again(pixel_values=x, task="finding").logits["finding"], model(pixel_values=x, task="finding").logits["finding"]
    )


def test_task_ids_required_with_several_tasks(text_model):
    _, model = text_model
    with pytest.raises(ValueError, match="task_ids"):
        model(input_ids=torch.randint(1, 99, (2, 5)))
