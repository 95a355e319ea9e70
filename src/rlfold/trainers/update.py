"""Policy update: epochs x mini-batches x micro-batches with normalisers fixed per optimiser step."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import PreTrainedModel

from rlfold.algos.aggregation import Aggregation
from rlfold.core.config import RunConfig
from rlfold.core.masked import masked_sum
from rlfold.core.types import RolloutBatch
from rlfold.rollout.hf_engine import sequence_logprobs


@dataclass
class UpdateStats:
    metrics: dict[str, float] = field(default_factory=dict)
    finite: bool = True


def _chunks(n: int, size: int) -> list[torch.Tensor]:
    size = size or n
    return [torch.arange(s, min(s + size, n)) for s in range(0, n, size)]


def _trim(batch: RolloutBatch, *tensors: torch.Tensor) -> tuple[RolloutBatch, tuple[torch.Tensor, ...]]:
    """Drop response columns that are padding in every row of this micro-batch (saves compute)."""
    width = int(batch.response_mask.sum(1).max().item()) if batch.size else 0
    width = max(width, 1)
    batch.response_ids = batch.response_ids[:, :width]
    batch.response_mask = batch.response_mask[:, :width]
    return batch, tuple(t[:, :width] for t in tensors)


def accumulate_loss(
    model: PreTrainedModel,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    idx: torch.Tensor,
    micro_batch_size: int,
    cfg: RunConfig,
    policy_loss: Callable,
    aggregation: Aggregation,
    kl_estimator: Callable,
) -> tuple[dict[str, float], bool]:
    """Forward/backward over the micro-batches of mini-batch ``idx``; gradients accumulate in ``model``.

    The aggregation normaliser is computed once from the mask of the whole mini-batch, so the summed
    micro-batch gradients equal the full-batch gradient for any ``micro_batch_size``.
    """
    algo = cfg.algo
    mask_all = batch.response_mask[idx].float()
    norm = aggregation.normaliser(mask_all)
    n_tok = max(float(mask_all.sum()), 1.0)
    sums: dict[str, float] = defaultdict(float)
    finite = True
    for local in _chunks(len(idx), micro_batch_size):
        rows = idx[local]
        mb = batch.select(rows)
        ref = ref_logprobs[rows] if ref_logprobs is not None else torch.zeros_like(old_logprobs[rows])
        mb, (adv, old, ref) = _trim(mb, advantages[rows], old_logprobs[rows], ref)
        mask = mb.response_mask.float()
        logp, ent = sequence_logprobs(model, mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask,
                                      with_entropy=True)
        pg, pm = policy_loss(logp, old, adv, mask, clip_low=algo.clip_low, clip_high=algo.clip_high,
                             clip_c=algo.clip_c)
        pg_loss = aggregation.reduce(pg, mask, norm)
        loss = pg_loss
        if ref_logprobs is not None:
            kl = kl_estimator(logp, ref)
            kl_loss = aggregation.reduce(kl, mask, norm)
            loss = loss + algo.kl_coef * kl_loss
            sums["actor/kl"] += masked_sum(kl.detach(), mask).item() / n_tok
        if not torch.isfinite(loss):
            finite = False
            break
        loss.backward()
        w = float(mask.sum()) / n_tok  # token share of this micro-batch, for token-weighted metric means
        sums["actor/pg_loss"] += pg_loss.item()
        sums["actor/entropy"] += masked_sum(ent.detach(), mask).item() / n_tok
        for k, v in pm.items():
            sums[f"actor/{k}"] += float(v) * w
    return dict(sums), finite


def policy_update(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    cfg: RunConfig,
    policy_loss: Callable,
    aggregation: Aggregation,
    kl_estimator: Callable,
) -> UpdateStats:
    """``ppo_epochs`` passes over the batch in mini-batches, one optimiser step each.

    Old log-probs are the engine's plain-policy log-probs of the same weights (exact to ~1e-6 in
    float32), so no extra forward pass is spent on them. A non-finite loss or gradient norm skips
    the optimiser step (gradients are discarded) and marks the update non-finite.
    """
    tc = cfg.train
    old_logprobs = batch.policy_logprobs
    model.train()
    totals: dict[str, list[float]] = defaultdict(list)
    finite = True
    for _ in range(tc.ppo_epochs):
        for idx in _chunks(batch.size, tc.mini_batch_size):
            optimizer.zero_grad(set_to_none=True)
            sums, ok = accumulate_loss(model, batch, advantages, old_logprobs, ref_logprobs, idx,
                                       tc.micro_batch_size, cfg, policy_loss, aggregation, kl_estimator)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip) if ok else torch.tensor(math.nan)
            if not ok or not torch.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                finite = False
                continue
            optimizer.step()
            scheduler.step()
            for k, v in sums.items():
                totals[k].append(v)
            totals["actor/grad_norm"].append(float(grad_norm))
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    metrics = {k: sum(v) / len(v) for k, v in totals.items() if v}
    return UpdateStats(metrics=metrics, finite=finite)
