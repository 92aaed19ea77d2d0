"""Machine settings for throughput (the ``speed:`` section): CPU threads, padding granularity and int8 inference.

PyTorch's intra-op pool defaults to the machine's cores whatever else runs: two CPU DDP processes on a 2-core
machine then run 4 threads on 2 cores and lose time to contention, and a container limited by a CPU quota
sees every host core. hf_tune gives each process its share of the physical cores it may use. The numbers
behind the defaults are in docs/techniques.md ("Speed").
"""

from __future__ import annotations

import os
from pathlib import Path

from hf_tune.techniques import log

GPU_PAD_MULTIPLE = 8
"""Tensor cores work on tiles of 8 (fp16/bf16): padding a batch to a multiple of 8 keeps matmuls on them."""


def cgroup_cpu_limit(cpu_max: str | None) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line (``"200000 100000"`` -> 2.0; ``"max ..."``: no limit)."""
    if not cpu_max:
        return None
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        return float(parts[0]) / float(parts[1])
    except (ValueError, ZeroDivisionError):
        return None


def intra_op_threads(
    *, allowed_logical: int, logical: int, physical: int, local_processes: int, quota: float | None = None
) -> int:
    """Threads for one process: the physical cores among the logical CPUs it may run on (its affinity, capped
    by a cgroup CPU quota), shared among the processes of this machine; at least 1."""
    per_core = max(1, round(logical / max(physical, 1)))  # hyper-threads per physical core
    cores = allowed_logical / per_core
    if quota is not None:
        cores = min(cores, quota)
    return max(1, int(cores) // max(local_processes, 1))


def _machine() -> dict[str, int | float | None]:
    import psutil

    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpu_max = Path("/sys/fs/cgroup/cpu.max")
    return {
        "allowed_logical": allowed,
        "logical": psutil.cpu_count(logical=True) or allowed,
        "physical": psutil.cpu_count(logical=False) or psutil.cpu_count(logical=True) or allowed,
        "local_processes": int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        "quota": cgroup_cpu_limit(cpu_max.read_text() if cpu_max.is_file() else None),
    }


def apply_cpu_threads(requested: int | None) -> int:
    """Set torch's intra-op threads to ``requested`` or, when None, to this process's share of the physical
    cores (:func:`intra_op_threads`); returns the number set. Only for work that runs on the CPU."""
    import torch

    machine = _machine()
    threads = requested or intra_op_threads(**machine)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        log(
            f"cpu: {threads} intra-op thread(s) ({machine['physical']} physical cores, "
            f"{machine['allowed_logical']} CPUs allowed, {machine['local_processes']} process(es) here)"
        )
    return threads


def pad_multiple(requested: int | None, *, cuda: bool) -> int | None:
    """Pad text batches to a multiple of ``requested``; None: :data:`GPU_PAD_MULTIPLE` on a GPU, no rounding on
    a CPU (where every padded position is paid for and no tile size is gained)."""
    if requested is not None:
        return requested if requested > 1 else None
    return GPU_PAD_MULTIPLE if cuda else None


def int8_linear(model):
    """``model`` with every ``nn.Linear`` replaced by a dynamically quantized int8 one (CPU inference only):
    weights quantized once per output channel, activations per batch at run time, so no calibration data is
    needed and the saved float weights stay untouched. Embeddings, norms, convolutions and recurrent layers stay
    float. torch marks ``torch.ao.quantization`` for migration to torchao, whose int8 path is slower than float
    on a CPU without ``torch.compile`` (measured: 3x slower on MiniLM), so this keeps the fbgemm/oneDNN kernels
    and silences the deprecation notice; it raises a clear error if a later torch removes them."""
    import warnings

    import torch

    from hf_tune.errors import ConfigError

    quantization = getattr(torch.ao, "quantization", None)
    if quantization is None or not hasattr(quantization, "quantize_dynamic"):
        raise ConfigError(
            [
                f"speed.int8_inference: this torch ({torch.__version__}) has no "
                "torch.ao.quantization.quantize_dynamic; drop speed.int8_inference"
            ]
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # quantize_dynamic quantizes an evaluation-mode copy: the caller's model is left as it was
        return quantization.quantize_dynamic(
            model, {torch.nn.Linear: quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8
        )
