"""DECS per-position group-normalised token advantage (arXiv 2509.25827).

Registered in ``ADVANTAGES`` as ``decs``; it consumes the per-token rewards of the ``decs`` shaping
part (``rlfold.rewards.decs_shaping.decs``) through ``@needs("token_rewards")``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlfold.algos.advantages import ADVANTAGES, PositiveEps, _check_inputs
from rlfold.core.groups import group_index
from rlfold.core.options import group_relative
from rlfold.core.registry import needs

__all__ = ["decs"]


@ADVANTAGES.register("decs")
@group_relative
@needs("token_rewards")
def decs(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    *,
    token_rewards: Tensor,
    eps: PositiveEps = 1e-6,
) -> tuple[Tensor, dict[str, float]]:
    """DECS token advantage (Lu et al., arXiv 2509.25827, Eq. 10): per-position group normalisation.

    A_ij = (r_ij - mean_g r_gj) / (std_g r_gj + eps), where for token position j the mean and the
    unbiased (n-1) std run over the rows g of row i's group whose position j is valid
    (``response_mask``). Choices: eps = 1e-6 is added to the std (the paper writes a bare std);
    positions with fewer than 2 valid rows in the group get advantage 0 (no group baseline);
    positions where all valid rows agree get 0 (0 / eps); masked tokens get exactly 0.
    ``rewards`` is validated but not used (the shaping part's ``scores`` are r_+ * correct).
    Metrics ``frac_tokens_unpaired`` (valid tokens with fewer than 2 valid rows at their position in
    the group) and ``token_rewards_mean`` (over valid tokens).
    """
    _check_inputs(rewards, group_ids, response_mask)
    if token_rewards.shape != response_mask.shape:
        raise ValueError(
            f"token_rewards must have the shape of response_mask {tuple(response_mask.shape)}, "
            f"got {tuple(token_rewards.shape)}"
        )
    if not torch.isfinite(token_rewards).all():
        raise ValueError("token_rewards must be finite")
    r = token_rewards.detach()
    r = r if r.dtype.is_floating_point else r.float()
    valid = response_mask.bool()
    if r.numel() == 0:
        return torch.zeros_like(r), {"frac_tokens_unpaired": 0.0, "token_rewards_mean": 0.0}
    vf = valid.to(r.dtype)
    r = torch.where(valid, r, torch.zeros_like(r))
    inv, n_groups = group_index(group_ids)
    zeros = torch.zeros((n_groups, r.shape[1]), dtype=r.dtype, device=r.device)
    count = zeros.index_add(0, inv, vf)                      # [G, R] valid rows per position
    mean = zeros.index_add(0, inv, r) / count.clamp(min=1)
    dev = torch.where(valid, r - mean[inv], torch.zeros_like(r))
    var = zeros.index_add(0, inv, dev**2) / (count - 1).clamp(min=1)
    std = var.sqrt()
    paired = (count >= 2)[inv] & valid
    adv = torch.where(paired, dev / (std[inv] + eps), torch.zeros_like(r))
    n_valid = int(valid.sum().item())
    metrics = {
        "frac_tokens_unpaired": float((valid & ~paired).sum().item()) / n_valid if n_valid else 0.0,
        "token_rewards_mean": float(r.sum().item()) / n_valid if n_valid else 0.0,
    }
    return adv, metrics
