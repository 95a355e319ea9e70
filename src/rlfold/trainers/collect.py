"""The collect stage: draw prompts, generate, score, and apply the group filters with refills."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from rlfold.algos.group_filters import GROUP_FILTERS, GroupFilterInput
from rlfold.core.contracts import PromptSource
from rlfold.core.seeding import derive_seed
from rlfold.core.types import Prompt, RolloutBatch
from rlfold.rollout import Engine, SamplingParams, requests_for
from rlfold.trainers.metrics import rollout_metrics
from rlfold.trainers.scoring import Scored, Scorer


@dataclass
class Sampled:
    """The scored rollouts a step trains on (after the group filters), and metrics of all it generated."""

    roll: RolloutBatch
    prompts: list[Prompt]
    scores: torch.Tensor
    token_rewards: torch.Tensor
    unscorable: torch.Tensor
    group_ids: torch.Tensor
    metrics: dict[str, float]
    t_gen: float
    t_reward: float


class RolloutCollector:
    """Owns the engine calls of a step: B prompts from the sampler, G samples each, scored.

    ``group_filters``: ``(name, kwargs)`` specs of registered group filters; a group is kept when every
    filter keeps it, and rejected groups are replaced by new prompts, for at most ``max_gen_batches``
    generation rounds. Every call's seed is derived from the run ``seed``, the step and the round.
    """

    def __init__(self, engine: Engine, params: SamplingParams, sampler: PromptSource, scorer: Scorer, *,
                 prompts_per_step: int, seed: int, group_filters: Sequence[tuple[str, dict[str, Any]]] = (),
                 max_gen_batches: int = 1) -> None:
        self.engine, self.params, self.sampler, self.scorer = engine, params, sampler, scorer
        self.b, self.seed = prompts_per_step, seed
        self.filters = [(GROUP_FILTERS.get(name), dict(kwargs)) for name, kwargs in group_filters]
        self.rounds = max_gen_batches if self.filters else 1

    def generate_and_score(self, prompts: list[Prompt], params: SamplingParams, group_ids: torch.Tensor,
                           step: int, *key: int | str) -> tuple[RolloutBatch, Scored]:
        """One engine call on ``prompts`` with ``params`` (seeded by ``key``), then the scorer."""
        with self.awake():
            roll = self.engine.generate(requests_for(prompts), params, derive_seed(self.seed, *key))
        reps = [p for p in prompts for _ in range(params.n)]
        return roll, self.scorer(reps, roll, group_ids, step)

    @contextmanager
    def awake(self) -> Iterator[None]:
        """The engine holds its memory only while this collector generates (``wake``/``sleep`` are
        idempotent), so a colocated trainer gets it back for the update."""
        self.engine.wake()
        try:
            yield
        finally:
            self.engine.sleep()

    def _keep(self, scored: Scored, group_ids: torch.Tensor) -> torch.Tensor:
        keep = torch.ones(group_ids.shape[0], dtype=torch.bool)
        inp = GroupFilterInput(scores=scored.scores, accuracy=scored.per_fn[self.scorer.accuracy_reward],
                               group_ids=group_ids)
        for fn, kwargs in self.filters:
            keep &= fn(inp, **kwargs)
        return keep

    def collect(self, step: int, purpose: str = "rollout") -> Sampled:
        """Generate and score B groups; with group filters, refill until B groups pass or the rounds run out.

        ``step`` is the training step the rollouts belong to (the shaping parts see it); ``purpose``
        names the call in the seeds, so collections outside the training steps (value pretraining)
        draw their own random numbers."""
        group_ids = torch.arange(self.b).repeat_interleave(self.params.n)
        with self.awake():
            seen, kept, n_kept, t_gen, t_reward = self._rounds(step, purpose, group_ids)
        return self._assemble(seen, kept, n_kept, t_gen, t_reward)

    def _rounds(self, step: int, purpose: str, group_ids: torch.Tensor) -> tuple[list, list, int, float, float]:
        """Generation rounds until the group filters kept B groups (one round without filters)."""
        n, b = self.params.n, self.b
        seen: list[tuple[RolloutBatch, list[Prompt], Scored]] = []
        kept: list[torch.Tensor] = []
        t_gen = t_reward = 0.0
        n_kept = 0
        for round_ in range(self.rounds):
            prompts = self.sampler.next(b)
            t0 = time.perf_counter()
            roll = self.engine.generate(requests_for(prompts), self.params,
                                        derive_seed(self.seed, purpose, step, round_))
            t_gen += time.perf_counter() - t0
            reps = [p for p in prompts for _ in range(n)]
            t0 = time.perf_counter()
            scored = self.scorer(reps, roll, group_ids, step)
            t_reward += time.perf_counter() - t0
            seen.append((roll, reps, scored))
            self.sampler.on_completed(reps)
            if not self.filters:
                break
            keep = self._keep(scored, group_ids)
            kept.append(keep)
            n_kept += int(keep.sum()) // n
            if n_kept >= b:
                break
        return seen, kept, n_kept, t_gen, t_reward

    def _assemble(self, seen: list[tuple[RolloutBatch, list[Prompt], Scored]], kept: list[torch.Tensor],
                  n_kept: int, t_gen: float, t_reward: float) -> Sampled:
        """One batch of the kept rows of every round (metrics over every generated row)."""
        n, b = self.params.n, self.b
        all_roll = RolloutBatch.concat([x[0] for x in seen], self.engine.pad_id)
        width = all_roll.response_ids.shape[1]
        all_reps = [p for x in seen for p in x[1]]
        all_scores = torch.cat([x[2].scores for x in seen])
        all_tokens = torch.cat([F.pad(x[2].token_rewards, (0, width - x[2].token_rewards.shape[1])) for x in seen])
        all_bad = torch.cat([x[2].unscorable for x in seen])
        all_per_fn = {k: torch.cat([x[2].per_fn[k] for x in seen]) for k in seen[0][2].per_fn}
        rows = torch.arange(all_roll.size)
        extra: dict[str, float] = {k: v for x in seen for k, v in x[2].metrics.items()}
        if self.filters:
            keep_all = torch.cat(kept)
            if n_kept > 0:  # otherwise train on the last round: its advantages carry no signal either way
                rows = keep_all.nonzero().flatten()[: b * n]
            else:
                rows = torch.arange(all_roll.size - b * n, all_roll.size)
            extra.update({"rollout/gen_batches": float(len(seen)), "rollout/kept_groups": float(min(n_kept, b))})
        extra.update(self.sampler.metrics())
        train_roll = all_roll.select(rows)
        return Sampled(
            roll=train_roll, prompts=[all_reps[i] for i in rows.tolist()], scores=all_scores[rows],
            token_rewards=all_tokens[rows][:, : train_roll.response_ids.shape[1]], unscorable=all_bad[rows],
            group_ids=torch.arange(train_roll.size // n).repeat_interleave(n),
            metrics={**rollout_metrics(all_roll, all_scores, all_per_fn, n, self.scorer.accuracy_reward), **extra},
            t_gen=t_gen, t_reward=t_reward,
        )


__all__ = ["RolloutCollector", "Sampled"]
