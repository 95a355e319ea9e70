"""Pairwise losses of the DPO family on (chosen, rejected) log-ratios."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from rlfold.algos.preference.base import PREFERENCE_LOSSES, PreferenceLogps, preference_loss


@PREFERENCE_LOSSES.register("dpo")
@preference_loss(kinds=("pairs",))
def dpo(lp: PreferenceLogps, *, beta: float = 0.1) -> Tensor:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290): -log sigma(beta h), h = rho_w - rho_l; TRL ``sigmoid``."""
    rho = lp.ratios
    return -F.logsigmoid(beta * (rho[:, 0] - rho[:, 1]))
