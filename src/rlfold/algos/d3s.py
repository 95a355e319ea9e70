"""D³S, Dynamic Dual-Level Down-Sampling (Wang et al. 2025, arXiv 2509.22115): train on few rollouts and few tokens.

Two selection parts (``rlfold.algos.selection``), applied in this order after the group-relative
advantages of the whole batch:

* ``d3s_samples`` (sample level): keep the subset of N rows, taken across groups, whose sequence
  advantages have the largest variance (the paper bounds the policy-gradient norm by a function
  increasing in Var(A) of the trained subset). Returns ``rows``.
* ``d3s_tokens`` (token level): of the valid tokens of the rows kept so far, keep the top K fraction
  by |A_{i,t}| * H_{i,t} (H: the policy entropy recorded at rollout time). Returns ``token_mask``.

Both budgets follow a linear curriculum from an aggressive start to a relaxed end,
``x(p) = x_init + p (x_final - x_init)`` with training progress ``p`` in [0, 1]. The parts read ``p``
from the trainer input ``train_progress`` (declared with ``@needs``): a ``[N]`` tensor holding
``step / (total_steps - 1)`` (clamped to [0, 1]) on every row, so that step 0 uses the initial values
and the last step the final ones.

The max-variance subset (``max_variance_subset``): with the values sorted, some optimal subset of size
m is made of the k largest and the m - k smallest values for some k (proof in the function's
docstring), so the search is over k = 0..m with prefix sums, O(n log n).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.selection import SELECTIONS, Selection, SelectionInput
from rlfold.core.registry import needs

__all__ = ["budget", "d3s_samples", "d3s_tokens", "max_variance_subset", "scheduled", "sequence_advantages"]

Fraction = Annotated[float, Field(gt=0, le=1)]

# Defaults (our choice; the paper's values are unverified, policy.md §11 (c)): start with a quarter of the
# rows and a fifth of their tokens, relax to half of each by the end of training.
ROWS_INIT, ROWS_FINAL = 0.25, 0.5
TOKENS_INIT, TOKENS_FINAL = 0.2, 0.5


def scheduled(init: float, final: float, progress: float) -> float:
    """The linear curriculum: ``init + progress (final - init)``, ``progress`` clamped to [0, 1]."""
    p = min(max(float(progress), 0.0), 1.0)
    return init + p * (final - init)


def budget(fraction: float, total: int) -> int:
    """How many of ``total`` items a fraction keeps: round half up, at least 1 (0 when ``total`` is 0), at most all."""
    if total <= 0:
        return 0
    # The small slack absorbs binary rounding (0.3 * 10 = 3.0000000000000004 stays 3, 0.25 * 2 rounds to 1).
    return min(total, max(1, math.floor(fraction * total + 0.5 + 1e-9)))


def _progress(train_progress: Tensor, part: str) -> float:
    """The step's training progress from the ``train_progress`` input (one value repeated on every row)."""
    if train_progress.dim() != 1:
        raise ValueError(f"{part}: train_progress must be [N], got shape {tuple(train_progress.shape)}")
    if train_progress.numel() == 0:
        return 0.0
    p = float(train_progress[0].item())
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ValueError(f"{part}: train_progress must be in [0, 1], got {p!r}")
    return p


def _fraction_now(part: str, fraction_init: float, fraction_final: float, train_progress: Tensor) -> float:
    """The scheduled fraction of ``part`` at this step; both ends must be in (0, 1]."""
    if not (0.0 < fraction_init <= 1.0 and 0.0 < fraction_final <= 1.0):
        raise ValueError(
            f"{part} fractions must be in (0, 1], got fraction_init={fraction_init!r}, "
            f"fraction_final={fraction_final!r}"
        )
    return scheduled(fraction_init, fraction_final, _progress(train_progress, part))


def sequence_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """``[N]`` float64: the mean advantage over each row's valid tokens (GRPO's row constant); 0 for an empty row."""
    valid = mask.detach() != 0
    a = torch.where(valid, advantages.detach().to(torch.float64), torch.zeros((), dtype=torch.float64))
    count = valid.sum(dim=1)
    return a.sum(dim=1) / count.clamp(min=1)


def max_variance_subset(values: Tensor, m: int) -> Tensor:
    """Indices (ascending) of a size-``m`` subset of the 1-D ``values`` with the largest variance.

    Why the k largest and m - k smallest suffice: fix every chosen value but one, x. The subset's sum of
    squared deviations is then a convex quadratic in x (``(1 - 1/m) x^2 + linear``), so on the values not
    otherwise chosen it is maximal at the smallest or the largest of them. Starting from an optimal
    subset, replacing a chosen value that has an unchosen value both below and above it by the
    better of those two extremes never lowers the variance; repeating this leaves a subset with no
    "gap" on either side, i.e. a prefix plus a suffix of the sorted values.

    Ties are broken deterministically: values are ordered by (value, index) with a stable sort, and
    the smallest k reaching the maximum variance (in float64, from prefix sums) wins.
    ``m >= len(values)`` returns every index; ``m <= 0`` none.
    """
    if values.dim() != 1:
        raise ValueError(f"max_variance_subset: values must be 1-D, got shape {tuple(values.shape)}")
    n = values.numel()
    device = values.device
    if m >= n:
        return torch.arange(n, device=device)
    if m <= 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    v = values.detach().to(torch.float64)
    if not torch.isfinite(v).all():
        bad = torch.nonzero(~torch.isfinite(v)).flatten()[:10].tolist()
        raise ValueError(f"max_variance_subset: values must be finite; non-finite at {bad}")
    sorted_v, order = torch.sort(v, stable=True)
    zero = torch.zeros(1, dtype=torch.float64, device=device)
    s1 = torch.cat([zero, sorted_v.cumsum(0)])          # s1[j] = sum of the j smallest
    s2 = torch.cat([zero, (sorted_v ** 2).cumsum(0)])
    k = torch.arange(m + 1, device=device)               # k largest + (m - k) smallest
    low = m - k
    total1 = s1[low] + (s1[n] - s1[n - k])
    total2 = s2[low] + (s2[n] - s2[n - k])
    var = total2 / m - (total1 / m) ** 2
    best = int(torch.argmax(var).item())                 # first maximum: the smallest k
    chosen = torch.cat([order[: m - best], order[n - best:]])
    return torch.sort(chosen).values


@SELECTIONS.register("d3s_samples")
@needs("train_progress")
def d3s_samples(
    inp: SelectionInput,
    *,
    train_progress: Tensor,
    generator: torch.Generator | None = None,
    fraction_init: Fraction = ROWS_INIT,
    fraction_final: Fraction = ROWS_FINAL,
) -> Selection:
    """D³S sample level: keep the N rows whose advantages have the largest variance (Wang et al. 2025, arXiv 2509.22115).

    N = round(f * n_rows) (half up, at least 1) with f = ``fraction_init`` + p (``fraction_final`` -
    ``fraction_init``) at training progress p. The rows are chosen across groups (a group may keep any
    number of its rows, none included) by ``max_variance_subset`` over the sequence advantages (mean
    advantage over each row's valid tokens: GRPO's constant per row). Choices of ours: the variance is
    the population variance of the chosen values (the arg-max is the same for the unbiased one);
    rows without a valid token (unscorable, or masked by an earlier part) are never chosen, so fewer
    than N rows come back when there are fewer candidates; rows come back in ascending order.
    When N equals the batch (f = 1) ``rows`` is ``None``: the batch is the base algorithm's exactly.
    Defaults 0.25 -> 0.5 are ours (the paper's values are unverified).

    Metrics: ``selection/d3s_row_fraction`` (f), ``selection/d3s_kept_row_frac`` (kept / rows),
    ``selection/d3s_adv_var_all`` and ``selection/d3s_adv_var_kept`` (population variance of the
    sequence advantages of the candidate rows / of the kept rows; 0 when empty).
    """
    del generator
    f = _fraction_now("d3s_samples", fraction_init, fraction_final, train_progress)
    n = inp.rewards.shape[0]
    seq = sequence_advantages(inp.advantages, inp.response_mask)
    candidates = torch.nonzero((inp.response_mask != 0).any(dim=1)).flatten()
    cand_vals = seq[candidates]
    if cand_vals.numel() and not torch.isfinite(cand_vals).all():
        bad = candidates[~torch.isfinite(cand_vals)][:10].tolist()
        raise ValueError(f"d3s_samples: sequence advantages must be finite; non-finite at rows {bad}")
    m = budget(f, n)

    def pvar(x: Tensor) -> float:
        return float(((x - x.mean()) ** 2).mean().item()) if x.numel() else 0.0

    if m >= n:
        metrics = {"selection/d3s_row_fraction": f, "selection/d3s_kept_row_frac": 1.0 if n else 0.0,
                   "selection/d3s_adv_var_all": pvar(cand_vals), "selection/d3s_adv_var_kept": pvar(cand_vals)}
        return Selection(rows=None, metrics=metrics)
    rows = candidates[max_variance_subset(cand_vals, m)]
    metrics = {
        "selection/d3s_row_fraction": f,
        "selection/d3s_kept_row_frac": rows.numel() / n,
        "selection/d3s_adv_var_all": pvar(cand_vals),
        "selection/d3s_adv_var_kept": pvar(seq[rows]),
    }
    return Selection(rows=rows, metrics=metrics)


@SELECTIONS.register("d3s_tokens")
@needs("train_progress")
def d3s_tokens(
    inp: SelectionInput,
    *,
    train_progress: Tensor,
    generator: torch.Generator | None = None,
    fraction_init: Fraction = TOKENS_INIT,
    fraction_final: Fraction = TOKENS_FINAL,
) -> Selection:
    """D³S token level: keep the top-K fraction of tokens by |A_{i,t}| * H_{i,t} (Wang et al. 2025, arXiv 2509.22115).

    K = ``fraction_init`` + p (``fraction_final`` - ``fraction_init``) at training progress p; of the n
    valid tokens of the batch (those of the rows kept so far, across rows) the round(K * n) ones (half
    up, at least 1) with the largest score |A| * H are kept, H being the policy entropy recorded at
    rollout time (``SelectionInput.entropy``). Choices of ours: the budget is a count over the whole
    batch, not a threshold, so exactly that many tokens are kept; ties go to the earlier token in
    row-major order (row, then position); K = 1 keeps every valid token (the base algorithm exactly).
    ``token_mask`` is 1 on kept tokens, 0 elsewhere (padding included), so dropped tokens also leave the
    aggregation normaliser. Defaults 0.2 -> 0.5 are ours (the paper's values are unverified).

    Metrics: ``selection/d3s_token_fraction`` (K) and ``selection/d3s_kept_token_frac`` (kept / valid
    tokens; 0 when there is none).
    """
    del generator
    entropy = inp.require_entropy("d3s_tokens")
    k_frac = _fraction_now("d3s_tokens", fraction_init, fraction_final, train_progress)
    valid = inp.response_mask != 0
    score = inp.advantages.detach().to(torch.float64).abs() * entropy.detach().to(torch.float64)
    flat_valid = valid.flatten()
    idx = torch.nonzero(flat_valid).flatten()            # row-major order
    values = score.flatten()[idx]
    if values.numel() and not torch.isfinite(values).all():
        bad = torch.nonzero(valid & ~torch.isfinite(score))[:5].tolist()
        raise ValueError(f"d3s_tokens: |A| * H must be finite on valid tokens; non-finite at [row, token] {bad}")
    n_valid = idx.numel()
    keep = budget(k_frac, n_valid)
    order = torch.sort(values, descending=True, stable=True).indices  # equal scores keep row-major order
    kept_flat = torch.zeros_like(flat_valid)
    kept_flat[idx[order[:keep]]] = True
    token_mask = kept_flat.reshape(valid.shape).to(inp.response_mask.dtype)
    metrics = {
        "selection/d3s_token_fraction": k_frac,
        "selection/d3s_kept_token_frac": keep / n_valid if n_valid else 0.0,
    }
    return Selection(token_mask=token_mask, metrics=metrics)
