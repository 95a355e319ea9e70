"""Length-based reward terms used by the policy-gradient recipes (the wider shaping family lives in issue 4)."""

from __future__ import annotations

from typing import Annotated, Sequence

import torch
from pydantic import Field

from rlfold.core.registry import needs
from rlfold.core.types import Prompt
from rlfold.rewards.base import REWARDS


@REWARDS.register("soft_overlong")
@needs("response_lengths")
def soft_overlong(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    response_lengths: torch.Tensor,
    max_len: Annotated[int, Field(gt=0)],
    cache: Annotated[int, Field(gt=0)],
    factor: Annotated[float, Field(ge=0)] = 1.0,
) -> list[float]:
    """DAPO soft overlong punishment on the token length |y| (Yu et al. 2025, arXiv 2503.14476).

    0 if |y| <= max_len - cache; ((max_len - cache) - |y|) / cache * factor inside the buffer;
    -factor at or beyond max_len (the paper's -1 with factor 1). ``max_len`` is normally the
    generation limit (rollout.max_new_tokens) and ``cache`` the length of the soft buffer.
    """
    if not 0 < cache <= max_len:
        raise ValueError(f"soft_overlong needs 0 < cache <= max_len, got cache={cache}, max_len={max_len}")
    start = max_len - cache
    out = []
    for n in response_lengths.tolist():
        if n <= start:
            out.append(0.0)
        elif n < max_len:
            out.append((start - n) / cache * factor)
        else:
            out.append(-factor)
    return out
