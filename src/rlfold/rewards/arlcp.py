"""ARLCP: adaptive reflection and length coordinated penalty (arXiv 2602.12113), a shaping part.

See ``rlfold.rewards.shaping`` for the interface. A row is correct when ``inp.correct >= 0.5``.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
import statistics
from collections.abc import Sequence
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from rlfold.core.groups import group_index
from rlfold.rewards.shaping import SHAPINGS, Shaped, ShapingInput, correct_mask, sigmoid

__all__ = ["ARLCP_KEYWORDS", "arlcp", "arlcp_rewards", "reflection_count"]

ARLCP_KEYWORDS: tuple[str, ...] = (
    "wait", "alternatively", "hold on", "another thought", "verify", "think again", "but",
    "however", "alternative", "check", "double-check", "oh", "hmm",
)


@functools.lru_cache(maxsize=32)
def _keyword_pattern(keywords: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(re.escape(k) for k in keywords) + r")\b", re.IGNORECASE)


def reflection_count(text: str, keywords: Sequence[str] = ARLCP_KEYWORDS) -> int:
    """Number of non-overlapping case-insensitive matches of ``\\b(kw1|kw2|...)\\b`` in ``text``.

    Alternatives are tried in the given order (the reference order), so "double-check" counts once.
    """
    if not keywords:
        return 0
    return len(_keyword_pattern(tuple(keywords)).findall(text))


def _mean_std(values: list[float]) -> tuple[float, float]:
    """ARLCP group statistics: sample std (n-1); one value -> std 1; none -> mean 0, std 1."""
    if not values:
        return 0.0, 1.0
    if len(values) == 1:
        return values[0], 1.0
    return statistics.fmean(values), statistics.stdev(values)


def arlcp_rewards(reflections: Tensor, lengths: Tensor, correct: Tensor, group_ids: Tensor, *,
                  tiers: Sequence[float] = (40, 80), w1s: Sequence[float] = (0.05, 0.10, 0.15),
                  w_total: float = 0.2) -> tuple[Tensor, Tensor]:
    """ARLCP rewards [N] and the reflection weight w1 [N] (0 on incorrect rows); see ``arlcp``."""
    _check_tiers(tiers, w1s, w_total)
    inv, n_groups = group_index(group_ids)
    ok = correct.bool().tolist()
    refl, lens = reflections.double().tolist(), lengths.double().tolist()
    rewards = [0.0] * len(ok)
    weights = [0.0] * len(ok)
    for g in range(n_groups):
        rows = [i for i in (inv == g).nonzero().flatten().tolist() if ok[i]]
        mu_r, s_r = _mean_std([refl[i] for i in rows])
        mu_l, s_l = _mean_std([lens[i] for i in rows])
        for i in rows:
            w1 = w1s[bisect.bisect_left(list(tiers), refl[i])]  # R <= t0 -> w1s[0], ...
            w2 = w_total - w1
            rewards[i] = (1.0 - w1 * sigmoid((refl[i] - mu_r) / (s_r + 1e-6))
                          - w2 * sigmoid((lens[i] - mu_l) / (s_l + 1e-6)))
            weights[i] = w1
    return torch.tensor(rewards, dtype=torch.float32), torch.tensor(weights, dtype=torch.float32)


def _check_tiers(tiers: Sequence[float], w1s: Sequence[float], w_total: float) -> None:
    if len(w1s) != len(tiers) + 1:
        raise ValueError(f"arlcp needs len(w1s) == len(tiers) + 1, got tiers={list(tiers)}, w1s={list(w1s)}")
    if any(b <= a for a, b in itertools.pairwise(tiers)):
        raise ValueError(f"arlcp tiers must be strictly increasing, got {list(tiers)}")
    if any(not 0.0 <= w <= w_total for w in w1s):
        raise ValueError(f"arlcp needs 0 <= w1 <= w_total={w_total} for every tier, got {list(w1s)}")


@SHAPINGS.register("arlcp")
def arlcp(
    inp: ShapingInput,
    *,
    state: dict,
    keywords: Annotated[Sequence[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = ARLCP_KEYWORDS,
    tiers: Sequence[Annotated[float, Field(ge=0)]] = (40, 80),
    w1s: Annotated[Sequence[Annotated[float, Field(ge=0)]], Field(min_length=1)] = (0.05, 0.10, 0.15),
    w_total: Annotated[float, Field(ge=0)] = 0.2,
) -> Shaped:
    """ARLCP adaptive reflection and length coordinated penalty (Yu et al., arXiv 2602.12113).

    Reflection count R = number of case-insensitive matches of ``\\b(kw1|...|kw13)\\b`` over the
    whole completion (think + answer) with the 13 keywords of ``ARLCP_KEYWORDS`` (option
    ``keywords``); L = token length (``inp.lengths``). Over the *correct* rows of each group:
    mean and sample std (n-1) of R and of L; a single correct row has std 1; none: mean 0, std 1.

    correct:   r = 1 - w1 sigma((R - mu_R)/(s_R + 1e-6)) - w2 sigma((L - mu_L)/(s_L + 1e-6))
    incorrect: r = 0

    with the complexity tier w1 = w1s[0] if R <= tiers[0], w1s[1] if R <= tiers[1], else w1s[2]
    (0.05 / 0.10 / 0.15 at 40 / 80) and w2 = w_total - w1 (w_total = 0.2). The result REPLACES the
    score (earlier scores are discarded, as in the reference reward manager). The reference grader
    (``<think>`` format check, DeepScaleR equality) is not repeated here: correctness is
    ``inp.correct``. State unused. Metrics ``shaping/arlcp/{reflections_mean,
    reflections_mean_correct, w1_mean_correct, reward_mean_correct, frac_correct}``.
    """
    ok = correct_mask(inp)
    refl = torch.tensor([reflection_count(t, keywords) for t in inp.completions], dtype=torch.float64)
    rewards, w1 = arlcp_rewards(refl, inp.lengths, ok, inp.group_ids, tiers=tiers, w1s=w1s, w_total=w_total)
    n_ok = int(ok.sum().item())
    metrics = {
        "shaping/arlcp/reflections_mean": float(refl.mean().item()) if refl.numel() else 0.0,
        "shaping/arlcp/reflections_mean_correct": float(refl[ok].mean().item()) if n_ok else 0.0,
        "shaping/arlcp/w1_mean_correct": float(w1[ok].mean().item()) if n_ok else 0.0,
        "shaping/arlcp/reward_mean_correct": float(rewards[ok].mean().item()) if n_ok else 0.0,
        "shaping/arlcp/frac_correct": n_ok / ok.numel() if ok.numel() else 0.0,
    }
    return Shaped(scores=rewards, metrics=metrics)
