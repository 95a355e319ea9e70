"""Deliberately hackable proxy rewards, for demonstrating regularisers against reward hacking.

"Correlated Proxies" (Laidlaw et al., arXiv 2403.03185) calls a proxy hackable when it agrees with the
true reward near the reference policy but not far from it. ``length_bonus_proxy`` is such a proxy
for the verbose-arithmetic base: a lenient grader that likes long answers. It pays when the gold
answer appears anywhere in the response, plus a bonus growing with the response length, and it does
not mind a response cut at the length limit. The true reward is ``final_answer`` (the response
stopped and its last integer is the answer). Under the base, which re-checks its answer zero to four
times and is rarely cut off, the two rank responses alike; a policy that learns to write ever longer
earns more proxy reward while more of its responses are cut off, which ``final_answer`` scores 0.
Never train a real model on it.
"""

from __future__ import annotations

import re
from typing import Annotated, Sequence

import torch
from pydantic import Field

from rlfold.core.registry import needs
from rlfold.core.types import Prompt
from rlfold.rewards.base import REWARDS

_INTEGER = re.compile(r"-?\d+")


@REWARDS.register("length_bonus_proxy")
@needs("response_lengths")
def length_bonus_proxy(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    response_lengths: torch.Tensor,
    cap: Annotated[int, Field(gt=0, description="response length in tokens at which the bonus is full "
                                                "(normally rollout.max_new_tokens)")],
    bonus: Annotated[float, Field(ge=0, description="extra reward of a response of `cap` tokens or more")] = 1.0,
) -> list[float]:
    """Deliberately hackable proxy for the χ² regulariser demonstration ("Correlated Proxies", arXiv 2403.03185).

    1[the gold answer is one of the response's integers] · (1 + bonus · min(L, cap) / cap), L the
    response length in tokens, whether or not the response stopped; ``final_answer`` is the true reward
    it stands in for.
    """
    out = []
    for p, c, n in zip(prompts, completions, response_lengths.tolist()):
        gold = p.answer.strip()
        found = gold != "" and gold in _INTEGER.findall(c)
        out.append(1.0 + bonus * min(int(n), cap) / cap if found else 0.0)
    return out


__all__ = ["length_bonus_proxy"]
