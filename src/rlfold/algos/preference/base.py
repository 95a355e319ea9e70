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
from typing import Callable, Literal, Optional

import torch
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


def preference_loss(kinds: tuple[Kind, ...] = ("pairs",), reference: bool = True) -> Callable:
    """Declare the data kinds a loss accepts and whether it reads ``reference``."""

    def deco(fn: Callable) -> Callable:
        fn.preference_kinds = tuple(kinds)  # type: ignore[attr-defined]
        fn.uses_reference = bool(reference)  # type: ignore[attr-defined]
        return fn

    return deco


def spec_of(fn: Callable) -> LossSpec:
    """The declaration of ``fn`` (pairs with a reference when it declares nothing)."""
    return LossSpec(kinds=tuple(getattr(fn, "preference_kinds", ("pairs",))),
                    reference=bool(getattr(fn, "uses_reference", True)),
                    needs=registry.needed_inputs(fn))




def reduce_logps(per_token: Tensor, mask: Tensor, reduction: Literal["sum", "mean"] = "sum") -> Tensor:
    """[N] sequence log-probs from [N, T] per-token ones: the masked sum, or that sum over the token count."""
    total = (per_token * mask).sum(-1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / mask.sum(-1).clamp(min=1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


__all__ = ["Kind", "LossSpec", "PREFERENCE_LOSSES", "PreferenceLogps", "preference_loss", "reduce_logps", "spec_of"]
