"""Rollout workers as Ray actors: the configured engine, with a weights copy of its own, in N actors.

Each ``generate`` call is split by ``plan_shards`` (contiguous slices, per-shard seeds derived from the
call's seed) and the batches are gathered in order, so N workers draw exactly what the in-process
``sharded`` engine with N shards draws (one worker: what the unwrapped engine draws). ``update_weights``
puts the weights in the object store once and loads them in every actor. The engine never shares the
trainer's tensors, so the trainer recomputes the old log-probs.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterable, Sequence

import torch

from rlfold.cluster import actor_options, connect, kill_actors
from rlfold.core import registry
from rlfold.core.config import RayConfig
from rlfold.core.errors import ConfigError, DataError
from rlfold.core.types import RolloutBatch
from rlfold.models.lean import enable_lean, lean_of
from rlfold.rollout.base import Engine, EngineContext, GenerationRequest
from rlfold.rollout.sampling import SamplingParams
from rlfold.rollout.sharding import load_named, plan_shards


class RolloutWorker:
    """What runs inside one actor: its own model copy and the inner engine built on it."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, model_path: str, dtype: torch.dtype, engine: str,
                 engine_kwargs: dict[str, Any], threads: int, device: str, lean: bool = False) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        self.model = model.to(device)
        if lean:  # the trainer's model runs the lean forward: so does the worker's copy
            enable_lean(self.model)
        ctx = EngineContext(model=self.model, tokenizer=tokenizer, model_path=model_path, dtype=dtype)
        self.engine: Engine = registry.ENGINES.get(engine)(ctx, **engine_kwargs)

    def pad_id(self) -> int:
        return int(self.engine.pad_id)

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams, seed: int) -> RolloutBatch:
        return self.engine.generate(requests, params, seed)

    def update_weights(self, named: dict[str, torch.Tensor]) -> None:
        """Load the new weights: into the worker's module if the inner engine samples with it, else the engine."""
        if self.engine.shares_weights:
            load_named(self.model, named.items(), "ray rollout worker")
        else:
            self.engine.update_weights(named.items(), streamed=False)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake(self) -> None:
        self.engine.wake()


@registry.ENGINES.register("ray_actors")
class RayEngine:
    """The inner ``engine`` (with ``engine_kwargs``) in ``workers`` Ray actors (``cluster``: a ``RayConfig``;
    None: its defaults with ``workers`` rollout workers)."""

    shares_weights = False

    def __init__(self, ctx: EngineContext, *, engine: str = "hf", engine_kwargs: dict[str, Any] | None = None,
                 workers: int | None = None, cluster: Any = None) -> None:
        cfg = cluster if isinstance(cluster, RayConfig) else RayConfig(**(cluster or {}))
        n = workers if workers is not None else cfg.num_rollout_workers
        if n < 1:
            raise ConfigError(f"ray_actors engine: workers must be >= 1, got {n}")
        if engine in ("ray_actors", "sharded"):
            raise ConfigError(f"ray_actors engine: the inner engine cannot be {engine!r}")
        registry.ENGINES.get(engine)  # an unknown engine fails here, before any actor starts
        self.ray = ray = connect(cfg)
        threads = cfg.threads_per_worker or torch.get_num_threads()
        device = "cuda" if cfg.gpus_per_rollout_worker > 0 else "cpu"
        model_ref = ray.put(ctx.policy_weights().plain_copy().cpu().eval().requires_grad_(False))
        remote = ray.remote(RolloutWorker)
        self.workers = [remote.options(**actor_options(cfg, "rollout", i, n)).remote(
            model_ref, ctx.tokenizer, ctx.model_path, ctx.dtype, engine, dict(engine_kwargs or {}), threads, device,
            lean_of(ctx.model) is not None)
            for i in range(n)]
        weakref.finalize(self, kill_actors, ray, list(self.workers))
        self.pad_id = ray.get(self.workers[0].pad_id.remote())

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams, seed: int) -> RolloutBatch:
        """Shard ``i`` on worker ``i`` with its own seed; the batches concatenated in request order."""
        if not requests:
            raise DataError("ray_actors engine: generate got an empty list of requests")
        plan = plan_shards(len(requests), len(self.workers), seed)
        refs = [self.workers[s.index].generate.remote(list(requests[s.start:s.stop]), params, s.seed) for s in plan]
        return RolloutBatch.concat(self.ray.get(refs), self.pad_id)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], streamed: bool = False) -> None:
        """The weights in the object store once, loaded by every worker."""
        ref = self.ray.put({name: t.detach().cpu() for name, t in named_tensors})
        self.ray.get([w.update_weights.remote(ref) for w in self.workers])

    def sleep(self) -> None:
        self.ray.get([w.sleep.remote() for w in self.workers])

    def wake(self) -> None:
        self.ray.get([w.wake.remote() for w in self.workers])


__all__ = ["RayEngine", "RolloutWorker"]
