"""Blocks of token ids for masked-LM adaptation, and the masking collator.

Two layouts: ``blocks`` concatenates every document (a [SEP] between documents) and cuts the stream into
fixed-length blocks, so no token is padding and long contracts are read whole; ``lines`` makes one example
per non-empty line (truncated), for corpora of short independent texts. Masking is transformers'
``DataCollatorForLanguageModeling`` (whole-word masking from offsets); the evaluation blocks are masked once
with a fixed seed so that "perplexity before" and "after" score exactly the same masked tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

IGNORE = -100
PAD_VALUES = {"input_ids": None, "attention_mask": 0, "special_tokens_mask": 1, "labels": IGNORE}


def pack_blocks(
    token_ids: Sequence[Sequence[int]],
    offsets: Sequence[Sequence[tuple[int, int]]] | None,
    block_size: int,
    cls_id: int,
    sep_id: int,
) -> list[dict[str, list]]:
    """Documents' token ids (no special tokens) as ``[CLS] ... [SEP]`` blocks of exactly ``block_size``.

    Documents are joined with a [SEP] (a special token, never masked, and a word boundary for whole-word
    masking); the tail shorter than a block is dropped unless it is the only block. ``offsets`` (per token,
    for whole-word masking) travel with the ids; special tokens get (0, 0).
    """
    if block_size < 8:
        raise ValueError(f"block_size must be at least 8, got {block_size}")
    ids: list[int] = []
    offs: list[tuple[int, int]] = []
    special: list[int] = []
    for i, doc in enumerate(token_ids):
        if i:
            ids.append(sep_id)
            offs.append((0, 0))
            special.append(1)
        ids.extend(doc)
        special.extend([0] * len(doc))
        if offsets is not None:
            offs.extend(tuple(o) for o in offsets[i])
    body = block_size - 2
    n_full = len(ids) // body
    starts = range(0, max(n_full, 1 if ids else 0) * body, body)
    out = []
    for s in starts:
        chunk = ids[s : s + body]
        block = {
            "input_ids": [cls_id, *chunk, sep_id],
            "attention_mask": [1] * (len(chunk) + 2),
            "special_tokens_mask": [1, *special[s : s + body], 1],
        }
        if offsets is not None:
            block["offset_mapping"] = [(0, 0), *offs[s : s + body], (0, 0)]
        out.append(block)
    return out


def line_examples(
    token_ids: Sequence[Sequence[int]],
    offsets: Sequence[Sequence[tuple[int, int]]] | None,
    block_size: int,
    cls_id: int,
    sep_id: int,
) -> list[dict[str, list]]:
    """One ``[CLS] line [SEP]`` example per (already split) line, truncated to ``block_size``."""
    out = []
    for i, ids in enumerate(token_ids):
        if not ids:
            continue
        ids = list(ids[: block_size - 2])
        ex = {
            "input_ids": [cls_id, *ids, sep_id],
            "attention_mask": [1] * (len(ids) + 2),
            "special_tokens_mask": [1, *([0] * len(ids)), 1],
        }
        if offsets is not None:
            ex["offset_mapping"] = [(0, 0), *(tuple(o) for o in offsets[i][: block_size - 2]), (0, 0)]
        out.append(ex)
    return out


def pad_features(features: Sequence[dict[str, Any]], pad_id: int) -> list[dict[str, Any]]:
    """Right-pad every field to the longest example (ids with ``pad_id``, masks with 0, special tokens with 1,
    labels with -100, offsets with (0, 0)): transformers' ``tokenizer.pad`` does not pad offsets."""
    length = max(len(f["input_ids"]) for f in features)
    out = []
    for f in features:
        n = length - len(f["input_ids"])
        row = {}
        for key, value in f.items():
            value = list(value)
            if key == "offset_mapping":
                row[key] = [tuple(v) for v in value] + [(0, 0)] * n
            else:
                fill = PAD_VALUES.get(key, 0)
                row[key] = value + [pad_id if fill is None else fill] * n
        out.append(row)
    return out


@dataclass
class MaskingCollator:
    """Pads a batch; masks it afresh (``mlm_probability``, 80/10/10 or whole words) unless its examples
    already carry labels (the evaluation blocks, masked once with a fixed seed)."""

    tokenizer: Any
    mlm_probability: float = 0.15
    whole_word_mask: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        from transformers import DataCollatorForLanguageModeling

        # whole words are always replaced by [MASK] (transformers forces it; said here to avoid its warning)
        replace = {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if self.whole_word_mask else {}
        self.masker = DataCollatorForLanguageModeling(
            self.tokenizer,
            mlm_probability=self.mlm_probability,
            whole_word_mask=self.whole_word_mask,
            seed=self.seed,
            **replace,
        )

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = pad_features(features, self.tokenizer.pad_token_id)
        if "labels" in rows[0]:
            keys = ("input_ids", "attention_mask", "labels")
            return {k: torch.tensor([r[k] for r in rows], dtype=torch.long) for k in keys}
        if not self.whole_word_mask:
            rows = [{k: v for k, v in r.items() if k != "offset_mapping"} for r in rows]
        return dict(self.masker(rows))


def mask_once(examples: Sequence[dict[str, Any]], collator: MaskingCollator, batch_size: int = 64) -> list[dict]:
    """The examples masked by ``collator`` (seeded), padding stripped again: a fixed evaluation set."""
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collator([{k: v for k, v in e.items() if k != "labels"} for e in chunk])
        for i, e in enumerate(chunk):
            n = len(e["input_ids"])
            out.append(
                {
                    "input_ids": batch["input_ids"][i, :n].tolist(),
                    "attention_mask": [1] * n,
                    "labels": batch["labels"][i, :n].tolist(),
                }
            )
    return out


def subset_indices(n: int, k: int | None, seed: int) -> list[int]:
    """A seeded subset of ``k`` of ``n`` positions, in order (all when ``k`` is None or >= n)."""
    if k is None or k >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).permutation(n)[:k].tolist())
