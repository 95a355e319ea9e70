"""Batch inputs supplied to parts that declare them with ``@needs`` (values, baselines, ...).

A provider is ``fn(ctx: StepContext) -> Tensor`` (or a list with one entry per row, such as
``response_texts``), registered in ``INPUTS`` under the input's name.
Registering one (here or from a user's ``imports`` module) makes a new input available to every part
without touching the online step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from rlfold.core.groups import first_rows
from rlfold.core.registry import Registry
from rlfold.core.types import Prompt, RolloutBatch

INPUTS: Registry = Registry("trainer input")


@dataclass
class StepContext:
    """What one step has produced so far, and the step's collaborators, for the input providers."""

    step: int
    prompts: list[Prompt]         # [N] prompt of each row
    roll: RolloutBatch
    scores: Tensor                # [N] weighted reward sum
    rewards: Tensor               # [N] scores minus the in-reward KL (if any)
    token_rewards: Tensor         # [N, R]
    group_ids: Tensor             # [N]
    collector: Any = None         # the step's RolloutCollector (more rollouts: ReMax's greedy baseline)
    critic: Any = None            # the step's Critic, if the recipe has one
    tokenizer: Any = None         # the policy's tokenizer (inputs that map tokens to text)
    per_fn: dict[str, Tensor] = field(default_factory=dict)  # [N] raw score of each reward function, recipe order
    cache: dict[str, Any] = field(default_factory=dict)
    total_steps: int | None = None  # the run's train.steps (progress-based curricula), None when unknown
    old_logprobs: Tensor | None = None  # [N, R] log-probs of the policy the update starts from (stage 2)
    ref_logprobs: Tensor | None = None  # [N, R] log-probs of the reference model (stage 2), None without one
    model: Any = None             # the policy being trained (inputs that score other contexts with it, no grad)
    autocast: Any = None          # the update's precision context factory (models.placement.Autocast)
    part_state: dict[str, Any] = field(default_factory=dict)  # state of stateful parts (input ``part_state``)


Provider = Callable[[StepContext], Any]

# Tokens decoded together with each response token to measure its text: enough context for
# tokenizers whose pieces change at word starts (SentencePiece's leading space) or split a character
# over several byte tokens.
_DETOK_WINDOW = 4


@INPUTS.register("token_rewards")
def _token_rewards(ctx: StepContext) -> Tensor:
    return ctx.token_rewards


@INPUTS.register("reward_columns")
def _reward_columns(ctx: StepContext) -> Tensor:
    """[N, F] the raw score of each reward function of the recipe, column j = the j-th of ``rewards:``."""
    if not ctx.per_fn:
        raise RuntimeError("a part needs 'reward_columns' but the step has no per-function scores")
    return torch.stack([v.to(torch.float64) for v in ctx.per_fn.values()], dim=1)


@INPUTS.register("train_progress")
def _train_progress(ctx: StepContext) -> Tensor:
    """[N] float64: how far the run is, step / (total_steps - 1) clamped to [0, 1], the same on every row."""
    if ctx.total_steps is None:
        raise RuntimeError("a part needs 'train_progress' but the step does not know the run's total steps")
    p = min(max(ctx.step / max(ctx.total_steps - 1, 1), 0.0), 1.0)
    return torch.full((ctx.group_ids.shape[0],), p, dtype=torch.float64)


@INPUTS.register("train_step")
def _train_step(ctx: StepContext) -> Tensor:
    """[N] float64: the step index (0 at the run's first step), the same on every row."""
    return torch.full((ctx.group_ids.shape[0],), float(ctx.step), dtype=torch.float64)


@INPUTS.register("part_state")
def _part_state(ctx: StepContext) -> dict[str, Any]:
    """The run's checkpointed dict of part state: a part that keeps state across steps (RiskPO's quantile
    tracker) reads and writes plain data under its own key; the same dict at every step."""
    return ctx.part_state


@INPUTS.register("old_logprobs")
def _old_logprobs(ctx: StepContext) -> Tensor:
    """[N, R] log-probs of the policy the update starts from: the engine's, or the trainer's recomputation."""
    if ctx.old_logprobs is None:
        raise RuntimeError("a part needs 'old_logprobs' but the step has computed none")
    return ctx.old_logprobs


@INPUTS.register("ref_logprobs")
def _ref_logprobs(ctx: StepContext) -> Tensor:
    """[N, R] log-probs of the reference model (the frozen initial policy) on the batch's responses."""
    if ctx.ref_logprobs is None:
        raise RuntimeError("a part needs 'ref_logprobs' but the step has no reference model")
    return ctx.ref_logprobs


@INPUTS.register("truncated")
def _truncated(ctx: StepContext) -> Tensor:
    return ctx.roll.truncated


@INPUTS.register("values")
def _values(ctx: StepContext) -> Tensor:
    """V(s_t) of the run's critic at every response position."""
    if ctx.critic is None:
        raise RuntimeError("a part needs 'values' but the run has no critic")
    if "values" not in ctx.cache:
        ctx.cache["values"] = ctx.critic.values(ctx.roll)
    return ctx.cache["values"]


@INPUTS.register("baseline_rewards")
def _greedy_baseline(ctx: StepContext) -> Tensor:
    """ReMax baseline (arXiv 2310.10505): the reward of one greedy response per prompt, broadcast to its rows."""
    if "baseline_rewards" not in ctx.cache:
        firsts = first_rows(ctx.group_ids)
        uniq = [ctx.prompts[i] for i in firsts.tolist()]
        greedy = ctx.collector.params.model_copy(update={"temperature": 0.0, "n": 1})
        _, scored = ctx.collector.generate_and_score(uniq, greedy, torch.arange(len(uniq)), ctx.step,
                                                     "baseline", ctx.step)
        by_group = dict(zip(ctx.group_ids[firsts].tolist(), scored.scores.tolist()))
        ctx.cache["baseline_rewards"] = torch.tensor([by_group[g] for g in ctx.group_ids.tolist()],
                                                     dtype=torch.float32)
    return ctx.cache["baseline_rewards"]


@INPUTS.register("response_texts")
def _response_texts(ctx: StepContext) -> list[str]:
    """[N] the decoded text of each response (special tokens skipped), as the rewards saw it."""
    return list(ctx.roll.response_texts)


@INPUTS.register("response_char_ends")
def _response_char_ends(ctx: StepContext) -> Tensor:
    """[N, R] long: how many characters of the decoded response end at or before each response token."""
    if ctx.tokenizer is None:
        raise RuntimeError("a part needs 'response_char_ends' but the step has no tokenizer")
    if "response_char_ends" not in ctx.cache:
        ctx.cache["response_char_ends"] = token_char_ends(ctx.tokenizer, ctx.roll.response_ids,
                                                          ctx.roll.attention)
    return ctx.cache["response_char_ends"]


def token_char_ends(tokenizer: Any, ids: Tensor, mask: Tensor, window: int = _DETOK_WINDOW) -> Tensor:
    """Character end of every token of right-padded ``ids`` ``[N, R]`` in its row's decoded text.

    A token's length is ``len(decode(ids[s:t+1])) - len(decode(ids[s:t]))`` with ``s = t - window``
    (streaming detokenisation: both decodes see the same left context, so a word-start space or a
    multi-byte character is counted where it is completed), and the ends are their running sum.
    ``mask`` is 1 on the first tokens of each row (right padding); padded positions repeat the last
    end. Special tokens decode to nothing.
    """
    rows, width = ids.shape
    lengths = mask.sum(dim=1).tolist()
    ids_list = ids.tolist()
    with_tok, without_tok = [], []
    for i in range(rows):
        for t in range(int(lengths[i])):
            s = max(0, t - window)
            with_tok.append(ids_list[i][s:t + 1])
            without_tok.append(ids_list[i][s:t])
    a = tokenizer.batch_decode(with_tok, skip_special_tokens=True) if with_tok else []
    b = tokenizer.batch_decode(without_tok, skip_special_tokens=True) if without_tok else []
    pieces = torch.zeros(rows, width, dtype=torch.long)
    k = 0
    for i in range(rows):
        n = int(lengths[i])
        pieces[i, :n] = torch.tensor([max(0, len(x) - len(y)) for x, y in zip(a[k:k + n], b[k:k + n])],
                                     dtype=torch.long)
        k += n
    return pieces.cumsum(dim=1)


def take_rows(inputs: dict[str, Any], rows: Tensor) -> dict[str, Any]:
    """Each provided input restricted to (or resampled as) ``rows``: tensors indexed, lists picked; the
    ``part_state`` dict (not per row) as it is."""
    picked = rows.tolist()
    return {k: v if isinstance(v, dict) else v[rows] if isinstance(v, Tensor) else [v[i] for i in picked]
            for k, v in inputs.items()}


def provide(names: tuple[str, ...], ctx: StepContext) -> dict[str, Any]:
    """The named inputs, each from its registered provider."""
    return {name: INPUTS.get(name)(ctx) for name in names}


__all__ = ["INPUTS", "Provider", "StepContext", "provide", "take_rows", "token_char_ends"]

# Providers defined in their own modules register here, so that they are available wherever INPUTS is.
from rlfold.trainers import teacher_inputs as _teacher_inputs  # noqa: E402,F401  (registers cepo_delta)
from rlfold.trainers import step_potential as _step_potential  # noqa: E402,F401  (registers spae_steps, spae_potential)
