"""Rollout collection for the online trainer: generate, score, shape, and (DAPO) dynamic sampling."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from rlfold.algos.selection import filter_groups
from rlfold.core.config import RunConfig
from rlfold.core.seeding import derive_seed, generator_for
from rlfold.core.types import Prompt, RolloutBatch
from rlfold.rewards import SHAPINGS, ShapingInput, score_rewards
from rlfold.rollout import SamplingParams
from rlfold.trainers.inputs import first_rows
from rlfold.trainers.metrics import rollout_metrics


@dataclass
class Scored:
    """Scores of one batch of rollouts, after the shaping parts."""

    scores: torch.Tensor          # [N]; unscorable rows hold their group's mean of the scorable ones
    per_fn: dict[str, torch.Tensor]
    token_rewards: torch.Tensor   # [N, R] reward per response token (sums to ``scores`` per row)
    unscorable: torch.Tensor      # [N] bool: every reward function returned None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Sampled:
    """The scored rollouts a step trains on (after dynamic sampling), and metrics of all it generated."""

    roll: RolloutBatch
    prompts: list[Prompt]
    scores: torch.Tensor
    token_rewards: torch.Tensor
    unscorable: torch.Tensor
    group_ids: torch.Tensor
    metrics: dict[str, float]
    t_gen: float
    t_reward: float


def place_on_last_token(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, R]: each score on the row's last valid token, 0 elsewhere."""
    out = torch.zeros(mask.shape, dtype=torch.float32)
    valid = mask.bool()
    idx = torch.arange(mask.shape[1]).expand_as(mask)
    last = torch.where(valid, idx, torch.full_like(idx, -1)).max(dim=1).values
    has = last >= 0
    out[has.nonzero().flatten(), last[has]] = scores[has].float()
    return out


def _fill_unscorable(scores: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace NaN (unscorable) scores by the mean of the scorable rows of their group (0 if none)."""
    bad = torch.isnan(scores)
    if not bool(bad.any()):
        return scores, bad
    out = scores.clone()
    for g in group_ids[bad].unique().tolist():
        rows = group_ids == g
        ok = rows & ~bad
        out[rows & bad] = scores[ok].mean() if bool(ok.any()) else 0.0
    return out, bad


class RolloutCollector:
    """Owns the prompt sampler, the engine calls, the reward functions and the shaping parts' state."""

    def __init__(self, cfg: RunConfig, engine: Any, params: SamplingParams, sampler: Any,
                 generator: torch.Generator, tokenizer: Any) -> None:
        self.cfg, self.engine, self.params, self.sampler = cfg, engine, params, sampler
        self.gen, self.tokenizer = generator, tokenizer
        self.shaping = [(SHAPINGS.get(sp.name), dict(sp.kwargs)) for sp in cfg.shaping]
        self.shaping_state: list[dict[str, Any]] = [{} for _ in self.shaping]

    def _generate(self, prompts: list[Prompt], params: SamplingParams, seed: int) -> RolloutBatch:
        """Engine call; an engine that judges its own attempts (multi_attempt) first gets the prompts."""
        bind = getattr(self.engine, "bind_prompts", None)
        if bind is not None:
            bind(prompts)
        return self.engine.generate([p.text for p in prompts], params, generator=generator_for(seed))

    # ----- scoring -----------------------------------------------------------------------
    def score(self, reps: list[Prompt], roll: RolloutBatch, group_ids: torch.Tensor, step: int) -> Scored:
        """Reward functions, then the shaping parts in order; unscorable rows are counted and neutralised."""
        cfg = self.cfg
        lengths = roll.response_mask.sum(1)
        res = score_rewards([(r.name, r.weight, r.kwargs) for r in cfg.rewards], reps, roll.response_texts,
                            roll.finish_reasons, response_lengths=lengths, on_error=cfg.reward_errors)
        per_fn, metrics = res.per_fn, dict(res.metrics)
        if cfg.accuracy_reward not in per_fn:
            per_fn[cfg.accuracy_reward] = score_rewards(
                [(cfg.accuracy_reward, 1.0)], reps, roll.response_texts, roll.finish_reasons,
                response_lengths=lengths, on_error=cfg.reward_errors).per_fn[cfg.accuracy_reward]
        scores, unscorable = _fill_unscorable(res.total, group_ids)
        mask = roll.response_mask
        token_part = torch.zeros(mask.shape)
        if res.token_scores is not None:
            w = min(token_part.shape[1], res.token_scores.shape[1])
            token_part[:, :w] = res.token_scores[:, :w] * mask[:, :w]
        token_rewards = place_on_last_token(scores - token_part.sum(1), mask) + token_part
        correct = torch.nan_to_num(per_fn[cfg.accuracy_reward], nan=0.0)
        for (fn, kwargs), state in zip(self.shaping, self.shaping_state):
            inp = ShapingInput(scores=scores, correct=correct, lengths=lengths, truncated=roll.truncated,
                               group_ids=group_ids, prompts=reps, completions=roll.response_texts,
                               max_len=cfg.rollout.max_new_tokens, step=step, response_ids=roll.response_ids,
                               response_mask=mask, tokenizer=self.tokenizer)
            out = fn(inp, state=state, **kwargs)
            scores = out.scores.float()
            metrics.update(out.metrics)
            token_rewards = (out.token_rewards.float() * mask if out.token_rewards is not None
                             else place_on_last_token(scores, mask))
        metrics["reward/unscorable_frac"] = float(unscorable.float().mean()) if unscorable.numel() else 0.0
        return Scored(scores, per_fn, token_rewards, unscorable, metrics)

    def greedy_rewards(self, prompts: list[Prompt], group_ids: torch.Tensor, step: int) -> torch.Tensor:
        """Reward of one greedy response per group (ReMax baseline), broadcast to the group's rows."""
        firsts = first_rows(group_ids)
        uniq = [prompts[i] for i in firsts.tolist()]
        greedy = self.params.model_copy(update={"temperature": 0.0, "n": 1})
        roll = self._generate(uniq, greedy, derive_seed(self.cfg.seed, "baseline", step))
        scores = self.score(uniq, roll, torch.arange(len(uniq)), step).scores
        by_group = dict(zip(group_ids[firsts].tolist(), scores.tolist()))
        return torch.tensor([by_group[g] for g in group_ids.tolist()], dtype=torch.float32)

    # ----- collection ---------------------------------------------------------------------
    def collect(self, step: int) -> Sampled:
        """Generate and score B groups; with dynamic sampling, keep only groups whose score varies and
        generate more until B such groups are collected or ``max_gen_batches`` rounds were spent."""
        cfg, n = self.cfg, self.params.n
        ds = cfg.algo.dynamic_sampling
        b = cfg.train.prompts_per_step
        rounds = ds.max_gen_batches if ds.enabled else 1
        seen: list[tuple[RolloutBatch, list[Prompt], Scored]] = []
        kept: list[torch.Tensor] = []
        t_gen = t_reward = 0.0
        n_kept = 0
        group_ids = torch.arange(b).repeat_interleave(n)
        for round_ in range(rounds):
            prompts = self.sampler.next(b)
            t0 = time.perf_counter()
            roll = self._generate(prompts, self.params, derive_seed(cfg.seed, "rollout", step, round_))
            t_gen += time.perf_counter() - t0
            reps = [p for p in prompts for _ in range(n)]
            t0 = time.perf_counter()
            scored = self.score(reps, roll, group_ids, step)
            t_reward += time.perf_counter() - t0
            seen.append((roll, reps, scored))
            record = getattr(self.sampler, "record_completed", None)  # adaptive domain sampling counts completions
            if record is not None:
                record(reps)
            if not ds.enabled:
                break
            metric = scored.per_fn[cfg.accuracy_reward] if ds.metric == "acc" else scored.scores
            keep = filter_groups(torch.nan_to_num(metric, nan=0.0), group_ids)
            kept.append(keep)
            n_kept += int(keep.sum()) // n
            if n_kept >= b:
                break
        all_roll = RolloutBatch.concat([x[0] for x in seen], self.engine.pad_id)
        width = all_roll.response_ids.shape[1]
        all_reps = [p for x in seen for p in x[1]]
        all_scores = torch.cat([x[2].scores for x in seen])
        all_tokens = torch.cat([F.pad(x[2].token_rewards, (0, width - x[2].token_rewards.shape[1])) for x in seen])
        all_bad = torch.cat([x[2].unscorable for x in seen])
        all_per_fn = {k: torch.cat([x[2].per_fn[k] for x in seen]) for k in seen[0][2].per_fn}
        rows = torch.arange(all_roll.size)
        extra: dict[str, float] = {k: v for x in seen for k, v in x[2].metrics.items()}
        if ds.enabled:
            keep_all = torch.cat(kept)
            if n_kept > 0:  # otherwise train on the last round: its advantages carry no signal either way
                rows = keep_all.nonzero().flatten()[: b * n]
            else:
                rows = torch.arange(all_roll.size - b * n, all_roll.size)
            extra.update({"dynamic_sampling/gen_batches": float(len(seen)),
                          "dynamic_sampling/kept_groups": float(min(n_kept, b))})
        probabilities = getattr(self.sampler, "probabilities", None)
        if probabilities is not None:
            extra.update({f"sampling/domain_p/{d}": p for d, p in probabilities().items()})
        train_roll = all_roll.select(rows)
        return Sampled(
            roll=train_roll, prompts=[all_reps[i] for i in rows.tolist()], scores=all_scores[rows],
            token_rewards=all_tokens[rows][:, : train_roll.response_ids.shape[1]], unscorable=all_bad[rows],
            group_ids=torch.arange(train_roll.size // n).repeat_interleave(n),
            metrics={**rollout_metrics(all_roll, all_scores, all_per_fn, n, cfg.accuracy_reward), **extra},
            t_gen=t_gen, t_reward=t_reward,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"shaping": self.shaping_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("shaping", [])
        for mine, theirs in zip(self.shaping_state, saved):
            mine.clear()
            mine.update(theirs)
