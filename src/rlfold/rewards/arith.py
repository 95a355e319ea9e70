"""Verifiable rewards for short numeric answers."""

from __future__ import annotations

import re
from typing import Sequence

from rlfold.core.types import FINISH_STOP, Prompt
from rlfold.rewards.base import REWARDS

_INTEGER = re.compile(r"-?\d+")


@REWARDS.register("exact_match")
def exact_match(prompts: Sequence[Prompt], completions: Sequence[str], finishes: Sequence[str]) -> list[float]:
    """1 if the stripped completion equals the gold answer, else 0 (verifiable reward, as in RLVR / Tulu 3)."""
    return [1.0 if c.strip() == p.answer.strip() else 0.0 for p, c in zip(prompts, completions)]


@REWARDS.register("format")
def integer_format(prompts: Sequence[Prompt], completions: Sequence[str], finishes: Sequence[str]) -> list[float]:
    """1 if the completion is a bare integer that ended on a stop token (format reward, DeepSeek-R1 style)."""
    return [
        1.0 if f == FINISH_STOP and _INTEGER.fullmatch(c.strip() or "x") else 0.0
        for c, f in zip(completions, finishes)
    ]


@REWARDS.register("final_answer")
def final_answer(prompts: Sequence[Prompt], completions: Sequence[str], finishes: Sequence[str]) -> list[float]:
    """1 if the last integer of a completion that stopped is the gold answer (rule-based outcome reward, DeepSeek-R1, arXiv 2501.12948)."""
    out = []
    for p, c, f in zip(prompts, completions, finishes):
        found = _INTEGER.findall(c)
        out.append(1.0 if f == FINISH_STOP and found and found[-1] == p.answer.strip() else 0.0)
    return out
