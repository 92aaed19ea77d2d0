"""ClauseExtractorModel: a frozen text encoder with two light heads that find clauses in whole documents.

- The *unit head* decides long clause categories per unit (sentence or numbered item, see
  hf_tune.data.clauses.segment): each unit is one mean-pooled encoder embedding plus its relative position, and a
  bidirectional GRU over all units of the document gives every decision the document's context, so a clause
  that runs over several sentences (or over what would be two 256-token windows) is one decision. It predicts a
  B and an I sigmoid per category (the multilabel_tagging head at unit level), so overlapping clauses of
  different categories are kept.
  With ``unit_ngrams`` a hashed bag of the unit's words and word pairs (an EmbeddingBag) is added to its
  projected embedding: the exact words that name a category, which a mean-pooled frozen embedding blurs.
- The *token head* tags short categories (party names, dates, document names) with BIO tags on the encoder's
  token states of the document's opening tokens, where almost all of them are (a one-layer GRU over them). With
  ``token_scheme="per_category"`` every category has its own O/B/I sequence (and CRF), so a date that is both
  the Agreement Date and the Effective Date (more than half of CUAD's Effective Dates) is tagged as both; with
  ``token_casing`` the token states gain casing features the uncased encoder cannot see (names are capitalised).

Training runs on cached encoder outputs (the encoder is frozen), so a CPU can afford many head epochs over every
training contract; ``extract`` runs the encoder on raw text for evaluation and prediction. Like MultiHeadModel
this is a regular transformers model (safetensors, ``from_pretrained``; ``import hf_tune.clause_model``
registers it with AutoConfig/AutoModel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from hf_tune.crf import CRF, compact
from hf_tune.data.batching import token_budget_batches
from hf_tune.data.clauses import SEGMENTERS, decode_units, unit_ngrams
from hf_tune.data.spans import IGNORE, Span, bio_labels, decode_bio, first_subword_mask
from hf_tune.heads import inherit_first_score, inherit_first_subword


class ClauseExtractorConfig(PretrainedConfig):
    """Config of a :class:`ClauseExtractorModel`.

    Args:
        encoder: the text encoder's config as a dict (a transformers config with ``model_type``).
        unit_categories: categories decided per unit; token_categories: categories tagged per token.
        hidden: width of the unit head (and of the token head's hidden layer).
        context_layers: bidirectional GRU layers over the units of a document (0: each unit alone).
        dropout: dropout in both heads.
        segmenter: how a document is cut into units (a name in hf_tune.data.clauses.SEGMENTERS).
        unit_max_tokens: tokens of a unit the encoder reads (longer units are truncated for their embedding).
        token_tokens: how many opening tokens of a document the token head tags.
        thresholds: per unit category, the probability above which a unit is inside a clause (tuned on the
            validation split after training).
        merge_gap: fragments of one unit category at most this many units apart are one span (tuned on val).
        min_chars: per unit category, spans shorter than this are dropped (from the training spans' lengths).
        begin_margin: a B probability must clear the threshold by this much to split a run of units (tuned on val).
        token_crf: decode the token head with a linear-chain CRF (valid BIO paths) instead of per-token argmax.
        token_scheme: ``bio`` (one tag sequence over all token categories; overlapping spans keep the first) or
            ``per_category`` (an O/B/I sequence per category, overlaps kept).
        token_casing: append :func:`casing_features` to the token states (for uncased encoders).
        unit_pos_weight, token_pos_weight: weight of positive targets in the two losses (clauses are rare).
        unit_ngrams: hash buckets of a bag of each unit's word unigrams and bigrams, embedded (mean) and added to
            the unit head's input projection (see hf_tune.data.clauses.unit_ngrams); 0: off.
        token_bias: per token category, an offset added to its B- and I- logits before decoding (tuned on the
            validation split): a head trained on text where names are rare under-predicts them, and the
            CRF path has no threshold to lower.
        token_copies: (source, target) token categories: every predicted source span is also a target span. With
            one BIO sequence two categories cannot tag the same words, and on CUAD half of the Effective Dates
            are the Agreement Date span (kept only when the validation split says it pays).
        encoder_dtype: precision of the frozen encoder's forward pass (:func:`encoder_compute_dtype`):
            ``float32``, ``bfloat16`` (autocast) or ``auto`` (bfloat16 where the device has native bfloat16
            matmuls, else float32). Read whenever the encoder runs (feature caching, evaluate, predict).
    """

    model_type = "hf_tune_clause_extractor"

    def __init__(
        self,
        encoder: dict[str, Any] | None = None,
        unit_categories: list[str] | None = None,
        token_categories: list[str] | None = None,
        hidden: int = 192,
        context_layers: int = 2,
        dropout: float = 0.2,
        segmenter: str | None = None,
        unit_max_tokens: int = 128,
        token_tokens: int = 1020,
        thresholds: dict[str, float | None] | None = None,
        unit_pos_weight: float = 20.0,
        token_pos_weight: float = 2.0,
        merge_gap: int = 0,
        min_chars: dict[str, int] | None = None,
        begin_margin: float = 0.0,
        token_crf: bool = False,
        token_scheme: str = "bio",
        token_casing: bool = False,
        unit_ngrams: int = 0,
        token_bias: dict[str, float] | None = None,
        token_copies: list[list[str]] | None = None,
        encoder_dtype: str = "float32",
        **kwargs: Any,
    ) -> None:
        self.encoder = encoder or {}
        self.unit_categories = list(unit_categories or [])
        self.token_categories = list(token_categories or [])
        self.hidden = hidden
        self.context_layers = context_layers
        self.dropout = dropout
        # models saved before segmenters had names stored the sentence pattern as unit_pattern
        legacy = kwargs.pop("unit_pattern", None)
        self.segmenter = segmenter or ("sentences" if legacy else "fine")
        self.unit_max_tokens = unit_max_tokens
        self.token_tokens = token_tokens
        self.thresholds = dict(thresholds or {})
        self.unit_pos_weight = unit_pos_weight
        self.token_pos_weight = token_pos_weight
        self.merge_gap = merge_gap
        self.begin_margin = begin_margin
        self.min_chars = dict(min_chars or {})
        self.token_crf = token_crf
        self.token_scheme = token_scheme
        self.token_casing = token_casing
        self.unit_ngrams = unit_ngrams
        self.token_bias = dict(token_bias or {})
        self.token_copies = [list(pair) for pair in token_copies or []]
        self.encoder_dtype = encoder_dtype
        super().__init__(**kwargs)

    @property
    def token_labels(self) -> list[str]:
        """The tags of one token sequence (``bio``: O and B-/I- of every token category)."""
        return bio_labels(self.token_categories)

    @property
    def per_category(self) -> bool:
        return self.token_scheme == "per_category"

    def category_labels(self, category: str) -> list[str]:
        """The O/B/I tags of one category's own sequence (``per_category``)."""
        return bio_labels([category])

    @property
    def token_outputs_width(self) -> int:
        """Logits per token: one per BIO tag, or three (O, B, I) per category."""
        return 3 * len(self.token_categories) if self.per_category else len(self.token_labels)


CASING_FEATURES = 4


def casing_features(text: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """(T, 4) per token: starts with an upper-case letter, is all upper case (two letters or more), holds a
    digit, follows an opening quote or parenthesis. An uncased encoder (MiniLM, bert-base-uncased) lowercases
    its input, so "ACME Corp." and "the company" look alike to it; party names and defined terms do not."""
    out = np.zeros((len(offsets), CASING_FEATURES), dtype=np.float32)
    for i, (a, b) in enumerate(offsets):
        piece = text[a:b]
        letters = [ch for ch in piece if ch.isalpha()]
        out[i, 0] = bool(letters) and letters[0].isupper()
        out[i, 1] = len(letters) >= 2 and all(ch.isupper() for ch in letters)
        out[i, 2] = any(ch.isdigit() for ch in piece)
        before = text[max(0, a - 2) : a]
        out[i, 3] = any(ch in "\"(“'" for ch in before)
    return out


@dataclass
class ClauseOutput(ModelOutput):
    loss: torch.Tensor | None = None
    unit_logits: torch.Tensor | None = None
    token_logits: torch.Tensor | None = None


class ContextHead(nn.Module):
    """Projection, a residual bidirectional GRU over the sequence (units of a document, or tokens), logits."""

    def __init__(self, in_features: int, hidden: int, layers: int, dropout: float, outputs: int) -> None:
        super().__init__()
        self.inp = nn.Sequential(
            nn.LayerNorm(in_features), nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout)
        )
        self.context = (
            nn.GRU(
                hidden,
                hidden // 2,
                num_layers=layers,
                batch_first=True,
                bidirectional=True,
                dropout=dropout * (layers > 1),
            )
            if layers
            else None
        )
        self.out = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        h = self.inp(x)
        if extra is not None:  # another view of the same items (the units' word bags), in the hidden space
            h = h + extra
        if self.context is not None:
            h = h + self.context(h)[0]  # residual: a unit's own evidence stays first-class
        return self.out(h)


ENCODER_DTYPES = ("float32", "bfloat16", "auto")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: CUDA devices that say so, and CPUs with
    AVX512-BF16 or AMX (elsewhere bfloat16 is emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def encoder_compute_dtype(setting: str, device: torch.device) -> torch.dtype:
    """The precision the frozen encoder runs in for ``setting`` (one of ENCODER_DTYPES) on ``device``.

    Why bfloat16: the encoder pass is more than half of the clause recipe's CPU budget, and on a CPU with
    AVX512-BF16 it ran 1.73x faster under bfloat16 autocast, with unit features at cosine 0.9999 to the
    float32 ones (docs/benchmarks.md); the heads train on the float16-rounded cache either way."""
    if setting not in ENCODER_DTYPES:
        raise ValueError(f"encoder_dtype must be one of {ENCODER_DTYPES}, got {setting!r}")
    if setting == "bfloat16" or (setting == "auto" and native_bf16(device)):
        return torch.bfloat16
    return torch.float32


class ClauseExtractorModel(PreTrainedModel):
    config_class = ClauseExtractorConfig
    base_model_prefix = "encoder"
    main_input_name = "unit_features"
    supports_gradient_checkpointing = False

    def __init__(self, config: ClauseExtractorConfig) -> None:
        super().__init__(config)
        enc_cfg = AutoConfig.for_model(**config.encoder)
        self.encoder = AutoModel.from_config(enc_cfg)
        width = enc_cfg.hidden_size
        self.unit_head = ContextHead(
            width + 1, config.hidden, config.context_layers, config.dropout, 2 * max(1, len(config.unit_categories))
        )
        # one GRU layer over the token states keeps a name's tags together (an MLP per token fragments them)
        tok_in = width + (CASING_FEATURES if config.token_casing else 0)
        self.token_head = ContextHead(tok_in, config.hidden, 1, config.dropout, config.token_outputs_width)
        self.unit_lexicon = (
            nn.EmbeddingBag(config.unit_ngrams, config.hidden, mode="mean", padding_idx=0)
            if config.unit_ngrams
            else None
        )
        self.lexicon_dropout = nn.Dropout(config.dropout)
        crf = config.token_crf and bool(config.token_categories)
        self.crf = CRF(config.token_labels) if crf and not config.per_category else None
        self.category_crfs = (
            nn.ModuleList([CRF(config.category_labels(c)) for c in config.token_categories])
            if crf and config.per_category
            else None
        )
        self.post_init()

    @classmethod
    def from_encoder(cls, encoder: nn.Module, **config_kwargs: Any) -> ClauseExtractorModel:
        """A new model around a pretrained ``encoder`` (copied in, frozen); the heads start fresh."""
        model = cls(ClauseExtractorConfig(encoder=encoder.config.to_dict(), **config_kwargs))
        model.encoder.load_state_dict(encoder.state_dict())
        model.encoder.requires_grad_(False)
        return model

    def _init_weights(self, module: nn.Module) -> None:
        # Only the heads are new; the encoder's weights are overwritten by from_encoder / from_pretrained.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.EmbeddingBag):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    # ---------------------------------------------------------------- training on cached features
    def forward(
        self,
        unit_features: torch.Tensor | None = None,
        unit_mask: torch.Tensor | None = None,
        unit_labels: torch.Tensor | None = None,
        unit_ngrams: torch.Tensor | None = None,
        token_features: torch.Tensor | None = None,
        token_labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> ClauseOutput:
        """Heads on cached encoder outputs. Unit inputs: (B, U, H+1) features, (B, U) mask, (B, U, 2C) targets,
        (B, U, L) hashed word n-gram ids when ``config.unit_ngrams`` (0-padded); token inputs: (B, T, H) states and
        (B, T) BIO ids (-100 where not trained)."""
        unit_logits = token_logits = None
        losses = []
        if unit_features is not None and unit_features.shape[0]:
            unit_logits = self.unit_head(unit_features, self._lexical(unit_ngrams))
            if unit_labels is not None:
                pw = torch.full((unit_logits.shape[-1],), self.config.unit_pos_weight, device=unit_logits.device)
                per = nn.functional.binary_cross_entropy_with_logits(
                    unit_logits.float(), unit_labels.float(), pos_weight=pw, reduction="none"
                ).mean(-1)
                mask = unit_mask.float() if unit_mask is not None else torch.ones_like(per)
                losses.append((per * mask).sum() / mask.sum().clamp_min(1.0))
        if token_features is not None and token_features.shape[0]:
            token_logits = self.token_head(token_features)
            if token_labels is not None and self.config.per_category and (token_labels != IGNORE).any():
                losses.append(self._per_category_loss(token_logits, token_labels))
            elif token_labels is not None and (token_labels != IGNORE).any() and self.crf is not None:
                keep = token_labels != IGNORE  # labelled first subwords: the CRF runs over words
                emissions, mask = compact(token_logits, keep)
                losses.append(self.crf.nll(emissions, compact(token_labels, keep)[0], mask))
            elif token_labels is not None and (token_labels != IGNORE).any():
                k = token_logits.shape[-1]
                weight = torch.full((k,), self.config.token_pos_weight, device=token_logits.device)
                weight[0] = 1.0  # "O"
                losses.append(
                    nn.functional.cross_entropy(
                        token_logits.reshape(-1, k).float(),
                        token_labels.reshape(-1),
                        weight=weight,
                        ignore_index=IGNORE,
                    )
                )
        loss = torch.stack(losses).sum() if losses else None
        return ClauseOutput(loss=loss, unit_logits=unit_logits, token_logits=token_logits)

    def _lexical(self, ngrams: torch.Tensor | None) -> torch.Tensor | None:
        """(B, U, hidden) mean embedding of each unit's word n-grams, or None when the model has no lexicon."""
        if self.unit_lexicon is None:
            return None
        if ngrams is None:
            raise ValueError("this model reads unit word n-grams (config.unit_ngrams): pass unit_ngrams")
        flat = ngrams.reshape(-1, ngrams.shape[-1]).to(self.unit_lexicon.weight.device)
        bags = self.unit_lexicon(flat).view(*ngrams.shape[:2], self.unit_lexicon.embedding_dim)
        return self.lexicon_dropout(bags)

    def _per_category_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over the token categories of each one's loss on its own O/B/I sequence: (B, T, 3C) logits,
        (B, T, C) tag ids (-100 where a token is not labelled). The mean keeps the loss on the scale of one tag
        sequence, so the token head does not outweigh the unit head in the clipped gradient."""
        b, t, _ = logits.shape
        per = logits.view(b, t, -1, 3)
        keep = labels[..., 0] != IGNORE
        parts = []
        for c in range(per.shape[2]):
            if self.category_crfs is not None:
                emissions, mask = compact(per[:, :, c], keep)
                parts.append(self.category_crfs[c].nll(emissions, compact(labels[..., c], keep)[0], mask))
            else:
                weight = torch.tensor(
                    [1.0, self.config.token_pos_weight, self.config.token_pos_weight], device=per.device
                )
                parts.append(
                    nn.functional.cross_entropy(
                        per[:, :, c].reshape(-1, 3).float(),
                        labels[..., c].reshape(-1),
                        weight=weight,
                        ignore_index=IGNORE,
                    )
                )
        return torch.stack(parts).mean()

    # ---------------------------------------------------------------- encoder features
    @property
    def encoder_dtype(self) -> torch.dtype:
        """The precision the encoder runs in here (``config.encoder_dtype`` resolved on this device)."""
        return encoder_compute_dtype(self.config.encoder_dtype, self.device)

    def _encode(self, **inputs: torch.Tensor) -> torch.Tensor:
        """The encoder's last hidden states in float32, computed in :attr:`encoder_dtype` (autocast)."""
        dtype = self.encoder_dtype
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
            return self.encoder(**inputs).last_hidden_state.float()

    def unit_features(self, tokenizer, text: str, token_budget: int = 2048) -> tuple[list[tuple[int, int]], np.ndarray]:
        """The document's units and their features (see ``unit_features_many``)."""
        return self.unit_features_many(tokenizer, [text], token_budget)[0]

    @torch.no_grad()
    def unit_features_many(
        self, tokenizer, texts: list[str], token_budget: int = 2048
    ) -> list[tuple[list[tuple[int, int]], np.ndarray]]:
        """Per document its units and their features: mean-pooled encoder states (each unit read alone, up to
        ``unit_max_tokens`` tokens) plus the unit's relative position in its document.

        Every unit is tokenised once, the units of all ``texts`` are pooled, sorted by token count and read in
        batches of at most ``token_budget`` padded tokens (``token_budget_batches``), so a document's few long
        or few short units share batches with others' of the same length. Sorting one document's units by
        characters in fixed batches of 64 padded 1.8x on CUAD; pooling several documents is what brings the
        padding down (docs/benchmarks.md, ``bench/speed.py --rows clause_features``). Larger budgets were slower
        on CPU."""
        segment = SEGMENTERS.get(self.config.segmenter)
        per_doc = [segment(text) for text in texts]
        pieces = [text[a:b] for text, units in zip(texts, per_doc, strict=True) for a, b in units]
        width = self.encoder.config.hidden_size
        pooled = np.zeros((len(pieces), width), dtype=np.float32)
        if pieces:
            ids = tokenizer(pieces, truncation=True, max_length=self.config.unit_max_tokens, verbose=False)
            ids = ids["input_ids"]
            self.encoder.eval()
            for idx in token_budget_batches([len(x) for x in ids], token_budget):
                batch = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt").to(self.device)
                h = self._encode(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
                pooled[idx] = ((h * m).sum(1) / m.sum(1).clamp_min(1.0)).cpu().numpy()
        out, start = [], 0
        for units in per_doc:
            feats = np.zeros((len(units), width + 1), dtype=np.float32)
            feats[:, :width] = pooled[start : start + len(units)]
            feats[:, width] = np.arange(len(units)) / max(1, len(units) - 1)
            out.append((units, feats))
            start += len(units)
        return out

    @torch.no_grad()
    def token_features(self, tokenizer, text: str) -> tuple[list[tuple[int, int]], list[bool], np.ndarray]:
        """Offsets, first-subword flags and encoder states of the document's first ``token_tokens`` tokens
        (read in windows of the encoder's length)."""
        head = text[: 12 * self.config.token_tokens]  # enough characters for the tokens wanted
        enc = tokenizer(head, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
        n = min(len(enc["input_ids"]), self.config.token_tokens)
        ids, offsets = enc["input_ids"][:n], [tuple(o) for o in enc["offset_mapping"][:n]]
        first = first_subword_mask(enc.word_ids()[:n])
        body = min(self.encoder.config.max_position_embeddings, 512) - 2
        states = []
        self.encoder.eval()
        for s in range(0, n, body):
            x = torch.tensor([[tokenizer.cls_token_id, *ids[s : s + body], tokenizer.sep_token_id]], device=self.device)
            states.append(self._encode(input_ids=x)[0, 1:-1].cpu().numpy())
        h = np.concatenate(states) if states else np.zeros((0, self.encoder.config.hidden_size), np.float32)
        return offsets, first, h

    # ---------------------------------------------------------------- decoding
    def unit_ngram_ids(self, text: str, units: list[tuple[int, int]]) -> np.ndarray | None:
        """The units' hashed word n-grams when the model reads them (``config.unit_ngrams``), else None."""
        return unit_ngrams(text, units, self.config.unit_ngrams) if self.config.unit_ngrams else None

    @torch.no_grad()
    def unit_probs(self, feats: np.ndarray, ngrams: np.ndarray | None = None) -> np.ndarray:
        self.eval()
        if not len(feats):  # a document without units (empty or blank text): nothing to decide, and a GRU refuses it
            return np.zeros((0, self.unit_head.out.out_features), dtype=np.float32)
        x = torch.as_tensor(feats, dtype=torch.float32, device=self.device)[None]
        lex = None if ngrams is None else torch.as_tensor(ngrams, dtype=torch.long, device=self.device)[None]
        return torch.sigmoid(self.unit_head(x, self._lexical(lex)))[0].float().cpu().numpy()

    def token_inputs(self, text: str, offsets: list[tuple[int, int]], states: np.ndarray) -> np.ndarray:
        """What the token head reads: the encoder's token states, with casing features when configured."""
        if not self.config.token_casing:
            return states
        return np.concatenate([states, casing_features(text, offsets[: len(states)])], axis=1)

    @torch.no_grad()
    def token_outputs(self, inputs: np.ndarray, first: list[bool]) -> np.ndarray:
        """Per token the tag id and its probability: (T, 2) for one BIO sequence, (T, C, 2) per category (O/B/I
        ids). With a CRF, the best valid path over the document's first subwords, each tag with its softmax
        probability; continuation subwords inherit their word's later. ``config.token_bias`` applies."""
        return self.tags_from_logits(self.token_logits(inputs), first)

    @torch.no_grad()
    def token_logits(self, inputs: np.ndarray) -> torch.Tensor:
        """(T, token_outputs_width) raw logits of the token head (no bias): what decoding options are tuned on."""
        self.eval()
        if not len(inputs) or not self.config.token_categories:
            return torch.zeros(len(inputs), self.config.token_outputs_width)
        return self.token_head(torch.as_tensor(inputs, dtype=torch.float32, device=self.device)[None])[0]

    @torch.no_grad()
    def tags_from_logits(
        self, logits: torch.Tensor, first: list[bool], bias: dict[str, float] | None = None
    ) -> np.ndarray:
        """:meth:`token_outputs` from the head's logits, with ``bias`` (default ``config.token_bias``) added to
        each token category's B- and I- logits first."""
        c = len(self.config.token_categories)
        shape = (len(logits), c, 2) if self.config.per_category else (len(logits), 2)
        if not len(logits) or not c:
            return np.zeros(shape, np.float32)
        logits = logits + self.bias_vector(self.config.token_bias if bias is None else bias).to(logits.device)
        if not self.config.per_category:
            return self._best_tags(logits, first, self.crf)
        per = logits.view(len(logits), c, 3)
        crfs = self.category_crfs or [None] * c
        return np.stack([self._best_tags(per[:, k], first, crfs[k]) for k in range(c)], axis=1)

    def bias_vector(self, bias: dict[str, float]) -> torch.Tensor:
        """(token_outputs_width,) the per-category offsets of ``bias`` at their B- and I- logits (0 at O)."""
        c = self.config
        names = [n for cat in c.token_categories for n in c.category_labels(cat)] if c.per_category else c.token_labels
        return torch.tensor([0.0 if n == "O" else bias.get(n[2:], 0.0) for n in names])

    @staticmethod
    def _best_tags(logits: torch.Tensor, first: list[bool], crf: CRF | None) -> np.ndarray:
        probs = logits.float().softmax(-1)
        score, idx = probs.max(-1)
        if crf is not None and any(first):
            words = torch.as_tensor(first, dtype=torch.bool, device=logits.device)
            path = torch.as_tensor(crf.decode(logits[words][None], words[words][None])[0], dtype=torch.long)
            idx = torch.zeros_like(idx)
            idx[words] = path.to(idx.device)
            score = probs.gather(-1, idx[:, None])[:, 0]
        out = torch.stack([idx.float(), score], -1).cpu().numpy()
        out[:, 1] = inherit_first_score(out[:, 1], first)  # continuation subwords: their word's score
        return out

    def decode(
        self,
        units: list[tuple[int, int]],
        unit_probs: np.ndarray,
        offsets: list[tuple[int, int]],
        first: list[bool],
        token_out: np.ndarray,
        threshold: float | None = None,
    ) -> list[tuple[Span, float]]:
        """Both heads' outputs -> (span, score) for the document; ``threshold`` overrides the tuned ones (a low
        value lists candidates for precision-recall curves)."""
        c = self.config
        # a tuned threshold of None: the category is off (its predictions cost more micro F1 than they add)
        on = [
            i
            for i, cat in enumerate(c.unit_categories)
            if threshold is not None or c.thresholds.get(cat, 0.5) is not None
        ]
        cats = [c.unit_categories[i] for i in on]
        t = [threshold if threshold is not None else c.thresholds.get(cat, 0.5) for cat in cats]
        shortest = [c.min_chars.get(cat, 0) for cat in cats]
        spans = []
        if cats and len(units):
            cols = [j for i in on for j in (2 * i, 2 * i + 1)]
            spans = decode_units(unit_probs[:, cols], units, cats, t, c.merge_gap, shortest, c.begin_margin)
        if self.config.token_categories and len(offsets):
            offsets = offsets[: len(token_out)]
            sequences = (
                [(c.category_labels(cat), token_out[:, k]) for k, cat in enumerate(c.token_categories)]
                if c.per_category
                else [(c.token_labels, token_out)]
            )
            found = []
            for names, out in sequences:
                tags = inherit_first_subword([names[int(i)] for i in out[:, 0]], first)
                found += decode_bio(tags, offsets, out[:, 1])
            spans += found + copied_spans(found, c.token_copies)
        return sorted(spans, key=lambda x: (x[0].start, x[0].end, x[0].category))

    def extract(self, tokenizer, text: str, threshold: float | None = None) -> list[tuple[Span, float]]:
        """Clauses of one raw document, as (span, confidence)."""
        units, feats = self.unit_features(tokenizer, text)
        offsets, first, states = self.token_features(tokenizer, text)
        token_out = self.token_outputs(self.token_inputs(text, offsets, states), first)
        probs = self.unit_probs(feats, self.unit_ngram_ids(text, units))
        return self.decode(units, probs, offsets, first, token_out, threshold)


def copied_spans(spans: list[tuple[Span, float]], copies: list[list[str]]) -> list[tuple[Span, float]]:
    """For each (source, target) pair, every ``source`` span again as a ``target`` span with the same score;
    a target span already predicted at the same place is not repeated."""
    have = {s for s, _ in spans}
    out = []
    for source, target in copies:
        for span, score in spans:
            twin = Span(span.start, span.end, target)
            if span.category == source and twin not in have:
                have.add(twin)
                out.append((twin, score))
    return out


AutoConfig.register(ClauseExtractorConfig.model_type, ClauseExtractorConfig)
AutoModel.register(ClauseExtractorConfig, ClauseExtractorModel)
