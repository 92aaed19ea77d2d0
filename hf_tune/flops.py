"""How much arithmetic a run did and how close it came to the machine's limit (the benchmarks' utilisation).

The count follows the usual transformer rule (Kaplan et al. 2020, table 1): a forward pass costs 2 FLOPs per
non-embedding parameter per token (one multiply-add per weight) plus the attention scores and their weighted
sum, ``2 * L * d_model`` FLOPs each per layer for a token of a length-``L`` sequence (bidirectional: every
token attends to all ``L``); the backward pass costs twice the forward, so training is 3x the forward (the
"6 x parameters" rule). Embedding tables are
looked up, not multiplied, so they are left out. Only real tokens count: padding is work the machine did
but the task did not need, which is exactly what utilisation should expose.

The reference is measured, not quoted, on CPUs (a square float32 matmul, the best case of the machine's
BLAS); GPUs are measured against their bf16 datasheet peak (model FLOPs utilisation, MFU), as is usual.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch

FORWARD_FLOPS_PER_PARAM = 2
"""One multiply-add per weight and token."""
TRAIN_FORWARD_MULTIPLE = 3
"""Backward = 2 x forward (gradients for the activations and for the weights)."""

GPU_BF16_PEAK = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12}
"""Dense bf16 tensor-core peaks from the datasheets (FLOP/s), matched against the device name in this order."""


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters that take part in per-token matmuls: all except the weights of ``nn.Embedding`` tables
    (word, position, token type). Shared tensors count once."""
    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen and id(p) not in embedding:
            seen.add(id(p))
            total += p.numel()
    return total


def transformer_flops(
    n_params: int, lengths: Iterable[int], *, n_layers: int = 0, d_model: int = 0, training: bool = False
) -> float:
    """FLOPs of passing sequences of ``lengths`` real tokens through a transformer encoder.

    ``n_params``: non-embedding parameters; ``n_layers``/``d_model``: add the attention term (0: leave it out).
    Per sequence of length L the forward costs ``2 * n_params * L + 4 * n_layers * d_model * L**2``.
    """
    tokens = squares = 0
    for length in lengths:
        tokens += length
        squares += length * length
    forward = FORWARD_FLOPS_PER_PARAM * (n_params * tokens + 2 * n_layers * d_model * squares)
    return float(forward * (TRAIN_FORWARD_MULTIPLE if training else 1))


def encoder_flops(model: torch.nn.Module, lengths: Iterable[int], *, training: bool = False) -> float:
    """:func:`transformer_flops` for a transformers encoder, its sizes read from ``model.config``."""
    cfg = model.config
    return transformer_flops(
        non_embedding_parameters(model),
        lengths,
        n_layers=int(getattr(cfg, "num_hidden_layers", 0)),
        d_model=int(getattr(cfg, "hidden_size", 0)),
        training=training,
    )


def conv_linear_forward_flops(model: torch.nn.Module, *inputs: torch.Tensor) -> float:
    """Forward FLOPs of the Conv2d and Linear layers of ``model`` on ``inputs`` (one forward with hooks;
    2 FLOPs per multiply-add). What a CNN such as a ResNet costs per image; norms and activations are
    elementwise and left out, as in the transformer count."""
    total = 0.0

    def conv(m: torch.nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += 2.0 * out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear(m: torch.nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += 2.0 * out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return total


def measure_matmul_peak(
    n: int = 2048, *, repeats: int = 5, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> float:
    """Best FLOP/s of an ``n x n`` matmul over ``repeats`` timed runs (after one warm-up): the practical
    ceiling of this machine's BLAS for large dense products at the current thread setting."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def gpu_bf16_peak(name: str) -> float | None:
    """The datasheet dense bf16 peak of a GPU by its name (``torch.cuda.get_device_name()``), None if unknown."""
    for key, peak in GPU_BF16_PEAK.items():
        if key.lower() in name.lower():
            return peak
    return None


def utilisation(flops: float, seconds: float, peak_flops: float | None) -> dict[str, float | None]:
    """Achieved GFLOP/s and its share of ``peak_flops`` (None when there is no reference)."""
    achieved = flops / seconds if seconds > 0 else 0.0
    return {
        "achieved_gflops": round(achieved / 1e9, 2),
        "peak_gflops": None if peak_flops is None else round(peak_flops / 1e9, 2),
        "utilisation": None if not peak_flops else round(achieved / peak_flops, 4),
    }
