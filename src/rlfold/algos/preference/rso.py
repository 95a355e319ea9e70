"""RSO's statistical rejection sampling (Liu et al. 2023, arXiv 2309.06657, Algorithm 1, App. A.1).

Approximates samples from pi_r(y|x) proportional to pi_sft(y|x) exp(r(x, y) / beta) given candidates
already drawn from pi_sft: a pure function of their rewards and a seeded generator. The losses RSO
trains with are ``hinge_norm``, ``rso_hinge`` and ``dpo`` (``pairwise``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def rso_acceptance_probs(rewards: Tensor, beta: float) -> Tensor:
    """[K] exp((r - max r) / beta): each candidate's acceptance probability in the first pass."""
    if not beta > 0:
        raise ValueError(f"rso: beta must be > 0, got {beta}")
    r = rewards.detach().to(torch.float64)
    return torch.exp((r - r.max()) / beta)


def rso_accept(rewards: Tensor, beta: float, num_samples: int, generator: torch.Generator) -> list[int]:
    """Indices of ``num_samples`` distinct candidates accepted by RSO's rejection sampling, in acceptance order.

    Repeat until enough are accepted: r_max = the largest reward among the remaining candidates; for each
    remaining candidate in index order draw u ~ U[0, 1) and accept it if u < exp((r - r_max) / beta)
    (stopping once num_samples are accepted); remove the accepted ones. The current maximum is accepted
    with probability 1, so every pass accepts at least one. beta -> inf accepts every candidate (the
    first num_samples in index order: plain SFT sampling); beta -> 0 keeps only the best (best-of-N).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rso_accept: rewards must be [K], got shape {tuple(rewards.shape)}")
    if not beta > 0:
        raise ValueError(f"rso_accept: beta must be > 0, got {beta}")
    k = rewards.shape[0]
    if not 1 <= num_samples <= k:
        raise ValueError(f"rso_accept: num_samples must be in [1, {k}] (candidates are drawn without replacement), "
                         f"got {num_samples}")
    r = [float(x) for x in rewards.detach().to(torch.float64).cpu()]
    if not all(math.isfinite(x) for x in r):
        raise ValueError("rso_accept: rewards must be finite")
    remaining = list(range(k))
    accepted: list[int] = []
    while len(accepted) < num_samples:
        r_max = max(r[i] for i in remaining)
        taken = []
        for i in remaining:
            u = float(torch.rand((), generator=generator, dtype=torch.float64))
            if u < math.exp((r[i] - r_max) / beta):
                accepted.append(i)
                taken.append(i)
                if len(accepted) == num_samples:
                    break
        remaining = [i for i in remaining if i not in taken]
    return accepted


__all__ = ["rso_accept", "rso_acceptance_probs"]
