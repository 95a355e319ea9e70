"""Data-parallel and FSDP2 training with torch.distributed: the process group, this rank's share
of a mini-batch, the normaliser reduction and the DDP / FSDP2 wrapping of the policy.

Every rank runs the identical driver stage (same seeds, same weights, so the same global batch); the
update stage then trains, in every mini-batch, the contiguous slice of rows of its rank
(``torch.tensor_split``), with the aggregation normalisers all-reduced (``Parallel.reduce_sum``) and
the gradients all-reduced by DDP or reduce-scattered by FSDP2. Both average over ranks, so the
gradients are multiplied by the world size afterwards (``finish_grads``): per-rank losses are
already normalised by the global counts. ``SINGLE`` is the one-process case: every call is the
identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

from rlfold.core.errors import ConfigError

LAUNCH_HINT = ("launch it with `rlfold train RECIPE --nproc N ...` or `torchrun --nproc_per_node=N "
               "--master_addr=127.0.0.1 -m rlfold.cli train RECIPE ...` (GLOO_SOCKET_IFNAME=lo on CPU)")


@dataclass
class Parallel:
    """This process's place in the data-parallel group: rank, world size and the collectives the update uses."""

    rank: int = 0
    world: int = 1
    strategy: str = "single"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def reduce_sum(self, t: Tensor) -> Tensor:
        """All-reduce SUM of a tensor (a copy; the identity in one process)."""
        if not self.active:
            return t
        out = t.detach().clone().to(self.device)
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
        return out.to(t.device)

    def shard(self, idx: Tensor) -> Tensor:
        """The rows of mini-batch ``idx`` this rank trains on: a contiguous slice, the same split on every rank."""
        return torch.tensor_split(idx, self.world)[self.rank] if self.active else idx

    def micro_count(self, n: int, micro_batch_size: int) -> int | None:
        """Micro-batches every rank runs for a mini-batch of ``n`` rows (None in one process: as many as needed).

        Each forward/backward is collective under DDP and FSDP2, so a rank with fewer rows pads with
        micro-batches whose loss mask is zero."""
        if not self.active:
            return None
        most = -(-n // self.world)
        return max(1, -(-most // micro_batch_size)) if micro_batch_size else 1

    def sum_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Per-rank metric shares summed over ranks (every rank passes the same keys)."""
        if not self.active or not metrics:
            return metrics
        keys = sorted(metrics)
        total = self.reduce_sum(torch.tensor([metrics[k] for k in keys], dtype=torch.float64))
        return dict(zip(keys, total.tolist()))

    def all_true(self, ok: bool) -> bool:
        """Whether ``ok`` holds on every rank."""
        if not self.active:
            return ok
        return float(self.reduce_sum(torch.tensor([0.0 if ok else 1.0]))[0]) == 0.0

    def finish_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Undo DDP's / FSDP2's average over ranks: the per-rank losses are global-count normalised."""
        if not self.active:
            return
        for p in params:
            if p.grad is not None:
                p.grad.mul_(self.world)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a picklable object: a path, a decision)."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


SINGLE = Parallel()


def launched() -> bool:
    """Whether this process was started by torchrun (its environment names a rank and a world)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def current() -> Parallel:
    """The ``Parallel`` of the initialised process group (``SINGLE`` when there is none)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return SINGLE
    backend = torch.distributed.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return Parallel(torch.distributed.get_rank(), torch.distributed.get_world_size(), _STRATEGY[0], device)


_STRATEGY = ["single"]


def setup(strategy: str) -> Parallel:
    """Join (or reuse) the process group for ``train.strategy``; ``single`` never needs one."""
    if strategy == "single":
        return SINGLE
    if not torch.distributed.is_initialized():
        if not launched():
            raise ConfigError(f"train.strategy={strategy} needs several processes, but this one was not started "
                              f"by torchrun (no RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT); {LAUNCH_HINT}")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend, timeout=timedelta(minutes=30))
    _STRATEGY[0] = strategy
    return current()


def wrap(module: torch.nn.Module, par: Parallel) -> torch.nn.Module:
    """The module the update's forward goes through: DDP around it, or FSDP2 applied in place."""
    if not par.active:
        return module
    if par.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [par.device.index] if par.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(module):
        fully_shard(layer)
    fully_shard(module)
    return module


def decoder_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a HF causal LM (each a ``ModuleList`` item named ``layers.N``); none: the root only."""
    lists = [m for name, m in module.named_modules() if name.endswith("layers") and isinstance(m, torch.nn.ModuleList)]
    return list(lists[0]) if lists else []


def full_state_dict(module: torch.nn.Module, par: Parallel) -> dict[str, Tensor] | None:
    """The full model state on rank 0 (collective under FSDP2; None on the other ranks)."""
    if par.strategy != "fsdp2" or not par.active:
        return module.state_dict() if par.is_main else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if par.is_main else None


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run ``rlfold <argv>`` as ``nproc`` ranks under torchrun on loopback; the exit status of the group."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:  # a free port on loopback for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "rlfold.cli", *argv]
    return subprocess.call(cmd, env=env)


def shutdown() -> None:
    """Leave the process group (if this process joined one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def as_float(t: Any) -> float:
    """A 0-d tensor (a DTensor under FSDP2: gathered first) as a float."""
    from torch.distributed.tensor import DTensor

    return float(t.full_tensor() if isinstance(t, DTensor) else t)


__all__ = ["LAUNCH_HINT", "Parallel", "SINGLE", "as_float", "current", "decoder_layers", "full_state_dict",
           "launched", "relaunch", "setup", "shutdown", "wrap"]
