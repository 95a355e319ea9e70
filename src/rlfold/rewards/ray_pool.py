"""Reward workers: the batch's reward functions scored in a pool of Ray actors (``score_rewards``'s interface).

The rows are split into one contiguous chunk per actor; each actor runs ``score_rewards`` on its chunk and
the results are joined in row order (scores and per-function scores concatenated, per-token scores padded
to the widest row, the ``none`` / ``errors`` counts added). For reward functions that score each sample on
its own the result equals the in-process one (a reward model scores each chunk as a smaller batch).
"""

from __future__ import annotations

import weakref
from typing import Any, Sequence

import torch

from rlfold.cluster import actor_options, connect, kill_actors
from rlfold.core.config_loader import import_plugins
from rlfold.core.types import Prompt
from rlfold.rewards.base import ScoreResult, score_rewards


class RewardWorker:
    """What runs inside one reward actor: ``score_rewards`` after the run's plugin imports."""

    def __init__(self, imports: list[Any], threads: int) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        import rlfold.rewards  # noqa: F401 - registers the shipped reward functions

        import_plugins(imports)

    def score(self, specs: list[Any], prompts: list[Prompt], completions: list[str], finishes: list[str],
              lengths: torch.Tensor | None, on_error: str, extras: list[dict[str, Any]] | None = None) -> ScoreResult:
        return score_rewards(specs, prompts, completions, finishes, response_lengths=lengths, on_error=on_error,
                             rollout_extras=extras)


def _chunks(n: int, k: int) -> list[tuple[int, int]]:
    """At most ``k`` contiguous non-empty ``[start, stop)`` slices of ``n`` rows."""
    base, extra = divmod(n, k)
    out, start = [], 0
    for i in range(k):
        stop = start + base + (1 if i < extra else 0)
        if stop > start:
            out.append((start, stop))
        start = stop
    return out


def join_results(parts: Sequence[ScoreResult]) -> ScoreResult:
    """The chunks' results as one, in row order."""
    total = torch.cat([p.total for p in parts])
    per_fn = {name: torch.cat([p.per_fn[name] for p in parts]) for name in parts[0].per_fn}
    token_scores = None
    if any(p.token_scores is not None for p in parts):
        width = max(p.token_scores.shape[1] for p in parts if p.token_scores is not None)
        token_scores = torch.cat([torch.nn.functional.pad(p.token_scores, (0, width - p.token_scores.shape[1]))
                                  if p.token_scores is not None else torch.zeros(p.total.shape[0], width)
                                  for p in parts])
    metrics: dict[str, float] = {}
    for p in parts:
        for key, value in p.metrics.items():
            metrics[key] = metrics.get(key, 0.0) + value
    return ScoreResult(total, per_fn, token_scores, metrics)


class RayRewardPool:
    """``score_rewards`` over ``cfg.num_reward_workers`` Ray actors (``cfg``: a ``RayConfig``)."""

    def __init__(self, cfg: Any, imports: Sequence[Any] = ()) -> None:
        self.ray = ray = connect(cfg)
        n = cfg.num_reward_workers
        threads = cfg.threads_per_worker or torch.get_num_threads()
        remote = ray.remote(RewardWorker)
        self.workers = [remote.options(**actor_options(cfg, "reward", i, n)).remote(list(imports), threads)
                        for i in range(n)]
        weakref.finalize(self, kill_actors, ray, list(self.workers))

    def __call__(self, specs: Sequence[Any], prompts: Sequence[Prompt], completions: Sequence[str],
                 finishes: Sequence[str], response_lengths: torch.Tensor | None = None,
                 on_error: str = "raise", rollout_extras: Sequence[dict[str, Any]] | None = None) -> ScoreResult:
        """Score each chunk of rows in its own actor and join the results."""
        if len(completions) == 0:
            return score_rewards(specs, prompts, completions, finishes, response_lengths, on_error, rollout_extras)
        refs = [w.score.remote(list(specs), list(prompts[a:b]), list(completions[a:b]), list(finishes[a:b]),
                               None if response_lengths is None else response_lengths[a:b], on_error,
                               None if rollout_extras is None else list(rollout_extras[a:b]))
                for w, (a, b) in zip(self.workers, _chunks(len(completions), len(self.workers)))]
        return join_results(self.ray.get(refs))


__all__ = ["RayRewardPool", "RewardWorker", "join_results"]
