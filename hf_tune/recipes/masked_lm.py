"""Domain-adaptive masked-LM pretraining: continue a BERT-family encoder's pretraining on unlabelled task text.

When the task's text differs from the pretraining text (contracts, clinical notes), a few thousand steps of
masked-LM training on the task's own text ("Don't Stop Pretraining", Gururangan et al. 2020) adapts the
encoder before fine-tuning. The run saves an ordinary ``AutoModelForMaskedLM`` folder with its tokenizer;
every text recipe takes the run as ``model.name=runs/x`` and puts a fresh task head on the adapted encoder.

Perplexity is measured on held-out documents with masks drawn once (a fixed seed), before training (Trainer's
``eval_on_start``) and after, so the two numbers score the same masked tokens. Encoders packaged without an
MLM head (sentence encoders such as the packaged MiniLM) get a new head whose output layer is tied to the input
embeddings: "perplexity before" is then that untrained head's, and the first few hundred steps mostly train
the head (see docs/techniques.md for how long to run).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from hf_tune.data.documents import load_raw_texts, read_documents_for_prediction
from hf_tune.data.mlm import MaskingCollator, line_examples, mask_once, pack_blocks, subset_indices
from hf_tune.data.splits import carve, concat_items, select, take_items
from hf_tune.errors import DataError
from hf_tune.heads import HEADS, Head
from hf_tune.metrics import masked_lm_metrics, masked_token_stats
from hf_tune.modeling import check_positions, load_pretrained, resolve_model_name
from hf_tune.recipes.base import Recipe, SmokeRun, register_kind
from hf_tune.schema import BaseConfig, DataSplitsConfig, KindSpec, TextModelConfig
from hf_tune.techniques import log
from hf_tune.trainer import LossInputs, TrainingLoss

IGNORE = -100

PERPLEXITY_BEFORE = "perplexity_before"


@dataclass
class MaskedLMDataConfig(DataSplitsConfig):
    path: str | None = None
    """Unlabelled text: a .txt file, a folder of .txt files, a JSONL or CSV with a text field (span JSONL gives
    its documents' text), or a datasets folder."""
    format: Literal["auto", "txt", "jsonl", "csv", "hf"] = "auto"
    text_column: str = "text"
    """The field holding the text in JSONL/CSV/datasets sources."""
    packing: Literal["blocks", "lines"] = "blocks"
    """blocks: every document concatenated and cut into block_size pieces (no padding, long documents read
    whole); lines: one example per non-empty line, truncated (short independent texts)."""
    block_size: int = 256
    """Tokens per example including [CLS] and [SEP]."""
    mlm_probability: float = 0.15
    """Share of tokens (of words, with whole_word_mask) masked; masked tokens are 80% [MASK], 10% random,
    10% unchanged (whole words: always [MASK])."""
    whole_word_mask: bool = False
    """Mask every subword of a chosen word together, so a word cannot be guessed from its own pieces."""
    max_train_blocks: int | None = None
    """Use a seeded subset of the training blocks."""
    max_eval_blocks: int | None = 256
    """Blocks of the held-out documents scored for perplexity (a seeded subset; None: all)."""
    split_ratios: list[float] = field(default_factory=lambda: [0.95, 0.05, 0.0])
    """Held-out documents for perplexity are carved by document."""


@dataclass
class MaskedLMConfig(BaseConfig):
    spec = KindSpec(
        name="masked_lm",
        modality="text",
        headline_metric="perplexity",
        pipeline_tag="fill-mask",
        example_input='"This Agreement shall be [MASK] by the laws of the State of Delaware."',
        predict_note=(
            " (a text with [MASK] gets the top fills per mask; a text without one gets its perplexity under a"
            " seeded masking)"
        ),
        multitask_task=False,
        without=("distill",),
    )
    model: TextModelConfig = field(default_factory=TextModelConfig)
    data: MaskedLMDataConfig = field(default_factory=MaskedLMDataConfig)

    def validate(self) -> list[str]:
        errors = super().validate() + self.data.split_errors() + self.model.errors()
        d = self.data
        if not 0.0 < d.mlm_probability < 1.0:
            errors.append(f"data.mlm_probability must be in (0, 1), got {d.mlm_probability}")
        if d.block_size < 8:
            errors.append(f"data.block_size must be at least 8 tokens, got {d.block_size}")
        if d.split_ratios[1] <= 0 and not d.val_path:
            errors.append(
                "data.split_ratios: masked_lm needs held-out text for perplexity: give val a share (e.g. "
                "[0.95, 0.05, 0.0]) or set data.val_path"
            )
        if self.techniques.lora.enabled:
            errors.append(
                "techniques.lora.enabled: not for masked_lm (the new MLM head is tied to the input embeddings, "
                "which LoRA freezes); adapt the whole encoder, or freeze blocks with techniques.freeze.*"
            )
        loss = self.techniques.loss
        if loss.name != "cross_entropy" or loss.class_weights is not None:
            errors.append("techniques.loss: masked_lm trains with the model's own cross-entropy over the vocabulary")
        return errors

    def card_settings(self) -> list[str]:
        d = self.data
        return [
            f"- masked-LM: {d.packing} of {d.block_size} tokens, {d.mlm_probability:.0%} masked"
            + (", whole words" if d.whole_word_mask else "")
        ]


class TokenBlocks(torch.utils.data.Dataset):
    def __init__(self, examples: list[dict[str, Any]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.examples[i]


@register_kind
class MaskedLMRecipe(Recipe):
    config_cls = MaskedLMConfig
    cfg: MaskedLMConfig

    @property
    def head(self) -> Head:
        return HEADS.get("masked_lm")

    # ---------------------------------------------------------------- data
    def _source_splits(self) -> dict[str, list[str]]:
        d = self.cfg.data
        splits = load_raw_texts(d.path, d.format, text_column=d.text_column)
        for name, path in (("val", d.val_path), ("test", d.test_path)):
            if path:
                splits[name] = concat_items(list(load_raw_texts(path, d.format, text_column=d.text_column).values()))
        return splits

    def _carved(self, splits: dict[str, list[str]]) -> dict[str, list[str]]:
        d = self.cfg.data
        return carve(splits, d.split_ratios, d.split_seed, d.carve, take_items)

    def _examples(self, texts: list[str]) -> list[dict[str, Any]]:
        """Token blocks (or lines) of ``texts``; offsets ride along for whole-word masking."""
        d, tok = self.cfg.data, self.tokenizer
        if d.packing == "lines":
            texts = [line for t in texts for line in t.splitlines() if line.strip()]
        enc = tok(texts, add_special_tokens=False, return_offsets_mapping=d.whole_word_mask, verbose=False)
        offsets = enc["offset_mapping"] if d.whole_word_mask else None
        build = pack_blocks if d.packing == "blocks" else line_examples
        return build(enc["input_ids"], offsets, d.block_size, tok.cls_token_id, tok.sep_token_id)

    def _masked_eval(self, texts: list[str]) -> TokenBlocks:
        d = self.cfg.data
        examples = self._examples(texts)
        keep = subset_indices(len(examples), d.max_eval_blocks, d.split_seed)
        fixed = MaskingCollator(self.tokenizer, d.mlm_probability, d.whole_word_mask, seed=d.split_seed)
        return TokenBlocks(mask_once([examples[i] for i in keep], fixed))

    def prepare_data(self) -> None:
        from transformers import AutoTokenizer

        d = self.cfg.data
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(self.cfg.model.name))
        check_positions(self.cfg.model.name, d.block_size, "data.block_size")
        if self.tokenizer.mask_token is None:
            raise DataError(f"model.name={self.cfg.model.name}: its tokenizer has no mask token; not a masked LM")
        splits = self._carved(self._source_splits())
        train = self._examples(splits["train"])
        train = [train[i] for i in subset_indices(len(train), d.max_train_blocks, d.split_seed)]
        if not train:
            raise DataError(f"data.path={d.path}: no training text after tokenisation")
        self.datasets = {"train": TokenBlocks(train)}
        for name in ("val", "test"):
            if splits.get(name):
                self.datasets[name] = self._masked_eval(splits[name])
        n_tokens = sum(len(e["input_ids"]) for e in train)
        log(
            f"data: {', '.join(f'{k}={len(v)} docs' for k, v in splits.items())}; {len(train)} training "
            f"{d.packing} ({n_tokens:,} tokens), "
            + ", ".join(f"{k}={len(v)} masked blocks" for k, v in self.datasets.items() if k != "train")
        )

    def build_model(self) -> None:
        m = self.cfg.model
        self.model = load_masked_lm(
            m.name, m.pretrained_file, num_layers=m.num_layers, layer_pick=m.layer_pick, **m.kwargs()
        )

    def train_labels(self):
        return None

    def task_loss(self, label_smoothing: float):
        return None  # evaluation: the model's own cross-entropy over the vocabulary

    def training_loss(self):
        if self.args.world_size > 1 or self.args.label_smoothing_factor:
            return None  # DDP must run the wrapped model whole; label smoothing is Trainer's, on full logits
        return MaskedPositionsLoss()

    def data_collator(self):
        d = self.cfg.data
        return MaskingCollator(self.tokenizer, d.mlm_probability, d.whole_word_mask)

    def processing_class(self):
        return self.tokenizer

    def preprocess_logits(self):
        return lambda logits, labels: masked_token_stats(logits, labels)

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        return masked_lm_metrics(eval_pred.predictions)

    def training_args(self, **overrides: Any):
        # perplexity before training comes from Trainer's own eval_on_start; the masking collator needs the
        # offsets and special-token masks that Trainer would otherwise strip as "unused columns"
        overrides = {"remove_unused_columns": False, **overrides}
        if "eval_on_start" not in self.cfg.training and "eval_strategy" not in overrides:
            overrides["eval_on_start"] = not self.cfg.resume
        return super().training_args(**overrides)

    def evaluate(self) -> dict[str, float]:
        metrics = super().evaluate()
        before = next(
            (h for h in self.trainer.state.log_history if h.get("step") == 0 and "eval_perplexity" in h), None
        )
        if before is not None:
            metrics[f"eval_{PERPLEXITY_BEFORE}"] = before["eval_perplexity"]
            after = metrics.get("eval_perplexity")
            log(f"perplexity on held-out text: before {before['eval_perplexity']:.2f}, after {after:.2f}")
        return metrics

    # ---------------------------------------------------------------- saved-model entry points
    @classmethod
    def load_model(cls, model_dir: Path):
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM.from_pretrained(str(model_dir))

    def eval_dataset(self, split: str, model_dir: Path) -> tuple[str, Any]:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        splits = self._source_splits()
        name, texts = select(splits, split, carved=self._carved, concat=concat_items, source=self.cfg.data.path)
        return name, self._masked_eval(texts)

    def predict(self, model_dir: Path, source: str, batch_size: int = 32, model=None) -> Iterator[dict[str, Any]]:
        from transformers import AutoTokenizer

        model = (model or self.inference_model(model_dir)).eval()
        self.tokenizer = tok = AutoTokenizer.from_pretrained(str(model_dir))
        collator = self.data_collator()
        for doc in read_documents_for_prediction(source, self.cfg.data.text_column):
            if tok.mask_token in doc.text:
                yield {"id": doc.id, "fills": fill_masks(model, tok, doc.text, self.cfg.data.block_size)}
                continue
            blocks = self._masked_eval([doc.text]).examples
            stats = []
            for start in range(0, len(blocks), batch_size):
                batch = collator(blocks[start : start + batch_size])
                with torch.no_grad():
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                stats.append(masked_token_stats(logits, batch["labels"]).numpy())
            import numpy as np

            m = masked_lm_metrics(np.concatenate(stats)) if stats else masked_lm_metrics(np.zeros((0, 3)))
            yield {"id": doc.id, "perplexity": m["perplexity"], "masked_tokens": int(m["masked_tokens"])}

    @classmethod
    def smoke_recipe(cls, folder: Path, text_model: str) -> dict[str, SmokeRun]:
        import json

        lines = [
            f"The {w} shall deliver the goods to the {v} within {i} days of the order."
            for i, (w, v) in enumerate([("Supplier", "Buyer"), ("Licensor", "Licensee"), ("Seller", "Purchaser")] * 8)
        ]
        path = folder / "corpus.jsonl"
        path.write_text("".join(json.dumps({"text": " ".join(lines[i : i + 4])}) + "\n" for i in range(0, 24, 2)))
        probe = folder / "probe.jsonl"
        probe.write_text(
            json.dumps({"text": "The Supplier shall [MASK] the goods."}) + "\n" + json.dumps({"text": lines[0]}) + "\n"
        )
        args = ["recipe=contracts_mlm_minilm", f"data.path={path}", f"model.name={text_model}", "data.block_size=16"]
        return {"masked_lm": SmokeRun(args, probe)}


class MaskedPositionsLoss(TrainingLoss):
    """Masked-LM cross-entropy with the vocabulary projection computed only at the masked tokens.

    The projection to a 30k-word vocabulary costs about twice the rest of a MiniLM-sized encoder per token;
    the standard masked-LM forward computes it at every position and then ignores the 85% that are not
    masked. Training runs the encoder, then the head on the masked positions only (same loss, same
    gradients); evaluation keeps the model's full forward (its logits feed the perplexity metric)."""

    def run_model(self, model: torch.nn.Module, inputs: dict[str, Any], labels: torch.Tensor) -> Any:
        from transformers.modeling_outputs import MaskedLMOutput

        from hf_tune.modeling import head_modules

        heads = head_modules(model)
        base = getattr(model, getattr(model, "base_model_prefix", ""), None)
        if base is None or len(heads) != 1:
            return model(**inputs)
        hidden = base(**inputs).last_hidden_state
        return MaskedLMOutput(logits=getattr(model, heads[0])(hidden[labels != IGNORE]))

    def __call__(self, batch: LossInputs) -> torch.Tensor:
        labels, logits = batch.labels, batch.logits
        target = labels[labels != IGNORE]
        if logits.dim() == labels.dim() + 1:  # a full forward (fallback): pick the masked positions here
            logits = logits[labels != IGNORE]
        if target.numel() == 0:
            return logits.sum() * 0.0
        return torch.nn.functional.cross_entropy(logits.float(), target)


def load_masked_lm(name: str, pretrained_file: str | None = None, **kwargs: Any):
    """``AutoModelForMaskedLM`` for ``name``, keeping the encoder's pooler.

    BERT's masked-LM class has no pooler, so a sentence classifier fine-tuned from the adapted folder would get
    a random one while the same classifier from the original encoder keeps its pretrained pooler. The pooler is
    carried along frozen (no gradient reaches it from the MLM loss) and saved with the model, so both start
    from the same weights everywhere except where adaptation changed them.
    """
    from transformers import AutoModel, AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    model = load_pretrained(AutoModelForMaskedLM, name, pretrained_file=pretrained_file, **kwargs)
    base = getattr(model, model.base_model_prefix, None)
    if base is not None and getattr(base, "pooler", False) is None:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the MLM head's keys are "unexpected" for the plain encoder
        try:
            full, info = AutoModel.from_pretrained(resolve_model_name(name), output_loading_info=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        if getattr(full, "pooler", None) is not None and not any("pooler" in k for k in info["missing_keys"]):
            base.pooler = full.pooler.requires_grad_(False)
    return model


def fill_masks(model, tokenizer, text: str, max_length: int, top_k: int = 5) -> list[list[dict[str, Any]]]:
    """Top ``top_k`` tokens (with probabilities) for each mask token of ``text``."""
    enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0]
    out = []
    for pos in (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist():
        probs = logits[pos].float().softmax(-1)
        top = probs.topk(top_k)
        out.append(
            [
                {"token": tokenizer.decode([i]).strip(), "score": round(float(p), 6)}
                for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            ]
        )
    return out
