"""Loss aggregation: per-token losses [N, R] -> one scalar, exact under micro-batching.

An ``Aggregation`` is split in two so that gradient accumulation never changes the loss
(exact aggregation, docs/design.md). The trainer computes ``norm = agg.normaliser(mask)`` ONCE on the mask of
the whole optimiser mini-batch (``max_len``: the generation limit, used by constant-length
modes), then calls ``agg.reduce(loss_mb, mask_mb, norm)`` for each
micro-batch and sums the results (before or after backward). For any split of the rows,
``sum_mb reduce(loss_mb, mask_mb, norm) == reduce(loss, mask, normaliser(mask))``. Every ``reduce``
is a sum over rows divided by ``norm``, which is what makes this hold. With data parallelism each
rank computes the counts of its rows and the trainer all-reduces them (``additive`` normalisers;
constants are not reduced), and multiplies by the world size when the framework averages gradients
across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from rlfold.core.masked import masked_sum
from rlfold.core import registry

Normaliser = Callable[..., float]  # (mask [N, R], max_len: int | None = None) -> float
Reduce = Callable[[Tensor, Tensor, float], Tensor]


@dataclass(frozen=True)
class Aggregation:
    """A normaliser (computed once per optimiser mini-batch) and a micro-batch reduction."""

    normaliser: Normaliser
    reduce: Reduce
    doc: str = ""
    # True when the normaliser counts tokens or sequences (a sum over rows, so data-parallel ranks
    # all-reduce it); False for a constant (1, L_max), which every rank already has.
    additive: bool = True


AGGREGATIONS = registry.AGGREGATIONS


def _check(loss: Tensor, mask: Tensor) -> None:
    if loss.dim() != 2 or tuple(mask.shape) != tuple(loss.shape):
        raise ValueError(
            f"loss and mask must both be [N, R] of the same shape, "
            f"got {tuple(loss.shape)} and {tuple(mask.shape)}"
        )


def _n_tokens(mask: Tensor, max_len: int | None = None) -> float:
    return float(mask.bool().sum().item())


def _n_seqs(mask: Tensor, max_len: int | None = None) -> float:
    """Number of sequences with at least one valid token."""
    return float(mask.bool().any(dim=-1).sum().item())


def _safe(norm: float) -> float:
    """Guard an all-masked mini-batch: its losses are all zero, so any positive divisor works."""
    return norm if norm > 0 else 1.0


def _token_sum(loss: Tensor, mask: Tensor, norm: float) -> Tensor:
    _check(loss, mask)
    return masked_sum(loss, mask) / _safe(norm)


def _seq_token_mean(loss: Tensor, mask: Tensor, norm: float) -> Tensor:
    _check(loss, mask)
    per_seq = masked_sum(loss, mask, dim=-1) / mask.sum(dim=-1).clamp(min=1).to(loss.dtype)
    return per_seq.sum() / _safe(norm)


def _one(mask: Tensor, max_len: int | None = None) -> float:
    return 1.0


def seq_mean_token_sum_norm(max_len: int | None = None) -> Aggregation:
    """Dr. GRPO aggregation with a constant length: ``max_len`` or, if None, the generation limit
    the trainer passes to the normaliser, or failing that the padded width."""
    fixed = max_len

    def normaliser(mask: Tensor, max_len: int | None = None) -> float:
        chosen = fixed if fixed is not None else max_len
        length = float(mask.shape[-1] if chosen is None else chosen)
        return length * _n_seqs(mask)

    return Aggregation(
        normaliser,
        _token_sum,
        "Dr. GRPO constant-length sum, sum_i sum_t m l / (L_max * #seqs), as in the paper and its "
        "code oat (Liu et al. 2025, arXiv 2503.20783); verl's older variant divides by L_max only.",
    )


_REGISTERED: dict[str, Aggregation] = {
    "token-mean": Aggregation(
        _n_tokens,
        _token_sum,
        "Token-level mean over the mini-batch, sum m l / sum m (DAPO, Yu et al. 2025, arXiv 2503.14476).",
    ),
    "token-sum": Aggregation(
        _one,
        _token_sum,
        "Plain token sum, sum m l (REINFORCE estimator, Williams 1992; verl, arXiv 2409.19256).",
        additive=False,
    ),
    "seq-mean-token-mean": Aggregation(
        _n_seqs,
        _seq_token_mean,
        "Mean over sequences of per-sequence token means (GRPO, Shao et al. 2024, arXiv 2402.03300).",
    ),
    "seq-mean-token-sum": Aggregation(
        _n_seqs,
        _token_sum,
        "Mean over sequences of per-sequence token sums (verl, Sheng et al. 2024, arXiv 2409.19256).",
    ),
    # Follows the Dr. GRPO paper and its official code (oat): each sequence's token sum is divided
    # by the constant L_max and the batch is averaged over sequences. L_max is the ``max_len`` the
    # trainer passes to the normaliser (the generation limit, rollout.max_new_tokens, unless
    # algo.loss_agg_max_len overrides it); without one, the padded width mask.shape[1].
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm(),
    # verl's older variant (policy.md section 0): divide by L_max only, no division by #sequences.
    "seq-mean-token-sum-norm-verl": Aggregation(
        lambda mask, max_len=None: float(mask.shape[-1] if max_len is None else max_len),
        _token_sum,
        "verl's older Dr. GRPO form, sum m l / L_max (Liu et al. 2025, arXiv 2503.20783; verl).",
        additive=False,
    ),
}

for _name, _agg in _REGISTERED.items():
    AGGREGATIONS.register(_name)(_agg)


def aggregate(loss: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Aggregate ``loss`` [N, R] over one batch: ``reduce(loss, mask, normaliser(mask))``."""
    agg = AGGREGATIONS.get(mode)
    return agg.reduce(loss, mask, agg.normaliser(mask))


__all__ = ["AGGREGATIONS", "Aggregation", "aggregate", "seq_mean_token_sum_norm"]
