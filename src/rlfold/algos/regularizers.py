"""Sequence-level regulariser parts (``algo.regularizers``): a penalty coef · g(mean_i φ_i) beside KL.

A part registered in ``REGULARIZERS`` is a class built with its keyword options; the instance is
pure tensor math and follows ``SequenceRegularizer``. It declares with ``@needs`` the per-token inputs
it reads besides the policy log-probs (``ref_logprobs``: the trainer then builds the reference model).

The penalty is a non-linear function g of a batch mean, so it is not a sum over micro-batches. The
trainer therefore fixes the slope g'(mean φ⁰) once per optimiser mini-batch, from the log-probs the
update starts from (``PreparedBatch.old_logprobs``), and each micro-batch adds
coef · g'(mean φ⁰) · Σ_{i ∈ micro-batch} φ_i / B. Summed over micro-batches this gradient equals
∇ coef · g(mean φ) exactly wherever the policy is the one the update started from (the first optimiser
step of every update); it is the same for any micro-batch size (``trainers.update.RegularizerTerm``).
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from rlfold.core.registry import REGULARIZERS


class SequenceRegularizer(Protocol):
    """What ``trainers.update.RegularizerTerm`` calls; inputs named in ``needs`` come as keywords."""

    metric: str  # logged as actor/<metric>_penalty

    def sample_terms(self, logprobs: Tensor, mask: Tensor, **inputs: Tensor) -> Tensor:
        """φ_i per sequence, [N, R] -> [N], differentiable in ``logprobs``."""
        ...

    def penalty(self, mean: Tensor) -> Tensor:
        """g(mean φ), the penalty before its coefficient."""
        ...

    def slope(self, mean: Tensor) -> Tensor:
        """g'(mean φ)."""
        ...

    def sample_metrics(self, logprobs: Tensor, mask: Tensor, **inputs: Tensor) -> dict[str, Tensor]:
        """Per-sequence [N] quantities whose batch means are logged as actor/<key>."""
        ...


__all__ = ["REGULARIZERS", "SequenceRegularizer"]
