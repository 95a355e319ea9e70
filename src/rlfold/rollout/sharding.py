"""Deterministic sharding of one ``generate`` call: contiguous request slices, each with a seed of its own.

The plan depends only on the number of requests, the number of shards and the call's seed, so a call
split over N Ray actors draws exactly what the in-process ``sharded`` engine with N shards draws; one
shard keeps the call's own seed, so one worker draws what the unwrapped engine draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from rlfold.core import registry
from rlfold.core.errors import ConfigError
from rlfold.core.seeding import derive_seed
from rlfold.core.types import RolloutBatch
from rlfold.rollout.base import EngineContext, GenerationRequest, WrappingEngine
from rlfold.rollout.sampling import SamplingParams


@dataclass(frozen=True)
class Shard:
    """Requests ``[start, stop)`` of a call, generated with ``seed`` by shard ``index``."""

    index: int
    start: int
    stop: int
    seed: int


def shard_seed(seed: int, index: int, shards: int) -> int:
    """The seed of shard ``index`` of ``shards``: the call's seed itself for one shard, else a derived one."""
    return int(seed) if shards == 1 else derive_seed(seed, "shard", index)


def plan_shards(n_requests: int, shards: int, seed: int) -> list[Shard]:
    """Split ``n_requests`` into at most ``shards`` contiguous non-empty slices (the first ones one longer)."""
    if shards < 1:
        raise ConfigError(f"sharding: the number of shards must be >= 1, got {shards}")
    base, extra = divmod(n_requests, shards)
    out, start = [], 0
    for i in range(shards):
        stop = start + base + (1 if i < extra else 0)
        if stop > start:
            out.append(Shard(i, start, stop, shard_seed(seed, i, shards)))
        start = stop
    return out


def load_named(model: torch.nn.Module, named: Iterable[tuple[str, torch.Tensor]], where: str) -> None:
    """Copy named tensors into ``model``'s parameters (a name it does not have is an error naming it)."""
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in named:
            if name not in own:
                raise ConfigError(f"{where}: update_weights got {name!r}, which the worker's model does not have "
                                  f"(it has e.g. {', '.join(list(own)[:3])})")
            own[name].copy_(tensor.to(own[name].device, own[name].dtype))


@registry.ENGINES.register("sharded")
class ShardedEngine(WrappingEngine):
    """In-process reference of the Ray rollout workers: the inner ``engine`` called once per shard of
    each request list, with the per-shard seeds of ``plan_shards``, the batches concatenated in order."""

    def __init__(self, ctx: EngineContext, *, engine: str = "hf", engine_kwargs: dict[str, Any] | None = None,
                 shards: int = 2) -> None:
        if shards < 1:
            raise ConfigError(f"sharded engine: shards must be >= 1, got {shards}")
        if engine in ("sharded", "ray_actors"):
            raise ConfigError(f"sharded engine: the inner engine cannot be {engine!r}")
        super().__init__(registry.ENGINES.get(engine)(ctx, **dict(engine_kwargs or {})))
        self.shards = shards

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams, seed: int) -> RolloutBatch:
        """Each shard through the inner engine with its own seed; rows in request order."""
        if not requests:
            return self.inner.generate(requests, params, seed)  # the inner engine's own error
        parts = [self.inner.generate(requests[s.start:s.stop], params, s.seed)
                 for s in plan_shards(len(requests), self.shards, seed)]
        return RolloutBatch.concat(parts, self.pad_id)


__all__ = ["Shard", "ShardedEngine", "load_named", "plan_shards", "shard_seed"]
