"""EMPO: label-free RLVR that rewards agreement with the group, minimising semantic entropy (arXiv 2504.05812).

A shaping part (interface in :mod:`rlfold.rewards.shaping`). It reads only the completions and the group
ids of the batch: never ``prompt.answer`` and never ``inp.correct`` (the accuracy reward, which the
scorer computes from the gold for logging). The G responses of a prompt are clustered by the
equivalence of their final answers; a response's reward is the share of the group in its cluster
(a soft majority vote), and the group's semantic entropy H = -sum_c p(c) log p(c) is logged. The GRPO
advantage of the recipe then pushes the policy towards the answers it already agrees on.

Answer extractors (the ``answer`` option) map a completion to a canonical answer (None: no answer)
and name the equivalence used to cluster: ``final_answer`` (the last integer, compared by value; the
arithmetic tasks), ``math_verify`` (the project's math-verify parse of the completion, clusters
joined by ``verify``; math tasks) and ``exact`` (the stripped completion text).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from rlfold.core.groups import group_index
from rlfold.core.options import group_relative
from rlfold.rewards import math as _math_reward
from rlfold.rewards.shaping import SHAPINGS, Shaped, ShapingInput

__all__ = ["cluster_answers", "empo", "empo_group", "extract_answers"]

_INTEGER = re.compile(r"-?\d+")


def _last_integer(texts: Sequence[str], timeout_seconds: int | None) -> list[Any]:
    out: list[Any] = []
    for t in texts:
        found = _INTEGER.findall(t)
        out.append(int(found[-1]) if found else None)
    return out


def _stripped(texts: Sequence[str], timeout_seconds: int | None) -> list[Any]:
    return [t.strip() or None for t in texts]


def _math_verify_parse(texts: Sequence[str], timeout_seconds: int | None) -> list[Any]:
    mv = _math_reward._mv()
    t = timeout_seconds if _math_reward._timeouts_allowed() else None
    out: list[Any] = []
    for text in texts:
        parsed = mv.parse(text, _math_reward._PRED_CFG, parsing_timeout=t)
        out.append(list(parsed) if parsed else None)
    return out


def _math_verify_same(timeout_seconds: int | None) -> Callable[[Any, Any], bool]:
    mv = _math_reward._mv()
    t = timeout_seconds if _math_reward._timeouts_allowed() else None
    return lambda rep, ans: bool(mv.verify(rep, ans, timeout_seconds=t))


def extract_answers(completions: Sequence[str], answer: str, timeout_seconds: int | None = 5) -> list[Any]:
    """The final answer of each completion under extractor ``answer`` (None where it has none)."""
    extractors = {"final_answer": _last_integer, "exact": _stripped, "math_verify": _math_verify_parse}
    if answer not in extractors:
        raise ValueError(f"empo: answer must be one of {sorted(extractors)}, got {answer!r}")
    return extractors[answer](completions, timeout_seconds)


def cluster_answers(answers: Sequence[Any], same: Callable[[Any, Any], bool] | None = None) -> list[int]:
    """Semantic cluster id of each answer; None (no answer) is a singleton cluster of its own.

    Greedy, in row order: an answer joins the first existing cluster whose representative (its first
    member) it is equivalent to, ``same(representative, answer)``, else it starts a new cluster.
    ``same=None`` compares with ``==``.
    """
    same = same if same is not None else (lambda a, b: a == b)
    reps: list[Any] = []
    ids: list[int] = []
    for a in answers:
        cid = -1
        if a is not None:
            cid = next((k for k, r in enumerate(reps) if r is not None and same(r, a)), -1)
        if cid < 0:
            reps.append(a)
            cid = len(reps) - 1
        ids.append(cid)
    return ids


def empo_group(cluster_ids: Sequence[int], answered: Sequence[bool]) -> tuple[list[float], float]:
    """Rewards and semantic entropy of one group: r_i = |c(i)| / G (0 without an answer), H = -sum p log p."""
    g = len(cluster_ids)
    counts: dict[int, int] = {}
    for c in cluster_ids:
        counts[c] = counts.get(c, 0) + 1
    entropy = -sum((k / g) * math.log(k / g) for k in counts.values()) if g else 0.0
    rewards = [counts[c] / g if ok else 0.0 for c, ok in zip(cluster_ids, answered)]
    return rewards, entropy


@SHAPINGS.register("empo")
@group_relative
def empo(
    inp: ShapingInput,
    *,
    state: dict,
    answer: Literal["final_answer", "math_verify", "exact"] = "final_answer",
    weight: float = 1.0,
    zero_all_distinct: bool = True,
    entropy_low: Annotated[float, Field(ge=0)] | None = None,
    entropy_high: Annotated[float, Field(gt=0)] | None = None,
    timeout_seconds: Annotated[int, Field(ge=1)] | None = 5,
) -> Shaped:
    """EMPO semantic-entropy reward (Zhang et al. 2025, arXiv 2504.05812), added to the score; reads no gold answer.

    Per group of G responses (rows sharing a group id): extract each final answer (``answer``, see the
    module docstring), cluster them by equivalence, p(c) = |c| / G, H = -sum_c p(c) log p(c), and
    r_i = p(c(i)), 0 for a response without an answer. New score = score + weight * r_i, so with the
    recipe's only reward at weight 0 the trained reward is EMPO's alone, as in the paper.

    Choices, following the released code where the paper is silent: clustering is greedy against each
    cluster's first member (``math_verify``: ``verify(representative, answer)``); every response
    without an answer is a singleton cluster of its own (it counts in G and in H, as in both the TRL
    and the verl implementations). ``zero_all_distinct`` (default on) is the TRL math rule: when
    every response is its own cluster (H = log G, tested exactly on the cluster count) all r_i = 0.
    ``entropy_low`` / ``entropy_high`` (nats, off by default) are the paper's prompt filter
    delta_low < H < delta_high: a group outside the band gets r = 0 for every row, so its GRPO
    advantage is 0; add the ``dynamic_sampling`` group filter with ``metric: reward`` to drop such
    groups and refill the batch instead. A group of one response is all-distinct.
    Metrics: ``shaping/empo/entropy`` (mean H over groups), ``.../entropy_frac`` (mean H / log G, over
    groups with G >= 2), ``.../majority`` (mean largest-cluster share), ``.../no_answer`` (share of
    rows without an answer) and ``.../zeroed`` (share of groups whose rewards were set to 0).
    """
    if entropy_low is not None and entropy_high is not None and entropy_low >= entropy_high:
        raise ValueError(f"empo: entropy_low ({entropy_low}) must be below entropy_high ({entropy_high})")
    n = len(inp.completions)
    if inp.scores.numel() != n or inp.group_ids.numel() != n:
        raise ValueError(f"empo: got {n} completions but scores of shape {tuple(inp.scores.shape)} and group_ids "
                         f"of shape {tuple(inp.group_ids.shape)}; expected one per completion")
    answers = extract_answers(inp.completions, answer, timeout_seconds)
    same = _math_verify_same(timeout_seconds) if answer == "math_verify" else None
    gidx, n_groups = group_index(inp.group_ids.detach().flatten())
    rows: list[list[int]] = [[] for _ in range(n_groups)]
    for i, g in enumerate(gidx.tolist()):
        rows[g].append(i)
    bonus = [0.0] * n
    entropies, fracs, majorities, zeroed = [], [], [], 0
    for members in rows:
        group_answers = [answers[i] for i in members]
        ids = cluster_answers(group_answers, same)
        rewards, h = empo_group(ids, [a is not None for a in group_answers])
        g = len(members)
        entropies.append(h)
        if g >= 2:
            fracs.append(h / math.log(g))
        majorities.append(max(ids.count(c) for c in set(ids)) / g)
        off = (zero_all_distinct and len(set(ids)) == g) \
            or (entropy_low is not None and not h > entropy_low) \
            or (entropy_high is not None and not h < entropy_high)
        zeroed += int(off)
        for i, r in zip(members, rewards):
            bonus[i] = 0.0 if off else weight * r
    dtype = inp.scores.dtype if inp.scores.is_floating_point() else torch.float32
    scores = inp.scores.to(dtype) + torch.tensor(bonus, dtype=dtype, device=inp.scores.device).reshape(inp.scores.shape)
    mean = lambda xs: float(sum(xs) / len(xs)) if xs else 0.0  # noqa: E731
    metrics = {
        "shaping/empo/entropy": mean(entropies),
        "shaping/empo/entropy_frac": mean(fracs),
        "shaping/empo/majority": mean(majorities),
        "shaping/empo/no_answer": mean([float(a is None) for a in answers]),
        "shaping/empo/zeroed": zeroed / n_groups if n_groups else 0.0,
    }
    return Shaped(scores=scores, metrics=metrics)
