"""Length-bucketed micro-batches: rows of similar length share a forward, so a short row does not pay
for the longest row of the mini-batch.

The rows of a mini-batch are sorted by attended length (prompt + response tokens), longest first, and
cut greedily into micro-batches whose padded cost, rows x (longest prompt + longest response), stays
within a token budget; a row longer than the budget goes alone. Each micro-batch is then trimmed to
the columns its rows attend. The update's normalisers are fixed per mini-batch, so the summed
gradient is the unbucketed one (up to float summation order).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlfold.core.errors import ConfigError
from rlfold.core.types import RolloutBatch


def _response_attention(roll: RolloutBatch) -> Tensor:
    return roll.response_mask if roll.response_attention_mask is None else roll.response_attention_mask


def _last_attended(attention: Tensor) -> Tensor:
    """Per row, 1 + the index of its last attended response column (0 when none)."""
    cols = torch.arange(1, attention.shape[1] + 1)
    return (attention.bool().long() * cols).amax(dim=1) if attention.shape[1] else attention.new_zeros(len(attention))


def token_buckets(roll: RolloutBatch, idx: Tensor, max_tokens: int, max_rows: int = 0) -> list[Tensor]:
    """Micro-batches of the rows ``idx`` as positions in ``idx``: sorted by length, at most ``max_tokens``
    padded tokens and ``max_rows`` rows each (0: no row limit)."""
    if len(idx) == 0:
        return []
    prompt = roll.prompt_mask[idx].sum(dim=1)
    response = _last_attended(_response_attention(roll)[idx]).clamp(min=1)
    order = torch.argsort(prompt + response, descending=True, stable=True)
    buckets: list[list[int]] = []
    width_p = width_r = 0
    for i in order.tolist():
        p, r = int(prompt[i]), int(response[i])
        wp, wr = max(width_p, p), max(width_r, r)
        current = buckets[-1] if buckets else None
        if (current is not None and (len(current) + 1) * (wp + wr) <= max_tokens
                and (not max_rows or len(current) < max_rows)):
            current.append(i)
            width_p, width_r = wp, wr
        else:
            buckets.append([i])
            width_p, width_r = p, r
    return [torch.tensor(b, dtype=torch.long) for b in buckets]


def trim_prompt(sub: RolloutBatch) -> RolloutBatch:
    """Drop the leading prompt columns no row attends (left padding common to every row), in place."""
    attended = sub.prompt_mask.bool().any(dim=0).nonzero()
    start = int(attended.min()) if attended.numel() else sub.prompt_mask.shape[1]
    if start:
        sub.prompt_ids, sub.prompt_mask = sub.prompt_ids[:, start:], sub.prompt_mask[:, start:]
    return sub


def check_micro_batch_tokens(tokens: int, data_parallel: bool) -> None:
    """Length bucketing is single-process for now: ranks would make different numbers of forwards."""
    if tokens and data_parallel:
        raise ConfigError(f"train.micro_batch_tokens={tokens} (length-bucketed micro-batches) is not supported with "
                          "several processes yet; set train.micro_batch_tokens=0 (fixed train.micro_batch_size) or "
                          "train.strategy=single")


def padded_tokens(roll: RolloutBatch, buckets: list[Tensor]) -> int:
    """Tokens the forwards over ``buckets`` (row indices into ``roll``) compute, padding included."""
    total = 0
    for rows in buckets:
        p = int(roll.prompt_mask[rows].sum(dim=1).max())
        r = int(_last_attended(_response_attention(roll)[rows]).clamp(min=1).max())
        total += len(rows) * (p + r)
    return total


__all__ = ["check_micro_batch_tokens", "padded_tokens", "token_buckets", "trim_prompt"]
