"""What every preference loss consumes and declares.

A preference loss is ``fn(lp: PreferenceLogps, *, beta: float, <keyword options with defaults>,
<inputs it @needs>) -> Tensor[B]``: one loss per example (a pair, a ranked list or an unpaired
completion), which the preference step averages over the mini-batch (TRL's convention: the mean over
pairs). ``beta`` is ``preference.beta`` of the config; the other options come from
``preference.loss_kwargs`` and are validated against the signature when a config loads.

Log-probabilities are sequence sums over completion tokens (prompt and padding masked out); a loss
that needs the length-averaged value divides by ``lp.lengths`` itself, so ``preference.logp_reduction``
(``sum`` / ``mean``) is applied by the step before the loss sees ``policy`` and ``reference``.

``@preference_loss(kinds=..., reference=...)`` declares which data a loss accepts (``pairs``: K=2,
chosen first; ``lists``: K >= 2 ranked by ``scores``; ``unpaired``: K=1 with ``scores`` 1 desirable /
0 undesirable) and whether it reads ``reference`` (reference-free losses let the step skip the
reference model). ``spec_of(fn)`` reads the declaration back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, Literal, Optional

import torch
from pydantic import Field
from torch import Tensor

from rlfold.core import registry

PREFERENCE_LOSSES = registry.PREFERENCE_LOSSES

Kind = Literal["pairs", "lists", "unpaired"]


@dataclass
class PreferenceLogps:
    """Sequence log-probs of B examples with K responses each (pairs: K=2, index 0 chosen, 1 rejected)."""

    policy: Tensor                    # [B, K] log pi_theta(y|x), summed (or averaged) over completion tokens
    reference: Tensor                 # [B, K] the same under the reference policy (zeros when reference-free)
    lengths: Tensor                   # [B, K] completion tokens of each response (float, >= 1 where valid)
    scores: Tensor                    # [B, K] labels: pairs [1, 0]; lists the ranking scores; unpaired 1 / 0
    valid: Optional[Tensor] = None    # [B, K] bool: the response exists (ranked lists of uneven size); None: all
    margin: Optional[Tensor] = None   # [B] the dataset's per-pair margin column, if it has one

    @property
    def chosen(self) -> Tensor:
        """[B] policy log-prob of the chosen response (pairs)."""
        return self.policy[:, 0]

    @property
    def rejected(self) -> Tensor:
        """[B] policy log-prob of the rejected response (pairs)."""
        return self.policy[:, 1]

    @property
    def ratios(self) -> Tensor:
        """[B, K] implicit-reward log-ratios rho = log pi_theta - log pi_ref."""
        return self.policy - self.reference

    def mask(self) -> Tensor:
        """[B, K] bool validity (all True when ``valid`` is None)."""
        return torch.ones_like(self.policy, dtype=torch.bool) if self.valid is None else self.valid


@dataclass(frozen=True)
class LossSpec:
    """What a registered preference loss declares: the data kinds it accepts, whether it reads the reference."""

    kinds: tuple[Kind, ...]
    reference: bool
    needs: tuple[str, ...] = ()
    lengths: bool = False  # divides by ``lp.lengths`` itself, so it needs summed log-probs


def preference_loss(kinds: tuple[Kind, ...] = ("pairs",), reference: bool = True, lengths: bool = False) -> Callable:
    """Declare the data kinds a loss accepts, whether it reads ``reference``, and whether it normalises by
    ``lp.lengths`` itself (then ``policy`` must hold sums: ``preference.logp_reduction=sum``)."""

    def deco(fn: Callable) -> Callable:
        fn.preference_kinds = tuple(kinds)  # type: ignore[attr-defined]
        fn.uses_reference = bool(reference)  # type: ignore[attr-defined]
        fn.reads_lengths = bool(lengths)  # type: ignore[attr-defined]
        return fn

    return deco


def spec_of(fn: Callable) -> LossSpec:
    """The declaration of ``fn`` (pairs with a reference when it declares nothing)."""
    return LossSpec(kinds=tuple(getattr(fn, "preference_kinds", ("pairs",))),
                    reference=bool(getattr(fn, "uses_reference", True)),
                    needs=registry.needed_inputs(fn), lengths=bool(getattr(fn, "reads_lengths", False)))




# Option domains shared by the losses (checked when a config loads; the losses check again for direct calls).
Beta = Annotated[float, Field(gt=0)]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
FlipRate = Annotated[float, Field(ge=0, lt=0.5)]      # a label-flip rate eps in [0, 1/2)
SmoothRate = Annotated[float, Field(ge=0, le=0.5)]    # a label-smoothing eps in [0, 1/2]


def check_kind(lp: PreferenceLogps, k: int | None, name: str) -> None:
    """Raise unless ``lp`` holds [B, K] tensors of one shape (K == ``k`` when given)."""
    shape = tuple(lp.policy.shape)
    if lp.policy.dim() != 2:
        raise ValueError(f"{name}: policy log-probs must be [B, K], got shape {shape}")
    for field, t in (("reference", lp.reference), ("lengths", lp.lengths), ("scores", lp.scores)):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}: {field} must have the shape of policy {shape}, got {tuple(t.shape)}")
    if k is not None and shape[1] != k:
        what = {1: "unpaired examples (K=1)", 2: "pairs (K=2, chosen first)"}.get(k, f"K={k}")
        raise ValueError(f"{name} takes {what}, got K={shape[1]}")


def check_range(name: str, option: str, value: float, low: float, high: float,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise a ValueError naming the loss and option unless ``value`` lies in the stated interval."""
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name}: {option} must be in {interval}, got {value}")


def chosen_nll_token_mean(lp: PreferenceLogps) -> Tensor:
    """[B] the token-mean NLL over all chosen tokens of the batch, the same value for every pair.

    -sum_b log pi(y_w,b) / sum_b |y_w,b| (``policy`` holding sums): TRL's ``sft`` term and the NLL of its
    CPO and ORPO trainers. It couples the pairs of one batch (its mean over pairs is that batch value).
    """
    nll = -lp.policy[:, 0].sum() / lp.lengths[:, 0].sum().clamp(min=1)
    return nll.expand(lp.policy.shape[0]).clone()


def reduce_logps(per_token: Tensor, mask: Tensor, reduction: Literal["sum", "mean"] = "sum") -> Tensor:
    """[N] sequence log-probs from [N, T] per-token ones: the masked sum, or that sum over the token count."""
    total = (per_token * mask).sum(-1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / mask.sum(-1).clamp(min=1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


__all__ = ["Beta", "FlipRate", "Kind", "LossSpec", "NonNegative", "PREFERENCE_LOSSES", "Positive", "PreferenceLogps",
           "SmoothRate", "check_kind", "check_range", "chosen_nll_token_mean", "preference_loss", "reduce_logps",
           "spec_of"]
