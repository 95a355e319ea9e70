"""Hardware-efficiency metrics of the update: model FLOPs utilisation and peak memory.

``perf/mfu`` = 6 x N_params x tokens / update seconds / peak FLOP/s, where tokens are the attended
(non-padding) prompt + response tokens the update trained on, counted once per epoch, N_params counts
every parameter of the policy module once (tied embeddings once) and 6 is 2 for the forward plus 4 for
the backward matmuls. Attention's own FLOPs, padding and recomputation by gradient checkpointing are
not counted, as in the usual MFU convention (PaLM, arXiv 2204.02311). The peak is ``train.peak_tflops``
or, on CUDA, the dense bf16 tensor-core peak of a known GPU; on CPU MFU is logged only with
``train.peak_tflops``.

``perf/max_memory_allocated_gb``: on CUDA ``torch.cuda.max_memory_allocated`` (tensors only, peak
since the process started) in GiB (2^30 bytes); on CPU the process's peak resident set size from
``resource.getrusage`` (everything the process holds, not only tensors), also in GiB.
"""

from __future__ import annotations

import sys

import torch

# Dense bf16 tensor-core peak TFLOP/s by a substring of torch.cuda.get_device_name(); first match wins.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def known_peak_tflops(device_name: str) -> float | None:
    """The table's peak for a CUDA device name, or None for a device it does not list."""
    for key, peak in PEAK_TFLOPS:
        if key in device_name:
            return peak
    return None


def peak_flops(device: torch.device, peak_tflops: float | None) -> float | None:
    """Peak FLOP/s for MFU: the configured value, else the table's for a known CUDA device, else None."""
    if peak_tflops is not None:
        return peak_tflops * 1e12
    if device.type == "cuda":
        known = known_peak_tflops(torch.cuda.get_device_name(device))
        return None if known is None else known * 1e12
    return None


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters of ``model``, each shared tensor once."""
    return sum(p.numel() for p in model.parameters())


def model_flops_utilisation(n_params: int, tokens: float, seconds: float, peak: float) -> float:
    """6 x N x tokens / seconds / peak FLOP/s."""
    return 6.0 * n_params * tokens / max(seconds, 1e-9) / peak


def max_memory_gib(device: torch.device) -> float | None:
    """Peak CUDA tensor memory of ``device``, or on CPU the process's peak RSS (None where unknown)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def perf_metrics(n_params: int, tokens: float, seconds: float, device: torch.device,
                 peak: float | None) -> dict[str, float]:
    """``perf/mfu`` (when a peak is known), ``perf/train_tokens_per_s`` and ``perf/max_memory_allocated_gb``."""
    out = {"perf/train_tokens_per_s": tokens / max(seconds, 1e-9)}
    if peak is not None:
        out["perf/mfu"] = model_flops_utilisation(n_params, tokens, seconds, peak)
    memory = max_memory_gib(device)
    if memory is not None:
        out["perf/max_memory_allocated_gb"] = memory
    return out


__all__ = ["PEAK_TFLOPS", "count_parameters", "known_peak_tflops", "max_memory_gib", "model_flops_utilisation",
           "peak_flops", "perf_metrics"]
