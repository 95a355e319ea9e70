"""Where and in what precision a model computes: the device, bf16 autocast over fp32 weights, and
gradient checkpointing."""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import torch

from rlfold.core.errors import ConfigError

Autocast = Callable[[], ContextManager[Any]]
LOG = logging.getLogger("rlfold")

# CPU flags (Linux /proc/cpuinfo) of native bf16 matrix products: x86 AVX512-BF16 / AMX, Arm's BF16 extension.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def resolve_device(spec: str, cuda_available: bool | None = None, device_count: int | None = None) -> torch.device:
    """``model.device`` as a ``torch.device``: ``auto`` is cuda when available, else cpu; a CUDA device the
    machine lacks is a ConfigError."""
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if spec == "auto":
        return torch.device("cuda" if cuda else "cpu")
    device = torch.device(spec)
    if device.type != "cuda":
        return device
    if not cuda:
        raise ConfigError(f"model.device={spec} but this machine has no CUDA device (torch "
                          f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use model.device=cpu or "
                          "model.device=auto")
    count = torch.cuda.device_count() if device_count is None else device_count
    if device.index is not None and device.index >= count:
        raise ConfigError(f"model.device={spec} but this machine has {count} CUDA device(s) (cuda:0 .. "
                          f"cuda:{count - 1}); pick one of them or model.device=cuda")
    return device


def check_precision(mixed_precision: str, dtype: str) -> None:
    """bf16 mixed precision keeps float32 master weights, so the model must be loaded in float32."""
    if mixed_precision == "bf16" and dtype != "float32":
        raise ConfigError(f"train.mixed_precision=bf16 keeps float32 parameters and optimiser state and computes in "
                          f"bf16 under autocast, but model.dtype={dtype}; set model.dtype=float32 (or "
                          "train.mixed_precision=none to train in the model's own dtype)")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU multiplies bf16 matrices natively (flags in ``/proc/cpuinfo``); None where that file
    is unreadable (not Linux), so nothing is claimed there."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return bool(flags & BF16_CPU_FLAGS) if flags else None


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool | None:
    return cpu_has_bf16()


def warn_slow_bf16(device: torch.device, mixed_precision: str, native: bool | None | str = "detect") -> bool:
    """Warn when bf16 autocast runs on a CPU without bf16 instructions: torch then emulates
    every bf16 product, measured 25x slower than float32 on an AVX2 EPYC (docs/speed.md). ``native``: whether the
    CPU has them (None: unknown, no warning; "detect": read ``/proc/cpuinfo``). True if it warned."""
    if mixed_precision != "bf16" or device.type != "cpu":
        return False
    native = _cpu_has_bf16() if native == "detect" else native
    if native is not False:
        return False
    LOG.warning("train.mixed_precision=bf16 on a CPU without bf16 instructions (no avx512_bf16, amx_bf16 or bf16 "
                "flag in /proc/cpuinfo; torch reports %s): bf16 matrix products are emulated there, about 25x "
                "slower than float32 (bench/matmul_rate.py measures it); train.mixed_precision=none is faster on "
                "this machine", torch.backends.cpu.get_cpu_capability())
    return True


def autocast_for(device: torch.device, mixed_precision: str) -> Autocast:
    """A factory of the forward's precision context: bf16 ``torch.autocast`` on ``device``, or none."""
    if mixed_precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


# Multiply-adds of one CPU forward (rows x positions x parameters) under which a single torch thread beats two:
# each small op's wake-up of the second thread then costs more than it computes. Measured on the tiny models
# at 128 rows (docs/speed.md). bf16 on an AVX512-BF16 EPYC: an update over 15 positions (1.5e9) is faster on
# one thread, over 39 (4e9) on two; a decode step (1e8) is 1.5-1.75x slower on two. Float32 products are 5x
# slower there (about 80 vs 400 GFLOP/s a core), so the same time is 5x fewer multiply-adds: on an AVX2 EPYC
# a float32 update over 15 positions is 1.45x faster on two threads, a decode step the same on either.
SMALL_CPU_WORK = 2e9
SMALL_CPU_WORK_FP32 = 4e8


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype ``model``'s products run in here: autocast's where it is on for the model's device, else
    the parameters'."""
    param = next(model.parameters(), None)
    device = "cpu" if param is None else param.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.float32 if param is None else param.dtype


@contextlib.contextmanager
def threads_for(work: float, device: torch.device, threads: int | None = None,
                dtype: torch.dtype = torch.float32) -> Iterator[None]:
    """Run a CPU computation of ``work`` multiply-adds in ``dtype`` on ``threads`` torch threads (None: one when
    ``work`` is under ``SMALL_CPU_WORK`` for 16-bit products, ``SMALL_CPU_WORK_FP32`` for float32, else the
    process's count); the process's count is restored after."""
    current = torch.get_num_threads()
    small = SMALL_CPU_WORK if dtype in (torch.bfloat16, torch.float16) else SMALL_CPU_WORK_FP32
    want = threads or (1 if work < small else current)
    if device.type != "cpu" or want == current:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(current)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """transformers' non-reentrant activation checkpointing (active in train mode only): the newer
    ``activation_checkpointing_enable`` where it exists (its old name is deprecated in transformers 5.2x),
    else ``gradient_checkpointing_enable``."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"train.gradient_checkpointing=true but the model ({type(model).__name__}) does not "
                          "support gradient checkpointing; set train.gradient_checkpointing=false")
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


__all__ = ["Autocast", "autocast_for", "check_precision", "cpu_has_bf16", "enable_gradient_checkpointing",
           "compute_dtype", "resolve_device", "threads_for", "warn_slow_bf16", "SMALL_CPU_WORK",
           "SMALL_CPU_WORK_FP32"]
