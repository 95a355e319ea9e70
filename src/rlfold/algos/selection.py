"""Selection parts: which samples and tokens enter the policy loss, and with what weight.

Every registered part has the signature
``fn(inp: SelectionInput, *, generator: torch.Generator | None = None, <keyword hyperparameters
with defaults>) -> Selection`` (no ``**kwargs``). A part is a pure function of the batch: it never
changes its input, and the trainer applies the returned ``Selection``:

* ``token_mask`` ``[N, R]`` (0/1, the dtype of ``response_mask``) is multiplied into the loss mask,
  so it also changes the aggregation normaliser; ``response_mask * token_mask`` is the new mask.
* ``token_weights`` ``[N, R]`` (detached, float) multiplies the per-token policy loss; the
  normaliser is unchanged.
* ``rows`` (``LongTensor``, repeats allowed) selects or resamples rows; ``None`` keeps all rows.

``token_mask`` and ``token_weights`` index the input's N rows, i.e. before ``rows`` is applied.
``metrics`` holds plain floats. Parts that draw random numbers use ``generator`` (a seeded
``torch.Generator`` on the batch's device gives reproducible selections); the others accept and
ignore it so that the trainer can call every part the same way.

Registered: ``mask_truncated`` (DAPO overlong filtering), ``top_entropy`` (the 80/20 rule's
high-entropy "forking" tokens), ``pf_ppo`` (policy filtration by reward) and ``tis`` (truncated /
masked importance sampling between the rollout engine and the trainer). DAPO's dynamic sampling
decides which rollouts to keep before the batch is complete: it is a group filter
(``rlfold.algos.group_filters``), applied by the collector, not a selection part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from rlfold.core import registry
from rlfold.algos.importance import behaviour_log_ratio, bound_weights
from rlfold.core.groups import LOG_RATIO_CLAMP, group_index

SELECTIONS = registry.SELECTIONS

SelectionFn = Callable[..., "Selection"]

PF_PPO_EPS = 1e-8
# torch.quantile refuses inputs with more than 2**24 elements; larger batches use kthvalue.
_QUANTILE_MAX_NUMEL = 2**24

__all__ = [
    "SELECTIONS",
    "Selection",
    "SelectionFn",
    "SelectionInput",
    "mask_truncated",
    "pf_ppo",
    "pf_ppo_weights",
    "tis",
    "top_entropy",
]


@dataclass(frozen=True)
class SelectionInput:
    """The batch as a selection part sees it; shapes are checked on construction.

    rewards: ``[N]`` sequence scores. group_ids: ``[N]`` integers, rows with the same id answer the
    same prompt (need not be contiguous or sorted). response_mask: ``[N, R]`` 0/1 current loss mask.
    advantages: ``[N, R]``. truncated: ``[N]`` bool (or 0/1), cut at the generation limit without a
    stop token. old_logprobs: ``[N, R]`` log-probs of the policy the update starts from (trainer
    numerics). behaviour_logprobs: ``[N, R]`` log-probs under the distribution the engine actually
    sampled from. entropy: ``[N, R]`` policy entropy per response token recorded at rollout time,
    or ``None`` when it was not recorded.
    """

    rewards: Tensor
    group_ids: Tensor
    response_mask: Tensor
    advantages: Tensor
    truncated: Tensor
    old_logprobs: Tensor
    behaviour_logprobs: Tensor
    entropy: Tensor | None = None

    def __post_init__(self) -> None:
        if self.rewards.dim() != 1:
            raise ValueError(
                f"SelectionInput.rewards must be 1-D [N], got shape {tuple(self.rewards.shape)}"
            )
        n = self.rewards.shape[0]
        for name in ("group_ids", "truncated"):
            t = getattr(self, name)
            if tuple(t.shape) != (n,):
                raise ValueError(
                    f"SelectionInput.{name} must be [N] with N={n}, got shape {tuple(t.shape)}"
                )
        if self.group_ids.dtype.is_floating_point or self.group_ids.dtype == torch.bool:
            raise ValueError(
                "SelectionInput.group_ids must be an integer tensor, "
                f"got dtype {self.group_ids.dtype}"
            )
        if self.truncated.dtype.is_floating_point:
            raise ValueError(
                f"SelectionInput.truncated must be a bool tensor, got dtype {self.truncated.dtype}"
            )
        if self.response_mask.dim() != 2 or self.response_mask.shape[0] != n:
            raise ValueError(
                f"SelectionInput.response_mask must be [N, R] with N={n}, "
                f"got shape {tuple(self.response_mask.shape)}"
            )
        shape = tuple(self.response_mask.shape)
        for name in ("advantages", "old_logprobs", "behaviour_logprobs", "entropy"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(
                    f"SelectionInput.{name} must have the shape of response_mask {shape}, "
                    f"got {tuple(t.shape)}"
                )


    def require_entropy(self, part: str) -> Tensor:
        """The per-token entropies, or a ValueError naming ``part`` when the rollout recorded none."""
        if self.entropy is None:
            raise ValueError(
                f"selection {part!r} needs per-token entropies, but SelectionInput.entropy is None: "
                "record the policy entropy of each response token at rollout time"
            )
        return self.entropy

    def take(self, rows: Tensor) -> "SelectionInput":
        """The input restricted to (or resampled as) ``rows``."""
        return SelectionInput(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[rows]
                                 for f in fields(self)})


@dataclass
class Selection:
    """What a selection part decided; every field left at ``None`` means "no change"."""

    rows: Tensor | None = None
    token_mask: Tensor | None = None
    token_weights: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def _group_max_min(values: Tensor, inv: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """Per-row maximum and minimum of ``values`` over the row's group."""
    zeros = torch.zeros(n_groups, dtype=values.dtype, device=values.device)
    g_max = zeros.scatter_reduce(0, inv, values, "amax", include_self=False)
    g_min = zeros.scatter_reduce(0, inv, values, "amin", include_self=False)
    return g_max[inv], g_min[inv]


def _linear_quantile(x: Tensor, q: float) -> Tensor:
    """``torch.quantile(x, q)`` (linear interpolation) for a 1-D float tensor of any size."""
    if x.numel() <= _QUANTILE_MAX_NUMEL:
        return torch.quantile(x, q)
    # Same definition: position p = q (n - 1), value x_(floor p) + (p - floor p)(x_(ceil p) - x_(floor p)).
    pos = q * (x.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, x.numel() - 1)
    v_lo = torch.kthvalue(x, lo + 1).values
    v_hi = torch.kthvalue(x, hi + 1).values
    return v_lo + (pos - lo) * (v_hi - v_lo)


@SELECTIONS.register("mask_truncated")
def mask_truncated(inp: SelectionInput, *, generator: torch.Generator | None = None) -> Selection:
    """DAPO overlong filtering: truncated responses leave the loss (Yu et al. 2025, arXiv 2503.14476).

    ``token_mask`` is 0 on every token of a row with ``truncated`` set (cut at the generation limit,
    no stop token) and 1 elsewhere, so finished rows keep exactly their ``response_mask``; the
    truncated rows also leave the aggregation normaliser. Metric ``selection/truncated_frac``:
    fraction of the N rows that are truncated (0 for an empty batch).
    """
    del generator
    keep = ~inp.truncated.bool()
    token_mask = keep[:, None].expand(inp.response_mask.shape).to(inp.response_mask.dtype)
    n = inp.truncated.numel()
    frac = float((~keep).sum().item()) / n if n else 0.0
    return Selection(token_mask=token_mask, metrics={"selection/truncated_frac": frac})


@SELECTIONS.register("top_entropy")
def top_entropy(
    inp: SelectionInput, *, generator: torch.Generator | None = None,
    quantile: Annotated[float, Field(gt=0, le=1)] = 0.2,
) -> Selection:
    """Top-entropy ("forking") tokens only (Wang et al. 2025, Beyond the 80/20 Rule, arXiv 2506.01939).

    With rho = ``quantile`` (the paper's best is 0.2), the threshold tau is the (1 - rho)-quantile of
    the entropies of all valid tokens of the batch, computed like ``torch.quantile`` with its default
    linear interpolation (position (1 - rho)(n - 1) in the sorted values); a valid token is kept iff
    its entropy >= tau. ``quantile=1`` keeps every valid token (tau is the minimum). ``token_mask`` is
    1 on kept tokens and 0 elsewhere (padding included). The quantile is over this call's batch; a
    data-parallel trainer must pass the gathered batch to get TRL's global threshold.
    Metrics ``selection/top_entropy_threshold`` (tau; 0 when there is no valid token) and
    ``selection/kept_token_frac`` (kept / valid tokens).
    """
    del generator
    recorded = inp.require_entropy("top_entropy")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"top_entropy quantile (rho) must be in (0, 1], got {quantile!r}")
    valid = inp.response_mask.bool()
    entropy = recorded.detach()
    entropy = entropy if entropy.dtype in (torch.float32, torch.float64) else entropy.float()
    values = entropy[valid]
    if values.numel() == 0:
        token_mask = torch.zeros_like(inp.response_mask)
        return Selection(
            token_mask=token_mask,
            metrics={"selection/top_entropy_threshold": 0.0, "selection/kept_token_frac": 0.0},
        )
    if not torch.isfinite(values).all():
        bad = torch.nonzero(valid & ~torch.isfinite(entropy))[:5].tolist()
        raise ValueError(
            f"top_entropy: entropy must be finite on valid tokens; non-finite at [row, token] {bad}"
        )
    tau = _linear_quantile(values, 1.0 - quantile)
    kept = valid & (entropy >= tau)
    token_mask = kept.to(inp.response_mask.dtype)
    metrics = {
        "selection/top_entropy_threshold": float(tau.item()),
        "selection/kept_token_frac": float(kept.sum().item()) / values.numel(),
    }
    return Selection(token_mask=token_mask, metrics=metrics)


PfMode = Literal["best_worst", "best_random", "pow"]
Scope = Literal["group", "batch"]


def pf_ppo_weights(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    mode: PfMode = "best_worst",
    power: float = 2.0,
    scope: Scope = "group",
) -> Tensor:
    """PF-PPO sampling weights per row (before normalisation), float64; see ``pf_ppo``."""
    if mode not in ("best_worst", "best_random", "pow"):
        raise ValueError(f"pf_ppo mode must be 'best_worst', 'best_random' or 'pow', got {mode!r}")
    if scope not in ("group", "batch"):
        raise ValueError(f"pf_ppo scope must be 'group' or 'batch', got {scope!r}")
    if not (power >= 0.0 and power != float("inf")):
        raise ValueError(f"pf_ppo power must be finite and >= 0, got {power!r}")
    r = rewards.detach().to(torch.float64)
    if r.numel() and not torch.isfinite(r).all():
        bad = torch.nonzero(~torch.isfinite(r)).flatten()[:10].tolist()
        raise ValueError(f"pf_ppo: rewards must be finite; non-finite at rows {bad}")
    if r.numel() == 0:
        return r
    if mode == "pow":
        w = r.abs() ** power
    else:
        if scope == "group":
            inv, n_groups = group_index(group_ids)
            r_max, r_min = _group_max_min(r, inv, n_groups)
        else:
            r_max, r_min = r.max().expand_as(r), r.min().expand_as(r)
        is_max = r == r_max
        if mode == "best_worst":
            w = (is_max | (r == r_min)).to(torch.float64)
        else:
            w = torch.where(is_max, r.new_tensor(0.4), r.new_tensor(0.1))
    return w + PF_PPO_EPS


@SELECTIONS.register("pf_ppo")
def pf_ppo(
    inp: SelectionInput,
    *,
    generator: torch.Generator | None = None,
    mode: PfMode = "best_worst",
    power: Annotated[float, Field(ge=0)] = 2.0,
    scope: Scope = "group",
) -> Selection:
    """Policy Filtration PPO: resample rows by reward (Zhang et al. 2024, PF-PPO, arXiv 2409.06957).

    Weight per row from its reward R: ``pow`` -> |R|^power; ``best_worst`` -> 1 if R is the maximum
    or the minimum, else 0; ``best_random`` -> 0.4 if R is the maximum, else 0.1; then + 1e-8 (so
    every row keeps a tiny chance). Rows are drawn with replacement by ``torch.multinomial`` with
    these weights (using ``generator``):

    * ``scope="group"`` (default; the paper filters the responses of each prompt): max / min are
      taken within each group, and each group draws as many rows as it has from its own rows. The
      i-th returned row belongs to the group of input row i, so group sizes and positions survive.
    * ``scope="batch"`` (verl's ``compute_pf_ppo_reweight_data``): max / min over the whole batch,
      N rows drawn from the whole batch.

    Returns ``rows`` (LongTensor [N]). Metric ``selection/unique_rows_frac``: distinct rows drawn / N.
    """
    weights = pf_ppo_weights(inp.rewards, inp.group_ids, mode=mode, power=power, scope=scope)
    n = weights.numel()
    device = inp.rewards.device
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return Selection(rows=empty, metrics={"selection/unique_rows_frac": 0.0})
    if scope == "batch":
        rows = torch.multinomial(weights, n, replacement=True, generator=generator)
    else:
        inv, n_groups = group_index(inp.group_ids)
        order = torch.argsort(inv, stable=True)
        counts = torch.bincount(inv, minlength=n_groups).tolist()
        rows = torch.empty(n, dtype=torch.long, device=device)
        for idx in torch.split(order, counts):
            draw = torch.multinomial(weights[idx], idx.numel(), replacement=True, generator=generator)
            rows[idx] = idx[draw]
    unique = int(torch.unique(rows).numel())
    return Selection(rows=rows, metrics={"selection/unique_rows_frac": unique / n})


def engine_mismatch(old_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """How far the engine's log-probs are from the trainer's, per valid token (TRL's ``sampling/*`` names):
    ``sampling/sampling_logp_difference/mean|max`` = |old - behaviour|, and
    ``sampling/importance_sampling_ratio/min|mean|max`` = exp(clamp(old - behaviour, -20, 20)). With no
    valid token the differences are 0 and the ratios 1."""
    valid = mask.bool()
    diff = (old_logprobs.detach().double() - behaviour_logprobs.detach().double())[valid]
    if diff.numel() == 0:
        return {"sampling/sampling_logp_difference/mean": 0.0, "sampling/sampling_logp_difference/max": 0.0,
                "sampling/importance_sampling_ratio/min": 1.0, "sampling/importance_sampling_ratio/mean": 1.0,
                "sampling/importance_sampling_ratio/max": 1.0}
    ratio = diff.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
    return {"sampling/sampling_logp_difference/mean": float(diff.abs().mean()),
            "sampling/sampling_logp_difference/max": float(diff.abs().max()),
            "sampling/importance_sampling_ratio/min": float(ratio.min()),
            "sampling/importance_sampling_ratio/mean": float(ratio.mean()),
            "sampling/importance_sampling_ratio/max": float(ratio.max())}


@SELECTIONS.register("tis")
def tis(
    inp: SelectionInput,
    *,
    generator: torch.Generator | None = None,
    level: Literal["token", "sequence"] = "token",
    mode: Literal["truncate", "mask"] = "truncate",
    threshold: Annotated[float, Field(gt=0)] = 2.0,
    lower: Annotated[float, Field(ge=0)] | None = None,
) -> Selection:
    """Truncated importance sampling between rollout engine and trainer (IMPALA V-trace, arXiv 1802.01561).

    The engine samples from pi_behaviour, whose numerics differ from the trainer's pi_old
    (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training",
    blog), so each token's loss is re-weighted by a detached ratio. log r_t = old_logprobs - behaviour_logprobs on
    valid tokens (0 on padding).

    * ``level="token"``: w_t = exp(clamp(log r_t, -20, 20)).
    * ``level="sequence"``: w_i = exp(clamp(sum_t log r_t, -20, 20)), broadcast to the row's tokens.
    * ``mode="truncate"`` (TIS, V-trace's rho-bar): w <- min(w, threshold); if ``lower`` is given also
      w <- max(w, lower) (TRL's [C_min, C_max] clamp); ``lower=None`` means no lower bound.
    * ``mode="mask"`` (IcePop style): w is kept where lower <= w <= threshold and set to 0 outside;
      ``lower=None`` means 1 / threshold (a band symmetric in log space; threshold 2 -> [0.5, 2]).
      Masked tokens keep counting in the aggregation normaliser (their weight is 0, not their mask).

    Returns ``token_weights`` [N, R] (0 on padding). Metrics (TRL names):
    ``sampling/sampling_logp_difference/mean`` and ``/max`` (|old - behaviour| over valid tokens),
    ``sampling/importance_sampling_ratio/min``, ``/mean``, ``/max`` (w after the +-20 clamp, before
    truncation or masking, over valid tokens, or over rows with a valid token at sequence level), and
    ``selection/tis_outside_frac`` (fraction of those tokens / rows whose w lies outside the band
    [lower, threshold] and was therefore changed). With no valid token the differences are 0 and the
    ratios 1. A NaN log-ratio on a valid token is an error.
    """
    del generator
    if level not in ("token", "sequence"):
        raise ValueError(f"tis level must be 'token' or 'sequence', got {level!r}")
    if mode not in ("truncate", "mask"):
        raise ValueError(f"tis mode must be 'truncate' or 'mask', got {mode!r}")
    if not (0.0 < threshold < float("inf")):
        raise ValueError(f"tis threshold must be a positive finite number, got {threshold!r}")
    if lower is None:
        lo = 1.0 / threshold if mode == "mask" else 0.0
    else:
        lo = float(lower)
        if not (0.0 <= lo <= threshold):
            raise ValueError(
                f"tis lower must satisfy 0 <= lower <= threshold={threshold}, got {lower!r}"
            )
    if mode == "mask" and lo > threshold:
        raise ValueError(
            f"tis mask band [1/threshold, threshold] is empty for threshold={threshold}; use threshold >= 1 "
            "or pass lower explicitly"
        )

    valid = inp.response_mask.bool()
    log_r = behaviour_log_ratio(inp.old_logprobs, inp.behaviour_logprobs, valid, "tis")

    if level == "token":
        w = log_r.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
        units = valid
        raw = w[units]
    else:
        seq_log_r = log_r.sum(dim=1)
        if torch.isnan(seq_log_r).any():
            bad = torch.nonzero(torch.isnan(seq_log_r)).flatten()[:10].tolist()
            raise ValueError(f"tis: summed log-ratio is NaN (+inf and -inf in one row) at rows {bad}")
        w_seq = seq_log_r.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
        w = w_seq[:, None].expand_as(log_r)
        units = valid.any(dim=1)
        raw = w_seq[units]

    adjusted, _ = bound_weights(w, lo, threshold, mode)
    token_weights = torch.where(valid, adjusted, torch.zeros_like(adjusted))

    abs_diff = log_r.abs()[valid]
    if raw.numel():
        raw_inside = (raw >= lo) & (raw <= threshold)
        metrics = {
            "sampling/sampling_logp_difference/mean": float(abs_diff.mean().item()),
            "sampling/sampling_logp_difference/max": float(abs_diff.max().item()),
            "sampling/importance_sampling_ratio/min": float(raw.min().item()),
            "sampling/importance_sampling_ratio/mean": float(raw.mean().item()),
            "sampling/importance_sampling_ratio/max": float(raw.max().item()),
            "selection/tis_outside_frac": float((~raw_inside).sum().item()) / raw.numel(),
        }
    else:
        metrics = {
            "sampling/sampling_logp_difference/mean": 0.0,
            "sampling/sampling_logp_difference/max": 0.0,
            "sampling/importance_sampling_ratio/min": 1.0,
            "sampling/importance_sampling_ratio/mean": 1.0,
            "sampling/importance_sampling_ratio/max": 1.0,
            "selection/tis_outside_frac": 0.0,
        }
    return Selection(token_weights=token_weights, metrics=metrics)
