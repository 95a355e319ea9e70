"""Unpaired preference losses: one completion per example with a desirable (1) / undesirable (0) label.

Each loss takes ``lp.policy`` [B, 1] (summed log-probs) with ``lp.scores`` [B, 1] holding the label
(> 0.5 is desirable); rho = log pi_theta - log pi_ref. The losses return [B], one value per completion;
the trainer's mean over them is TRL's mean over all examples of the batch.

Registered (kinds ``("unpaired",)``):

- ``kto`` [TRL ``KTOTrainer`` ``kto``];
- ``apo_zero_unpaired`` [TRL ``KTOTrainer`` ``apo_zero_unpaired``];
- ``bco`` [TRL <= 0.28 ``BCOTrainer``, removed from TRL 1.16];
- ``ce_u`` (CE-U unlearning of the undesirable completions; not in TRL).

Inputs beyond ``lp`` (declared with ``@needs``, passed as keywords):

- ``kl`` (``kto``): [B] log-ratios log pi_theta(y'|x) - log pi_ref(y'|x) of **mismatched** completions
  y' (TRL pairs each prompt with the completion of the next example of the batch, rotated by one),
  computed without gradient. The loss takes z0 = clamp(mean(kl), min=0), detached, as TRL does on one
  process (TRL averages the per-rank means across processes first; a data-parallel trainer that wants
  the same must all-reduce before calling). A fixed ``z0`` option replaces it.
- ``reward_shift`` (``bco``): a scalar tensor delta, the running mean of the implicit rewards beta * rho
  that the trainer keeps across steps (state, so not this pure function's); it is used detached.
- ``token_logits`` (``ce_u``): a ``TokenLogits`` of the policy's logits [B, T, V] (with gradient) at the
  response positions, the response token ids and the response mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from rlfold.algos.preference.base import (
    PREFERENCE_LOSSES, Beta, Positive, PreferenceLogps, check_kind, check_range, preference_loss,
)
from rlfold.algos.preference.token_level import ce_u_loss
from rlfold.core.registry import needs


def _unpaired(lp: PreferenceLogps, name: str) -> tuple[Tensor, Tensor]:
    """(rho [B], desirable [B] bool) of checked unpaired examples."""
    check_kind(lp, 1, name)
    return lp.ratios[:, 0], lp.scores[:, 0] > 0.5


@PREFERENCE_LOSSES.register("kto")
@preference_loss(kinds=("unpaired",))
@needs("kl")
def kto(lp: PreferenceLogps, *, beta: Beta = 0.1, desirable_weight: Positive = 1.0, undesirable_weight: Positive = 1.0,
        z0: Optional[Annotated[float, Field(ge=0)]] = None, kl: Optional[Tensor] = None) -> Tensor:
    """KTO (Ethayarajh et al. 2024, arXiv 2402.01306, Eq. 7): l_D (1 - s(b(rho-z0))) / l_U (1 - s(b(z0-rho))); TRL kto.

    z0 = clamp(mean(kl), min=0).detach() from the mismatched-completion log-ratios (TRL ``kto``), or the
    fixed ``z0`` option when given. TRL warns unless lambda_D n_D / (lambda_U n_U) is in [1, 4/3].
    """
    rho, desirable = _unpaired(lp, "kto")
    check_range("kto", "desirable_weight", desirable_weight, 0.0, math.inf, low_open=True)
    check_range("kto", "undesirable_weight", undesirable_weight, 0.0, math.inf, low_open=True)
    if z0 is not None:
        check_range("kto", "z0", z0, 0.0, math.inf)
        ref_point = torch.as_tensor(z0, dtype=rho.dtype, device=rho.device)
    elif kl is None:
        raise ValueError("kto: needs the 'kl' input ([B] mismatched-completion log-ratios) or a fixed z0 option")
    else:
        ref_point = kl.detach().to(rho.dtype).mean().clamp(min=0)
    good = desirable_weight * (1 - torch.sigmoid(beta * (rho - ref_point)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (ref_point - rho)))
    return torch.where(desirable, good, bad)


@PREFERENCE_LOSSES.register("apo_zero_unpaired")
@preference_loss(kinds=("unpaired",))
def apo_zero_unpaired(lp: PreferenceLogps, *, beta: Beta = 0.1) -> Tensor:
    """APO-zero unpaired (D'Oosterlinck et al. 2024, arXiv 2408.06266): 1 - s(b rho) / s(b rho); TRL KTO trainer."""
    rho, desirable = _unpaired(lp, "apo_zero_unpaired")
    s = torch.sigmoid(beta * rho)
    return torch.where(desirable, 1 - s, s)


@PREFERENCE_LOSSES.register("bco")
@preference_loss(kinds=("unpaired",))
@needs("reward_shift")
def bco(lp: PreferenceLogps, *, beta: Beta = 0.01, reward_shift: Tensor) -> Tensor:
    """BCO (Jung et al. 2024, arXiv 2404.04656): -log s(b rho - delta) if desirable else -log s(-(b rho - delta)).

    delta = ``reward_shift`` (detached scalar), the running mean of beta * rho kept by the trainer, as TRL
    <= 0.28's BCOTrainer kept it. The paper's optional density-ratio (UDM) weights are not implemented.
    Default beta 0.01 (TRL docs).
    """
    rho, desirable = _unpaired(lp, "bco")
    shift = torch.as_tensor(reward_shift).detach().to(dtype=rho.dtype, device=rho.device)
    if shift.numel() != 1:
        raise ValueError(f"bco: reward_shift must be a scalar tensor, got shape {tuple(shift.shape)}")
    u = beta * rho - shift.reshape(())
    return torch.where(desirable, -F.logsigmoid(u), -F.logsigmoid(-u))


@dataclass
class TokenLogits:
    """The policy's logits at each response position, with the targets and the response mask (K = 1)."""

    logits: Tensor   # [B, T, V], with gradient
    labels: Tensor   # [B, T] the response token ids
    mask: Tensor     # [B, T] 1 on response tokens


@PREFERENCE_LOSSES.register("ce_u")
@preference_loss(kinds=("unpaired",), reference=False)
@needs("token_logits")
def ce_u(lp: PreferenceLogps, *, retain_weight: NonNegative = 1.0,
         ignore_first_n: Annotated[int, Field(ge=0)] = 1, token_logits: TokenLogits) -> Tensor:
    """CE-U (Yang 2025, arXiv 2503.01224): unlearn undesirable completions with CE-U, keep desirable ones by NLL.

    An undesirable (label 0) completion gets the token-mean CE-U loss (``token_level.ce_u_loss``: cross-entropy
    towards the model's own detached distribution with the true token removed), the first
    ``ignore_first_n`` tokens ignored as in the open-unlearning implementation. CHOICE: the paper trains
    on a forget set alone; a desirable (label 1) completion here is the retain set, with its token-mean
    NLL times ``retain_weight`` (0: forget only). Reference-free.
    """
    _, desirable = _unpaired(lp, "ce_u")
    z, y, m = token_logits.logits, token_logits.labels, token_logits.mask
    out = []
    for i in range(z.shape[0]):
        if bool(desirable[i]):
            logp = torch.log_softmax(z[i], dim=-1).gather(-1, y[i].long().unsqueeze(-1)).squeeze(-1)
            k = m[i].to(logp.dtype)
            out.append(retain_weight * -(logp * k).sum() / k.sum().clamp(min=1))
        else:
            out.append(ce_u_loss(z[i : i + 1], y[i : i + 1], m[i : i + 1], ignore_first_n))
    return torch.stack(out)


__all__ = ["TokenLogits", "apo_zero_unpaired", "bco", "ce_u", "kto"]
