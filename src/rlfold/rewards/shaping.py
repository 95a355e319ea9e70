"""Reward shaping: parts between the reward functions and the advantage that see group, batch or history.

A shaping part is ``fn(inp: ShapingInput, *, state: dict, <keyword options>) -> Shaped``. It gets the
scores of the whole batch with their context (correctness, token lengths, truncation, groups, texts)
and returns new scores, optionally per-token rewards, and metrics. ``state`` is a dict the trainer
keeps for this part across steps and saves in checkpoints (HAPO's per-problem history, a sampler's
counts); a part mutates it in place. Parts are applied in the order of ``shaping:`` in the recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from rlfold.core import registry
from rlfold.core.registry import Registry
from rlfold.core.types import Prompt

SHAPINGS = registry.SHAPINGS

ShapingFn = Callable[..., "Shaped"]


@dataclass(frozen=True)
class ShapingInput:
    """One batch of scored samples (rows of the same prompt share a group id)."""

    scores: Tensor                # [N] current total reward (after earlier shaping parts)
    correct: Tensor               # [N] accuracy reward (verifier 0/1)
    lengths: Tensor               # [N] response length in tokens
    truncated: Tensor             # [N] bool: cut at the generation limit
    group_ids: Tensor             # [N]
    prompts: Sequence[Prompt]     # [N]
    completions: Sequence[str]    # [N] decoded responses
    max_len: int                  # generation limit (rollout.max_new_tokens)
    step: int = 0                 # optimiser step about to be taken (0-based)
    response_ids: Tensor | None = None   # [N, R] response token ids
    response_mask: Tensor | None = None  # [N, R]
    tokenizer: Any = None                # to map text spans to tokens (token-level parts)


@dataclass
class Shaped:
    """New scores [N]; ``token_rewards`` [N, R] replaces placing the score on the last token when given."""

    scores: Tensor
    token_rewards: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


# ----- helpers shared by the shaping parts -------------------------------------------------------


def correct_mask(inp: ShapingInput) -> Tensor:
    """Bool [N]: the rows whose accuracy reward is at least 0.5 (NaN counts as incorrect)."""
    correct = torch.nan_to_num(inp.correct.detach().float(), nan=0.0)
    return correct >= 0.5


def resolve_part(pieces: Registry, part: str | Callable[..., Any]) -> Callable[..., Any]:
    """A pluggable piece given by name (looked up in ``pieces``) or, from Python, as the callable."""
    return part if callable(part) else pieces.get(part)


def valid_columns(inp: ShapingInput, n_rows: int) -> tuple[Tensor, list[Tensor]]:
    """Response mask [N, R] (built from ``lengths`` when absent) and each row's valid column indices."""
    if inp.response_mask is not None:
        mask = inp.response_mask.bool()
    else:
        lengths = inp.lengths.long()
        width = int(lengths.max().item()) if lengths.numel() else 0
        mask = torch.arange(width)[None, :] < lengths[:, None]
    return mask, [torch.nonzero(mask[i]).flatten() for i in range(n_rows)]


def sigmoid(x: float) -> float:
    """Logistic function of a float, evaluated without overflow for large |x|."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


__all__ = ["SHAPINGS", "Shaped", "ShapingInput", "correct_mask", "resolve_part", "sigmoid", "valid_columns"]
