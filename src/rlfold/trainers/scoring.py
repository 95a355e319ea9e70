"""The scoring stage: reward functions, then the shaping parts in order, with their checkpointed state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from rlfold.core.types import Prompt, RolloutBatch
from rlfold.rewards import SHAPINGS, ShapingInput, score_rewards
from rlfold.rewards.aggregation import REWARD_AGGREGATORS, AggregationInput, weighted_sum
from rlfold.rewards.base import ScoreResult, extras_rows
from rlfold.rewards.shaping import resolve_part


@dataclass
class Scored:
    """Scores of one batch of rollouts, after the shaping parts."""

    scores: torch.Tensor          # [N] after aggregation and shaping; unscorable rows hold their group's mean
    per_fn: dict[str, torch.Tensor]
    token_rewards: torch.Tensor   # [N, R] reward per response token (sums to ``scores`` per row)
    unscorable: torch.Tensor      # [N] bool: the aggregator left the reward unknown (e.g. every function returned None)
    metrics: dict[str, float] = field(default_factory=dict)


def place_on_last_token(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, R]: each score on the row's last valid token, 0 elsewhere."""
    out = torch.zeros(mask.shape, dtype=torch.float32)
    valid = mask.bool()
    idx = torch.arange(mask.shape[1]).expand_as(mask)
    last = torch.where(valid, idx, torch.full_like(idx, -1)).max(dim=1).values
    has = last >= 0
    out[has.nonzero().flatten(), last[has]] = scores[has].float()
    return out


def fill_unscorable(scores: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


# float32 statistics of the rewards (group variances, whitening, discounted sums) square and sum them;
# beyond this magnitude they overflow, and an advantage divided by an infinite std is silently 0.
_F32_MAX = torch.finfo(torch.float32).max


def reward_problem(rewards: torch.Tensor, token_rewards: torch.Tensor, mask: torch.Tensor) -> str | None:
    """Why a step's rewards cannot train (None if they can): a non-finite reward, or rewards so large
    that the advantage statistics overflow float32 (their squares summed over the batch)."""
    tokens = torch.where(mask.bool(), token_rewards.float(), torch.zeros((), dtype=torch.float32))
    for name, x in (("reward", rewards.float()), ("per-token reward", tokens)):
        flat = x.flatten()
        bad = ~torch.isfinite(flat)
        if bool(bad.any()):
            return (f"{int(bad.sum())} {name}s are non-finite (e.g. {flat[bad][0].item()}); rewards must be finite "
                    "numbers: check the reward functions, rewards[].weight and the KL term")
        if flat.numel() and not bool(torch.isfinite(flat.square().sum())):
            big = flat.abs().max().item()
            return (f"{name}s up to |r| = {big:.3g} overflow the advantage statistics (their squares exceed the "
                    f"float32 range {_F32_MAX:.3g}), which would make every advantage 0 or NaN; rescale the rewards "
                    "(rewards[].weight, the reward function) to a moderate range such as [-10, 10]")
    return None


class Scorer:
    """Scores rollouts with the run's reward functions and shaping parts.

    ``rewards``: ``(name, weight, kwargs)`` specs; ``accuracy_reward`` is always scored (for
    ``acc/mean`` and the group filters) even when it carries no weight; ``shaping``: ``(name,
    kwargs)`` specs whose per-part state dicts are checkpointed; ``max_len``: the generation limit the
    shaping parts measure lengths against; ``score``: what scores the reward functions (``score_rewards``
    in this process, or a pool of reward workers with its interface); ``aggregation``: ``(name or
    callable, kwargs)`` of the reward aggregator that combines the functions' scores into one reward
    before the shaping parts (default: their weighted sum).
    """

    def __init__(self, rewards: Sequence[tuple[str, float, dict[str, Any]]], accuracy_reward: str, on_error: str,
                 shaping: Sequence[tuple[str, dict[str, Any]]], max_len: int, tokenizer: Any,
                 score: Callable[..., ScoreResult] = score_rewards,
                 aggregation: tuple[str | Callable[..., Any], dict[str, Any]] = (weighted_sum, {})) -> None:
        self.score = score
        self.aggregate, self.aggregation_kwargs = resolve_part(REWARD_AGGREGATORS, aggregation[0]), dict(aggregation[1])
        self.rewards, self.accuracy_reward, self.on_error = list(rewards), accuracy_reward, on_error
        self.shaping = [(SHAPINGS.get(name), dict(kwargs)) for name, kwargs in shaping]
        self.shaping_state: list[dict[str, Any]] = [{} for _ in self.shaping]
        self.max_len, self.tokenizer = max_len, tokenizer

    def __call__(self, reps: list[Prompt], roll: RolloutBatch, group_ids: torch.Tensor, step: int) -> Scored:
        """Reward functions, the aggregator, then the shaping parts in order; unscorable rows are counted and
        neutralised."""
        lengths = roll.response_mask.sum(1)
        extras = extras_rows(roll.extras, roll.size)
        res = self.score(self.rewards, reps, roll.response_texts, roll.finish_reasons, response_lengths=lengths,
                         on_error=self.on_error, rollout_extras=extras)
        per_fn, metrics = res.per_fn, dict(res.metrics)
        agg = self.aggregate(AggregationInput(per_fn=dict(per_fn), weights={r[0]: float(r[1]) for r in self.rewards},
                                              weighted_sum=res.total, token_scores=res.token_scores),
                             **self.aggregation_kwargs)
        metrics.update(agg.metrics)
        acc = self.accuracy_reward
        if acc not in per_fn:
            per_fn[acc] = self.score([(acc, 1.0)], reps, roll.response_texts, roll.finish_reasons,
                                     response_lengths=lengths, on_error=self.on_error,
                                     rollout_extras=extras).per_fn[acc]
        scores, unscorable = fill_unscorable(agg.scores.float(), group_ids)
        mask = roll.response_mask
        token_part = torch.zeros(mask.shape)
        if agg.token_scores is not None:
            w = min(token_part.shape[1], agg.token_scores.shape[1])
            token_part[:, :w] = agg.token_scores[:, :w] * mask[:, :w]
        token_rewards = place_on_last_token(scores - token_part.sum(1), mask) + token_part
        correct = torch.nan_to_num(per_fn[acc], nan=0.0)
        for (fn, kwargs), state in zip(self.shaping, self.shaping_state):
            inp = ShapingInput(scores=scores, correct=correct, lengths=lengths, truncated=roll.truncated,
                               group_ids=group_ids, prompts=reps, completions=roll.response_texts,
                               max_len=self.max_len, step=step, response_ids=roll.response_ids,
                               response_mask=mask, tokenizer=self.tokenizer)
            out = fn(inp, state=state, **kwargs)
            scores = out.scores.float()
            metrics.update(out.metrics)
            token_rewards = (out.token_rewards.float() * mask if out.token_rewards is not None
                             else place_on_last_token(scores, mask))
        metrics["reward/unscorable_frac"] = float(unscorable.float().mean()) if unscorable.numel() else 0.0
        return Scored(scores, per_fn, token_rewards, unscorable, metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"shaping": self.shaping_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for mine, theirs in zip(self.shaping_state, state.get("shaping", [])):
            mine.clear()
            mine.update(theirs)


__all__ = ["Scored", "Scorer", "fill_unscorable", "place_on_last_token", "reward_problem"]
