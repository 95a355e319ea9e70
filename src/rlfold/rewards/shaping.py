"""Reward shaping: parts between the reward functions and the advantage that see group, batch or history.

A shaping part is ``fn(inp: ShapingInput, *, state: dict, <keyword options>) -> Shaped``. It gets the
scores of the whole batch with their context (correctness, token lengths, truncation, groups, texts)
and returns new scores, optionally per-token rewards, and metrics. ``state`` is a dict the trainer
keeps for this part across steps and saves in checkpoints (HAPO's per-problem history, a sampler's
counts); a part mutates it in place. Parts are applied in the order of ``shaping:`` in the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from rlfold.core import registry
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


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Dense group index per row (0..G-1) and the number of groups."""
    _, inv = torch.unique(group_ids, return_inverse=True)
    return inv, int(inv.max().item()) + 1 if inv.numel() else 0


__all__ = ["SHAPINGS", "Shaped", "ShapingInput", "group_index"]
