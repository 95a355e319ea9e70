"""Length shaping parts for efficient reasoning: Kimi, cosine, DLER / DA-DLER, HAPO, GRPO-λ, Apriel DAP.

Every part follows the shaping interface of :mod:`rlfold.rewards.shaping`:
``fn(inp, *, state, <options>) -> Shaped``. Conventions shared by all parts:

- A row counts as *correct* when ``inp.correct > 0.5`` (the verifier's 0/1 accuracy; a partial score
  of 0.5 or less counts as wrong).
- Lengths are the token lengths ``inp.lengths`` (never characters).
- A "group" is the rows sharing a ``group_id`` (the G responses to one prompt); HAPO's history is kept
  per problem text ``prompt.text`` instead, so it survives across steps and groups.
- Parts described as *replacing* the score ignore ``inp.scores`` and return the paper's reward; the
  others add their term to ``inp.scores``.
- New scores keep the dtype of ``inp.scores`` when it is floating (float32 otherwise); the arithmetic
  itself is done in Python floats (double precision).
- Metrics are named ``shaping/<part>/<what>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from rlfold.core.groups import group_index
from rlfold.rewards.shaping import SHAPINGS, Shaped, ShapingInput, sigmoid

# HAPO: a correct answer's length reward never drops below this, so it still beats any wrong answer
# (whose length reward is <= 0) whenever the length weight is <= 1.
HAPO_CORRECT_FLOOR = -0.7

# Option domains, checked when a config loads (the parts keep their own checks for direct calls).
NonNegInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


# ----- helpers --------------------------------------------------------------------------------------
def _correct(inp: ShapingInput) -> list[bool]:
    return [c > 0.5 for c in inp.correct.detach().flatten().tolist()]


def _lengths(inp: ShapingInput) -> list[float]:
    return [float(x) for x in inp.lengths.detach().flatten().tolist()]


def _truncated(inp: ShapingInput) -> list[bool]:
    return [bool(x) for x in inp.truncated.detach().flatten().tolist()]


def _groups(inp: ShapingInput) -> tuple[list[int], int]:
    idx, n = group_index(inp.group_ids.detach().flatten())
    return idx.tolist(), n


def _tensor(inp: ShapingInput, values: Sequence[float]) -> Tensor:
    dtype = inp.scores.dtype if inp.scores.is_floating_point() else torch.float32
    return torch.tensor(list(values), dtype=dtype, device=inp.scores.device)


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def _solve_rates(correct: list[bool], gidx: list[int], n_groups: int) -> list[float]:
    """Fraction of correct rows in each group (dense group index -> rate)."""
    hits = [0] * n_groups
    sizes = [0] * n_groups
    for c, g in zip(correct, gidx):
        sizes[g] += 1
        hits[g] += int(c)
    return [h / s if s else 0.0 for h, s in zip(hits, sizes)]


# ----- 1. Kimi k1.5 ---------------------------------------------------------------------------------
@SHAPINGS.register("kimi_len")
def kimi_len(inp: ShapingInput, *, state: dict, weight: float = 1.0, warmup_steps: NonNegInt = 0) -> Shaped:
    """Kimi k1.5 length reward (Kimi Team 2025, arXiv 2501.12599), added to the current score.

    Per group (the responses to one prompt), over the token lengths of *all* its responses:
    λ_i = 0.5 − (len_i − min_len) / (max_len − min_len), and λ_i = 0 for every row when
    max_len == min_len (all lengths equal, or a group of one; the paper is silent, this follows
    open-r1). New score = score + weight·λ_i if correct, score + weight·min(0, λ_i) if wrong.
    While ``inp.step < warmup_steps`` the scores are returned unchanged (Kimi warms up without the
    length penalty; the paper gives no step count, so the default warm-up is 0).
    """
    active = inp.step >= warmup_steps
    n = inp.scores.numel()
    if not active or n == 0:
        return Shaped(scores=inp.scores.clone(), metrics={"shaping/kimi_len/active": float(active),
                                                          "shaping/kimi_len/mean_bonus": 0.0})
    correct, lengths = _correct(inp), _lengths(inp)
    gidx, n_groups = _groups(inp)
    lo = [math.inf] * n_groups
    hi = [-math.inf] * n_groups
    for g, length in zip(gidx, lengths):
        lo[g], hi[g] = min(lo[g], length), max(hi[g], length)
    bonus = []
    for c, g, length in zip(correct, gidx, lengths):
        lam = 0.0 if hi[g] == lo[g] else 0.5 - (length - lo[g]) / (hi[g] - lo[g])
        bonus.append(weight * (lam if c else min(0.0, lam)))
    scores = inp.scores + _tensor(inp, bonus).reshape(inp.scores.shape)
    return Shaped(scores=scores, metrics={"shaping/kimi_len/active": 1.0,
                                          "shaping/kimi_len/mean_bonus": _mean(bonus)})


# ----- 2. Cosine length-scaled reward ---------------------------------------------------------------
def _cos_interp(t: float, horizon: float, at_zero: float, at_horizon: float) -> float:
    """at_zero at t = 0, falling/rising along a half cosine to at_horizon at t = horizon."""
    return at_horizon + 0.5 * (at_zero - at_horizon) * (1.0 + math.cos(math.pi * t / horizon))


@SHAPINGS.register("cosine_len")
def cosine_len(
    inp: ShapingInput,
    *,
    state: dict,
    r0_correct: float = 2.0,
    rL_correct: float = 1.0,
    r0_wrong: float = -10.0,
    rL_wrong: float = 0.0,
    r_exceed: float = -10.0,
    max_len: PositiveInt | None = None,
    exceed_margin: NonNegInt = 16,
) -> Shaped:
    """Cosine length-scaled reward of "Demystifying Long CoT Reasoning" (Yeo et al. 2025, arXiv 2502.03373).

    REPLACES the score. With CosFn(t, T, a, b) = a + ½(b − a)(1 + cos(πt/T)) (equal to b at t = 0
    and to a at t = T) and T = ``max_len`` (default: the generation limit ``inp.max_len``):

    - L + exceed_margin >= T, or the row was truncated: r = r_exceed;
    - correct: r = CosFn(L, T, rL_correct, r0_correct), i.e. r0_correct at L = 0 falling to rL_correct;
    - wrong:   r = CosFn(L, T, rL_wrong, r0_wrong), i.e. r0_wrong at L = 0 rising to rL_wrong.

    Choices: the specs write the wrong case as CosFn(L, T, r0_w, rL_w), which contradicts their own
    description and example (−10 at L = 0); the released code swaps its arguments internally, so the
    values at 0 and T are what is implemented. Truncated rows are sent to r_exceed even when the
    length test would not fire (only possible when ``max_len`` exceeds the generation limit). The
    optional n-gram repetition penalty of the paper is not part of this part.
    """
    T = int(inp.max_len if max_len is None else max_len)
    if T <= 0:
        raise ValueError(f"cosine_len needs max_len > 0, got {T}")
    out, n_exceed = [], 0
    for c, length, trunc in zip(_correct(inp), _lengths(inp), _truncated(inp)):
        if trunc or length + exceed_margin >= T:
            out.append(r_exceed)
            n_exceed += 1
        elif c:
            out.append(_cos_interp(length, T, r0_correct, rL_correct))
        else:
            out.append(_cos_interp(length, T, r0_wrong, rL_wrong))
    n = max(1, len(out))
    return Shaped(scores=_tensor(inp, out).reshape(inp.scores.shape),
                  metrics={"shaping/cosine_len/exceed_frac": n_exceed / n,
                           "shaping/cosine_len/mean_reward": _mean(out)})


# ----- 3./4. DLER and DA-DLER -----------------------------------------------------------------------
def _dler_rewards(correct: list[bool], lengths: list[float], truncated: list[bool],
                  targets: list[float]) -> list[float]:
    return [1.0 if (c and not t and length <= tgt) else 0.0
            for c, length, t, tgt in zip(correct, lengths, truncated, targets)]


@SHAPINGS.register("dler")
def dler(inp: ShapingInput, *, state: dict, target_len: PositiveInt | None = None) -> Shaped:
    """DLER truncation reward ("DLER: Doing Length pEnalty Right", NVIDIA 2025, arXiv 2510.15110).

    REPLACES the score: R = 1 if correct AND not truncated AND L <= target_len, else 0, with
    target_len defaulting to the generation limit ``inp.max_len``. A truncated response always gets 0,
    even with a correct answer: the released code's 0.1 "stop-properly" multiplier (a truncated but
    correct response scores 0.1) is not reproduced. DLER's batch-wise advantage normalisation and
    dynamic sampling are separate parts (advantage / dynamic_sampling), not part of this reward.
    """
    tgt = float(inp.max_len if target_len is None else target_len)
    correct, lengths, truncated = _correct(inp), _lengths(inp), _truncated(inp)
    out = _dler_rewards(correct, lengths, truncated, [tgt] * len(correct))
    n = max(1, len(out))
    return Shaped(scores=_tensor(inp, out).reshape(inp.scores.shape),
                  metrics={"shaping/dler/truncated_frac": sum(truncated) / n,
                           "shaping/dler/over_target_frac": sum(x > tgt for x in lengths) / n,
                           "shaping/dler/mean_reward": _mean(out)})


@SHAPINGS.register("da_dler")
def da_dler(
    inp: ShapingInput,
    *,
    state: dict,
    thresholds: Annotated[Sequence[Fraction], Field(min_length=1)] = (0.5,),
    target_lens: Annotated[Sequence[PositiveInt], Field(min_length=2)] = (2000, 4000),
) -> Shaped:
    """Difficulty-aware DLER (DA-DLER, NVIDIA 2025, arXiv 2510.15110): DLER reward with a per-group target.

    REPLACES the score. For each group, p = (#correct)/G. The tier is k = #{t in thresholds : p <= t}
    (so the order of ``thresholds`` does not matter), and the group's target length is
    ``target_lens[k]``; ``target_lens`` therefore lists len(thresholds) + 1 lengths from the easiest
    tier (p above every threshold) to the hardest (p at or below every threshold), normally shortest
    first. Each row then gets the :func:`dler` reward with its group's target:
    1 if correct, not truncated and L <= target, else 0.

    Boundary (not stated in the paper): p exactly equal to a threshold goes to the HARDER side, i.e.
    the longer budget; with the paper's single threshold 0.5 and lengths (2000, 4000), p > 0.5 -> 2000
    and p <= 0.5 -> 4000. A target above the generation limit simply never binds.
    """
    ths = [float(t) for t in thresholds]
    tls = [float(x) for x in target_lens]
    if len(tls) != len(ths) + 1:
        raise ValueError(f"da_dler needs len(target_lens) == len(thresholds) + 1, got {len(tls)} lengths "
                         f"for {len(ths)} thresholds")
    correct, lengths, truncated = _correct(inp), _lengths(inp), _truncated(inp)
    gidx, n_groups = _groups(inp)
    rates = _solve_rates(correct, gidx, n_groups)
    tier_of_group = [sum(p <= t for t in ths) for p in rates]
    targets = [tls[tier_of_group[g]] for g in gidx]
    out = _dler_rewards(correct, lengths, truncated, targets)
    n = max(1, len(out))
    return Shaped(scores=_tensor(inp, out).reshape(inp.scores.shape),
                  metrics={"shaping/da_dler/easiest_tier_group_frac":
                           sum(k == 0 for k in tier_of_group) / max(1, n_groups),
                           "shaping/da_dler/mean_target_len": _mean(targets),
                           "shaping/da_dler/truncated_frac": sum(truncated) / n,
                           "shaping/da_dler/mean_reward": _mean(out)})


# ----- 5. HAPO ----------------------------------------------------------------------------------------
def hapo_length_reward(length: float, h: float | None, correct: bool, *, variant: str = "cosine",
                       tolerance: float = 0.1) -> float:
    """HAPO's r_len for one response given the problem's history h (None = never solved)."""
    if h is None or h <= 0:
        return 0.0
    if variant == "cosine":
        f = math.cos(0.5 * math.pi * length / h) if length < 2.0 * h else -1.0
        return max(HAPO_CORRECT_FLOOR, f) if correct else min(0.0, f)
    if variant == "linear":
        slack = (1.0 + tolerance) * h
        if correct:
            if length < h:
                return 1.0 - length / h
            if length < slack:
                return 0.0
            return max(HAPO_CORRECT_FLOOR, -(length - slack) / h)
        if length < slack:
            return 0.0
        return max(-1.0, -(length - slack) / h)
    raise ValueError(f"hapo variant must be 'cosine' or 'linear', got {variant!r}")


@SHAPINGS.register("hapo")
def hapo(
    inp: ShapingInput,
    *,
    state: dict,
    weight: float = 1.0,
    variant: Literal["cosine", "linear"] = "cosine",
    mode: Literal["min", "mean"] = "min",
    tolerance: Annotated[float, Field(ge=0)] = 0.1,
) -> Shaped:
    """HAPO history-aware length reward (HAPO, arXiv 2505.11225), added to the current score.

    State: ``state["history"]`` maps the problem key (``prompt.text``) to h, the reference length of
    its correct answers (absent = never solved); with ``mode="mean"`` also ``state["counts"]`` (key ->
    number of correct lengths averaged into h). Both are plain str -> number dicts (JSON-safe).

    r_len with the history h *before* this batch (h absent or h <= 0 -> r_len = 0):

    - cosine (default): f = cos((π/2)·L/h) if L < 2h else −1; correct: max(−0.7, f); wrong: min(0, f).
    - linear (tolerance τ): correct: 1 − L/h if L < h; 0 if h <= L < (1+τ)h; else
      max(−0.7, −(L − (1+τ)h)/h). Wrong: 0 if L < (1+τ)h; else max(−1, −(L − (1+τ)h)/h).

    New score = score + weight·r_len (the paper's c + w_lr·r_len; its optional repetition penalty is
    not part of this part). With 0/1 scores and weight <= 1 a correct answer (>= 1 − 0.7·weight > 0)
    never scores below a wrong one (<= 0) of the same problem.

    After scoring, the history is updated with this batch's correct lengths per problem:
    ``mode="min"``: h <- min(h, min correct L); ``mode="mean"``: h <- count-weighted running mean of
    all correct lengths seen (counts kept in ``state["counts"]``; a key that has h but no count, e.g.
    history written in "min" mode, counts as one sample). All rows of the same problem in a batch
    (several groups, or repeated rows) are scored with the same old h.
    """
    if variant not in ("cosine", "linear"):
        raise ValueError(f"hapo variant must be 'cosine' or 'linear', got {variant!r}")
    if mode not in ("min", "mean"):
        raise ValueError(f"hapo mode must be 'min' or 'mean', got {mode!r}")
    history: dict = state.setdefault("history", {})
    counts: dict | None = state.setdefault("counts", {}) if mode == "mean" else None
    keys = [p.text for p in inp.prompts]
    correct, lengths = _correct(inp), _lengths(inp)
    if not (len(keys) == len(correct) == len(lengths)):
        raise ValueError(f"hapo: {len(keys)} prompts for {len(correct)} scores")

    r_len, n_known = [], 0
    for key, c, length in zip(keys, correct, lengths):
        h = history.get(key)
        n_known += h is not None
        r_len.append(hapo_length_reward(length, None if h is None else float(h), c,
                                        variant=variant, tolerance=tolerance))
    scores = inp.scores + _tensor(inp, [weight * r for r in r_len]).reshape(inp.scores.shape)

    # history update, after scoring
    solved: dict[str, list[float]] = {}
    for key, c, length in zip(keys, correct, lengths):
        if c:
            solved.setdefault(key, []).append(length)
    for key, ls in solved.items():
        old = history.get(key)
        if mode == "min":
            history[key] = float(min(ls) if old is None else min(float(old), min(ls)))
        else:
            assert counts is not None
            n_old = 0 if old is None else int(counts.get(key, 1))
            total = (0.0 if old is None else float(old) * n_old) + sum(ls)
            counts[key] = n_old + len(ls)
            history[key] = float(total / counts[key])
    n = max(1, len(r_len))
    return Shaped(scores=scores, metrics={"shaping/hapo/mean_len_reward": _mean(r_len),
                                          "shaping/hapo/with_history_frac": n_known / n,
                                          "shaping/hapo/history_size": float(len(history))})


# ----- 6. GRPO-λ --------------------------------------------------------------------------------------
@SHAPINGS.register("grpo_lambda")
def grpo_lambda(
    inp: ShapingInput,
    *,
    state: dict,
    top_frac: Fraction = 0.2,
    alpha: Annotated[float, Field(ge=0)] = 0.6,
    std_eps: Annotated[float, Field(gt=0)] = 1e-4,
) -> Shaped:
    """GRPO-λ length reward on the most accurate groups ("Stable RL for Efficient Reasoning", arXiv 2505.18086).

    REPLACES the score. Groups are ranked by correctness ratio (#correct / G), highest first, ties
    broken by the order in which groups first appear in the batch; the first
    k = max(1, ceil(n_groups·top_frac)) groups are "efficiency-prioritised" (the ceil is taken after
    subtracting 1e-9, so that e.g. 10·0.3 counts as 3). In those groups a correct row gets
    r = 1 − alpha·σ((L − μ)/s), μ and s the mean and POPULATION std (ddof 0) of the lengths of the
    group's correct rows, floored at std_eps: s = max(s, std_eps) (so one correct row, or equal
    lengths, give z = 0 and r = 1 − alpha/2; the blog sets s = std_eps only for one correct row, and
    the floor changes nothing when the std exceeds std_eps). A wrong row gets 0 (the paper; a blog
    implementation also shapes wrong rows, which is not followed). All other groups get the plain 0/1
    correctness, so the part returns inp.scores unchanged there only when those were 0/1 accuracy.

    Gap: alpha is NOT given in the paper; 0.6, std_eps = 1e-4 and the max(1, ceil) count come from
    a third-party blog's sample code. λ = top_frac = 0.2 is the paper's illustration.
    """
    if not 0.0 <= top_frac <= 1.0:
        raise ValueError(f"grpo_lambda needs 0 <= top_frac <= 1, got {top_frac}")
    correct, lengths = _correct(inp), _lengths(inp)
    gidx, n_groups = _groups(inp)
    if n_groups == 0:
        return Shaped(scores=inp.scores.clone(), metrics={"shaping/grpo_lambda/top_groups": 0.0})
    rates = _solve_rates(correct, gidx, n_groups)
    first_seen: dict[int, int] = {}
    for row, g in enumerate(gidx):
        first_seen.setdefault(g, row)
    order = sorted(range(n_groups), key=lambda g: (-rates[g], first_seen[g]))
    k = max(1, math.ceil(n_groups * top_frac - 1e-9))
    top = set(order[:k])

    stats: dict[int, tuple[float, float]] = {}
    for g in top:
        ls = [length for length, c, gg in zip(lengths, correct, gidx) if c and gg == g]
        if ls:
            mu = sum(ls) / len(ls)
            sd = math.sqrt(sum((x - mu) ** 2 for x in ls) / len(ls))
            stats[g] = (mu, max(sd, std_eps))
    out, penalties = [], []
    for c, g, length in zip(correct, gidx, lengths):
        if not c:
            out.append(0.0)
        elif g in top:
            mu, sd = stats[g]
            pen = alpha * sigmoid((length - mu) / sd)
            penalties.append(pen)
            out.append(1.0 - pen)
        else:
            out.append(1.0)
    return Shaped(scores=_tensor(inp, out).reshape(inp.scores.shape),
                  metrics={"shaping/grpo_lambda/top_groups": float(k),
                           "shaping/grpo_lambda/top_min_ratio": min(rates[g] for g in top),
                           "shaping/grpo_lambda/mean_penalty": _mean(penalties)})


# ----- 7. Apriel difficulty-aware length penalty ------------------------------------------------------
def apriel_length_penalty(length: float, max_len: float, buffer: float) -> float:
    """LP(l) = ((L − B) − l)/B if L − B < l <= L, else 0 (range [−1, 0); 0 when B = 0)."""
    if buffer <= 0:
        return 0.0
    start = max_len - buffer
    if start < length <= max_len:
        return (start - length) / buffer
    return 0.0


@SHAPINGS.register("apriel_dap")
def apriel_dap(
    inp: ShapingInput,
    *,
    state: dict,
    buffer: NonNegInt = 0,
    gamma: Annotated[float, Field(ge=0)] = 1.0,
    failure_scale: Fraction = 1.0,
    max_len: PositiveInt | None = None,
) -> Shaped:
    """Apriel difficulty-aware length penalty, DAP (ServiceNow 2026, Apriel-Reasoner, arXiv 2604.02007).

    Added to the current score: score + λ·LP(L), with L_max = ``max_len`` (default: the generation
    limit ``inp.max_len``), B = ``buffer`` and LP(l) = ((L_max − B) − l)/B if L_max − B < l <= L_max,
    else 0. λ = s^gamma for a correct row, s = the group's solve rate (#correct / G);
    λ = failure_scale for a wrong row; and λ = 1 for a truncated row with l >= L_max (overriding both).

    Choices: B is NOT given in the paper and the released code defaults to 0, which turns the penalty
    off, so ``buffer`` defaults to 0 here too and must be set to use the part (the specs' example uses
    16000 / 4000). As in the released code, LP is 0 for l > L_max, so keep ``max_len`` at the
    generation limit. The score passed in must not already contain a length penalty (the released code
    adds λ·LP − LP to a reward that already holds LP; here the reward holds none): do not stack this
    part on ``soft_overlong``.
    """
    L = float(inp.max_len if max_len is None else max_len)
    if not 0 <= buffer <= L:
        raise ValueError(f"apriel_dap needs 0 <= buffer <= max_len, got buffer={buffer}, max_len={L:g}")
    if not 0.0 <= failure_scale <= 1.0:
        raise ValueError(f"apriel_dap needs failure_scale in [0, 1], got {failure_scale}")
    correct, lengths, truncated = _correct(inp), _lengths(inp), _truncated(inp)
    gidx, n_groups = _groups(inp)
    rates = _solve_rates(correct, gidx, n_groups)
    terms, n_pen = [], 0
    for c, g, length, trunc in zip(correct, gidx, lengths, truncated):
        lp = apriel_length_penalty(length, L, float(buffer))
        if trunc and length >= L:
            lam = 1.0
        elif c:
            lam = rates[g] ** gamma
        else:
            lam = failure_scale
        n_pen += lp != 0.0
        terms.append(lam * lp)
    scores = inp.scores + _tensor(inp, terms).reshape(inp.scores.shape)
    n = max(1, len(terms))
    return Shaped(scores=scores, metrics={"shaping/apriel_dap/penalised_frac": n_pen / n,
                                          "shaping/apriel_dap/mean_penalty": _mean(terms)})


__all__ = ["apriel_dap", "apriel_length_penalty", "cosine_len", "da_dler", "dler", "grpo_lambda", "hapo",
           "hapo_length_reward", "kimi_len"]
