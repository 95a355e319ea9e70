"""Rewarding Doubt (arXiv 2503.02623): a reward for the confidence a model states with its answer,
paid by the logarithmic scoring rule.

The docstrings say which parts follow the paper, which follow the official code, and what was
chosen where neither says.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Sequence

from pydantic import Field

from rlfold.core.options import registered
from rlfold.core.registry import CONFIDENCE_PARSERS
from rlfold.core.types import Prompt
from rlfold.rewards.answer_match import VERIFIERS, resolve_verifier
from rlfold.rewards.base import REWARDS

__all__ = ["VERIFIERS", "answer_confidence", "answer_confidence_match", "doubt_score", "parse_answer_confidence",
           "rewarding_doubt"]

# ----------------------------------------------------------------------------- Rewarding Doubt

# "Answer: <answer>, Confidence: <0-10>" (the paper's answer format). The confidence must be a whole number: a
# decimal ("0.8") or a percentage ("80%") is not read as its leading digits but counts as invalid.
_DOUBT = re.compile(r"Answer:\s*(?P<answer>.*?),\s*Confidence:\s*(?P<confidence>\d+)(?!\d|\.\d|\s*%)")


def parse_answer_confidence(completion: str) -> tuple[str, int] | None:
    """``(answer, confidence)`` from the first ``"Answer: <a>, Confidence: <0-10>"``, or None if absent.

    The confidence returned may be out of range (e.g. 11); the caller decides validity.
    """
    m = _DOUBT.search(completion)
    if m is None:
        return None
    return m.group("answer").strip(), int(m.group("confidence"))


@CONFIDENCE_PARSERS.register("answer_confidence")
def answer_confidence(completion: str) -> float | None:
    """Rewarding Doubt (arXiv 2503.02623): the confidence stated as ``"Answer: <a>, Confidence: <0-10>"``, as p = c / 10.

    None when the format is absent or the confidence is outside 0..10 (what the reward pays the invalid
    penalty for). Named by ``eval.confidence`` for the held-out ``ece`` / ``brier`` metrics.
    """
    parsed = parse_answer_confidence(completion)
    if parsed is None or not 0 <= parsed[1] <= 10:
        return None
    return parsed[1] / 10.0


def doubt_score(
    correct: bool,
    confidence: int | None,
    *,
    scale: float = 10.0,
    eps: float = 0.001,
    normalize: bool = True,
    correct_bonus: float = 0.25,
    invalid_reward: float | None = None,
) -> float:
    """The Rewarding Doubt reward of one answer stated with ``confidence`` in 0..10.

    p = clip(confidence / 10, eps, 1 - eps); s = log p if correct else log(1 - p) (the paper's
    logarithmic scoring rule). With ``normalize`` (official code), s is mapped to
    n = (s - m_min) / (m_max - m_min) with m_max = log(1 - eps), m_min = log(eps) / 2, and the
    reward is ``scale * (n + correct_bonus * correct)``; without it the reward is
    ``scale * (s + correct_bonus * correct)`` (``scale=1, correct_bonus=0`` is the paper's raw score).
    A missing confidence, or one outside 0..10, gets ``invalid_reward`` (default ``-3 * scale``,
    the official code's penalty).
    """
    if confidence is None or confidence < 0 or confidence > 10:
        return -3.0 * scale if invalid_reward is None else float(invalid_reward)
    p = min(max(confidence / 10.0, eps), 1.0 - eps)
    s = math.log(p) if correct else math.log(1.0 - p)
    if normalize:
        m_max, m_min = math.log(1.0 - eps), math.log(eps) / 2.0
        s = (s - m_min) / (m_max - m_min)
    return scale * (s + (correct_bonus if correct else 0.0))


@REWARDS.register("rewarding_doubt")
def rewarding_doubt(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    verifier: Annotated[str, registered(VERIFIERS, "verifier")] = "exact_match",
    scale: Annotated[float, Field(gt=0)] = 10.0,
    eps: Annotated[float, Field(gt=0, lt=0.5)] = 0.001,
    normalize: bool = True,
    correct_bonus: float = 0.25,
    invalid_reward: float | None = None,
) -> list[float]:
    """Rewarding Doubt (arXiv 2503.02623): pay a stated confidence by the log scoring rule.

    The completion states ``"Answer: <answer>, Confidence: <0-10>"``; the answer is checked against
    ``prompt.answer`` with ``verifier`` (``exact_match``: stripped equality; or
    ``normalized_exact_match``: TriviaQA normalisation, the paper's metric). The score is
    ``doubt_score`` (defaults: the official code's normalised form, scale 10, +0.25 when correct,
    -30 for a missing or out-of-range confidence; e.g. confidence 8 correct -> 11.8566, wrong -> 5.3417).
    For a correct answer the reward rises with the confidence, for a wrong one it falls.
    """
    check = resolve_verifier(verifier, "rewarding_doubt")
    out: list[float] = []
    for p, c in zip(prompts, completions):
        parsed = parse_answer_confidence(c)
        if parsed is None:
            out.append(doubt_score(False, None, scale=scale, eps=eps, normalize=normalize,
                                   correct_bonus=correct_bonus, invalid_reward=invalid_reward))
            continue
        answer, conf = parsed
        out.append(doubt_score(check(answer, p.answer), conf, scale=scale, eps=eps, normalize=normalize,
                               correct_bonus=correct_bonus, invalid_reward=invalid_reward))
    return out


@REWARDS.register("answer_confidence_match")
def answer_confidence_match(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    verifier: Annotated[str, registered(VERIFIERS, "verifier")] = "exact_match",
) -> list[float]:
    """Rewarding Doubt (arXiv 2503.02623) accuracy: 1 if the answer of ``"Answer: <a>, Confidence: <c>"`` is right.

    The answer is checked against ``prompt.answer`` with ``verifier`` (as in ``rewarding_doubt``); a
    completion without the format scores 0. The confidence is not judged (it may be out of range):
    this is the accuracy that calibration is measured against.
    """
    check = resolve_verifier(verifier, "answer_confidence_match")
    out: list[float] = []
    for p, c in zip(prompts, completions):
        parsed = parse_answer_confidence(c)
        out.append(1.0 if parsed is not None and check(parsed[0], p.answer) else 0.0)
    return out
