"""Group bookkeeping shared by every layer: rows that answer the same prompt form a group."""

from __future__ import annotations

import torch
from torch import Tensor

# Log-ratios (log pi - log pi_old, log pi - log pi_ref, ...) are clamped to +-20 before exp() everywhere.
LOG_RATIO_CLAMP = 20.0


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Dense group index per row (0..G-1, in sorted order of the ids) and the number of groups G."""
    if group_ids.numel() == 0:
        return group_ids.new_zeros(0, dtype=torch.long), 0
    _, inv = torch.unique(group_ids, return_inverse=True)
    return inv, int(inv.max().item()) + 1


def first_rows(group_ids: Tensor) -> Tensor:
    """Index of the first row of each group, in group order of first appearance."""
    seen: dict[int, int] = {}
    for i, g in enumerate(group_ids.tolist()):
        seen.setdefault(g, i)
    return torch.tensor(list(seen.values()), dtype=torch.long)


__all__ = ["LOG_RATIO_CLAMP", "first_rows", "group_index"]
