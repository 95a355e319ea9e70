"""Asynchronous collection: rollouts generated in a background thread while the trainer updates.

``rollout.async_mode`` picks the collector (registry ``COLLECTORS``): ``sync`` (``collect.py``,
on-policy), ``one_step`` (one-step off-policy: the batch of step k is generated with the weights of
step k-1 while step k-1 updates) and ``bounded`` (batches are generated up to
``rollout.max_staleness`` steps ahead, so a row is at most that many policy versions old).

The protocol. A *version* is the number of updates the weights had; the weights the trainer holds
at step k have version k. At ``collect(k)`` the trainer's thread draws the prompts of batches
k .. k+S (S = max_staleness) from the sampler and queues them; batch b may be generated once the
engine holds version b-S (0 for b < S). The background thread generates them in order with the
engine's own copy of the weights (an engine that shares the trainer's tensors cannot be stale and is
refused). ``new_weights(push, v)`` first waits until every queued batch that the previous weights
should generate is done, then pushes the weights while the engine is idle. So batch b is generated
with exactly version max(0, b-S): staleness is min(b, S) and the run is seeded and deterministic
like a synchronous one. A batch found older than S versions when it is taken (which this protocol
never produces) is *regenerated* with the current weights, never trained on. Scoring, the sampler,
the shaping state and group-filter refills stay in the trainer's thread; refill rounds generate
synchronously with the engine's current (up to S versions old) weights.

The decoupled correction (Hilton et al. 2022, arXiv 2110.00641; AReaL, Fu et al. 2025, arXiv
2505.24298) needs no code of its own: the trainer recomputes the old log-probs with its current
weights before the update (the *proximal* policy, stage 2; required here), the policy loss clips
its ratio against them, and the ``tis`` selection weights each token by min(pi_prox / pi_behav, c)
with pi_behav the engine's ``sample_logprobs`` of the stale weights (``rollout.recompute_logprobs``
and ``algo.selection: [{name: tis}]``, as ``recipes/grpo_async.yaml`` sets them).

Not deterministic: wall-clock figures (``timing_s/*``, ``async/wait_s``) depend on the thread
schedule. A resumed run starts with an empty queue: the prompts queued at the checkpoint are skipped
(the sampler had already drawn them) and the first batch after the resume is generated with the
resumed weights (staleness 0), so a resumed run differs from an uninterrupted one from there on.
The engine is kept awake (``sleep``/``wake`` are not used): generation overlaps the update.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from rlfold.core.contracts import PromptSource
from rlfold.core.errors import ConfigError, RlfoldError
from rlfold.core.registry import COLLECTORS
from rlfold.core.seeding import derive_seed
from rlfold.core.types import Prompt, RolloutBatch
from rlfold.rollout import Engine, SamplingParams, requests_for
from rlfold.trainers.collect import VERSION_KEY, RolloutCollector, Sampled, with_version
from rlfold.trainers.scoring import Scored, Scorer

ROLLOUT = "rollout"  # the purpose of the training steps' collections (the seeds' key)
JOIN_TIMEOUT_S = 60.0


class CollectorError(RlfoldError):
    """The background generation thread failed or is gone."""


def min_version(batch: int, max_staleness: int) -> int:
    """The oldest weights (in updates) batch ``batch`` may be generated with: staleness at most ``max_staleness``."""
    return max(0, batch - max_staleness)


def too_stale(row_versions: torch.Tensor, version: int, max_staleness: int) -> bool:
    """Whether any row was generated more than ``max_staleness`` versions before ``version``."""
    return bool(row_versions.numel()) and int(version - row_versions.min()) > max_staleness


def staleness_metrics(row_versions: torch.Tensor, version: int, queue_size: int) -> dict[str, float]:
    """``async/staleness_mean|max`` of the rows trained at ``version``, and ``async/queue_size``."""
    stale = (version - row_versions).double()
    return {"async/staleness_mean": float(stale.mean()) if stale.numel() else 0.0,
            "async/staleness_max": float(stale.max()) if stale.numel() else 0.0,
            "async/queue_size": float(queue_size)}


@dataclass
class Job:
    """A queued batch: its step, its prompts (drawn by the trainer's thread), the oldest weights allowed."""

    step: int
    prompts: list[Prompt]
    min_version: int


class AsyncCollector(RolloutCollector):
    """Rollouts from a background thread, at most ``max_staleness`` policy versions old (see the module
    docstring; one-step off-policy with ``max_staleness=1``)."""

    off_policy = True

    def __init__(self, engine: Engine, params: SamplingParams, sampler: PromptSource, scorer: Scorer, *,
                 prompts_per_step: int, seed: int, group_filters: Sequence[tuple[str, dict[str, Any]]] = (),
                 max_gen_batches: int = 1, max_staleness: int = 1) -> None:
        if engine.shares_weights:
            raise ConfigError(
                "rollout.async_mode: asynchronous collection needs an engine with weights of its own (the "
                "in-process engine with rollout.engine_kwargs={weights: copy}, or vllm); this engine computes "
                "with the trainer's own tensors, so its rollouts could never be stale and the background "
                "thread would read weights while the update writes them")
        if max_staleness < 1:
            raise ConfigError(f"rollout.max_staleness={max_staleness}: asynchronous collection needs at least 1 "
                              "(use rollout.async_mode=sync for on-policy rollouts)")
        super().__init__(engine, params, sampler, scorer, prompts_per_step=prompts_per_step, seed=seed,
                         group_filters=group_filters, max_gen_batches=max_gen_batches)
        self.max_staleness = max_staleness
        self.lock = threading.RLock()          # held while the engine generates or takes new weights
        self.cv = threading.Condition()        # guards jobs, done, version, error, stopping
        self.jobs: deque[Job] = deque()
        self.done: dict[int, tuple[list[Prompt], RolloutBatch, float]] = {}
        self.next_batch = 0
        self.error: BaseException | None = None
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.regenerated = 0
        self.wait_s = 0.0

    # ----- the interface the trainer uses ----------------------------------------------------------
    def collect(self, step: int, purpose: str = ROLLOUT) -> Sampled:
        """The scored batch of ``step`` from the queue (other purposes, e.g. value pretraining: generated now)."""
        if purpose != ROLLOUT:
            with self.lock:
                return super().collect(step, purpose)
        self._start()
        self._enqueue(step)
        self.wait_s = 0.0
        s = super().collect(step, purpose)
        with self.cv:
            queued = len(self.jobs) + len(self.done)
        s.metrics.update(staleness_metrics(s.roll.extras[VERSION_KEY], self.version, queued))
        s.metrics.update({"async/wait_s": self.wait_s, "async/regenerated": float(self.regenerated)})
        return s

    def new_weights(self, push: Callable[[], None], version: int) -> None:
        """Push the trainer's new weights once the batches due from the current ones are generated."""
        with self.cv:
            self._wait(lambda: not any(j.min_version < version for j in self.jobs))
        with self.lock:
            push()
            with self.cv:
                self.version = version
                self.cv.notify_all()

    def idle(self) -> AbstractContextManager[Any]:
        """A block in which the background thread does not generate (the engine is free for the caller)."""
        return self.lock

    def generate_and_score(self, prompts: list[Prompt], params: SamplingParams, group_ids: torch.Tensor,
                           step: int, *key: int | str) -> tuple[RolloutBatch, Scored]:
        """One extra engine call (e.g. a greedy baseline), with the engine's current weights."""
        with self.lock:
            return super().generate_and_score(prompts, params, group_ids, step, *key)

    def awake(self) -> AbstractContextManager[None]:
        """The engine stays awake: it generates while the trainer updates."""
        return nullcontext()

    def close(self) -> None:
        """Stop the background thread (it finishes the engine call it is in) and drop the queue."""
        with self.cv:
            self.stopping = True
            self.jobs.clear()
            self.cv.notify_all()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(JOIN_TIMEOUT_S)
        self.thread = None

    # ----- the trainer's thread --------------------------------------------------------------------
    def draw_and_generate(self, step: int, purpose: str, round_: int) -> tuple[list[Prompt], RolloutBatch, float]:
        """Round 0 of a training step: its queued batch; refill rounds: generated now (engine's weights)."""
        if purpose != ROLLOUT or round_ > 0:
            with self.lock:
                return super().draw_and_generate(step, purpose, round_)
        t0 = time.perf_counter()
        with self.cv:
            self._wait(lambda: step in self.done)
            prompts, roll, t_gen = self.done.pop(step)
        self.wait_s += time.perf_counter() - t0
        if too_stale(roll.extras[VERSION_KEY], self.version, self.max_staleness):
            with self.lock:  # dropped, generated again with the current weights (same prompts, same seed)
                t0 = time.perf_counter()
                roll = with_version(self._generate(prompts, step), self.version)
                t_gen = time.perf_counter() - t0
            self.regenerated += 1
        return prompts, roll, t_gen

    def _enqueue(self, step: int) -> None:
        """Queue the batches up to ``step + max_staleness`` (their prompts drawn here, in order)."""
        with self.cv:
            self.next_batch = max(self.next_batch, step)  # a resumed run starts with an empty queue
            while self.next_batch <= step + self.max_staleness:
                b = self.next_batch
                self.jobs.append(Job(b, self.sampler.next(self.b), min_version(b, self.max_staleness)))
                self.next_batch += 1
            self.cv.notify_all()

    def _wait(self, ready: Callable[[], bool]) -> None:
        """Wait (holding ``cv``) until ``ready()``; the thread's error, or its end, is raised here."""
        while not ready():
            if self.error is not None:
                raise CollectorError(f"the background rollout thread failed: {type(self.error).__name__}: "
                                     f"{self.error}") from self.error
            if self.thread is None or not self.thread.is_alive():
                raise CollectorError("the background rollout thread is not running (the collector was closed)")
            self.cv.wait(0.1)

    def _start(self) -> None:
        if self.thread is None:
            with self.cv:
                self.stopping = False
            self.thread = threading.Thread(target=self._work, name="rlfold-rollouts", daemon=True)
            self.thread.start()

    # ----- the background thread -------------------------------------------------------------------
    def _generate(self, prompts: list[Prompt], step: int) -> RolloutBatch:
        return self.engine.generate(requests_for(prompts), self.params, derive_seed(self.seed, ROLLOUT, step, 0))

    def _work(self) -> None:
        try:
            while True:
                with self.cv:
                    while not self.stopping and not (self.jobs and self.jobs[0].min_version <= self.version):
                        self.cv.wait()
                    if self.stopping:
                        return
                    job = self.jobs[0]
                with self.lock:
                    version = self.version
                    t0 = time.perf_counter()
                    roll = with_version(self._generate(job.prompts, job.step), version)
                    dt = time.perf_counter() - t0
                with self.cv:
                    if self.stopping:
                        return
                    self.jobs.popleft()
                    self.done[job.step] = (job.prompts, roll, dt)
                    self.cv.notify_all()
        except BaseException as exc:  # noqa: BLE001  (raised in the trainer's thread at its next wait)
            with self.cv:
                self.error = exc
                self.cv.notify_all()


@COLLECTORS.register("one_step")
def one_step(engine: Engine, params: SamplingParams, sampler: PromptSource, scorer: Scorer, *,
             max_staleness: int = 1, **kwargs: Any) -> AsyncCollector:
    """One-step off-policy collection (verl's one_step_off_policy; Noukhovitch et al. 2024, arXiv 2410.18252)."""
    if max_staleness != 1:
        raise ConfigError(f"rollout.max_staleness={max_staleness} with rollout.async_mode=one_step, which is "
                          "always 1; use rollout.async_mode=bounded for more")
    return AsyncCollector(engine, params, sampler, scorer, max_staleness=1, **kwargs)


@COLLECTORS.register("bounded")
def bounded(engine: Engine, params: SamplingParams, sampler: PromptSource, scorer: Scorer, *,
            max_staleness: int = 1, **kwargs: Any) -> AsyncCollector:
    """Staleness-bounded asynchronous collection (AReaL, Fu et al. 2025, arXiv 2505.24298)."""
    return AsyncCollector(engine, params, sampler, scorer, max_staleness=max_staleness, **kwargs)


__all__ = ["AsyncCollector", "CollectorError", "Job", "bounded", "min_version", "one_step", "staleness_metrics",
           "too_stale"]
