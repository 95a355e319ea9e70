"""χ² occupancy-measure regularisation of the policy towards the reference (ORPO's LLM form).

Laidlaw et al., "Correlated Proxies: A New Definition and Improved Mitigation for Reward Hacking"
(arXiv 2403.03185, ICLR'25), code ``cassidylaidlaw/llm_optimization``. In LLM generation the state is
the prefix, so the occupancy-measure ratio of a whole response is its sequence likelihood ratio
r = π(y|x) / π_ref(y|x) = e^s with s = Σ_t (log π − log π_ref) over the response tokens; no
discriminator is needed. For samples from π:

    χ̂²  = mean_i [(r_i − 1) + (1/r_i − 1)]      (1/r − 1 has zero mean under π: a control variate)
    KL̂  = mean_i [s_i + (1/r_i − 1)]            (logged for comparison)
    penalty = coef · √max(χ̂², floor)            (floor 1e-4; replaces the KL penalty)

r − 1 = expm1(s) is extended linearly above s ≥ clip (clip 10): e^clip (1 + s − clip) − 1, and
1/r − 1 = expm1(−s) likewise for s ≤ −clip, so one far-off sample cannot overflow the estimate.
Pure tensor functions here; ``Chi2Occupancy`` is the registered regulariser part (see
``rlfold.algos.regularizers`` for the protocol and how the trainer linearises √ per mini-batch).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from rlfold.core.masked import masked_sum
from rlfold.core.registry import REGULARIZERS, needs

CLIP = 10.0
FLOOR = 1e-4


def sequence_log_ratio(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> Tensor:
    """s_i = Σ_t m_{i,t} (logp_{i,t} − ref_logp_{i,t}) over the response tokens: [N, R] -> [N]."""
    if logprobs.shape != ref_logprobs.shape or logprobs.shape != mask.shape:
        raise ValueError(f"logprobs, ref_logprobs and mask must have the same shape, got {tuple(logprobs.shape)}, "
                         f"{tuple(ref_logprobs.shape)} and {tuple(mask.shape)}")
    return masked_sum(logprobs - ref_logprobs, mask, dim=-1)


def expm1_linear(x: Tensor, clip: float = CLIP) -> Tensor:
    """expm1(x) below ``clip``, continued by its tangent at ``clip``: e^clip (1 + x − clip) − 1 for x ≥ clip.

    Value and slope are continuous at ``clip``; the gradient is e^x below and e^clip above.
    """
    inside = torch.expm1(x.clamp(max=clip))  # clamped so the unused branch never overflows
    outside = math.exp(clip) * (1.0 + x - clip) - 1.0
    return torch.where(x >= clip, outside, inside)


def chi2_terms(s: Tensor, clip: float = CLIP) -> Tensor:
    """Per-sample χ² terms (r − 1) + (1/r − 1) = expm1(s) + expm1(−s), each linearly extended past ±clip."""
    return expm1_linear(s, clip) + expm1_linear(-s, clip)


def kl_terms(s: Tensor, clip: float = CLIP) -> Tensor:
    """Per-sample KL terms s + (1/r − 1) (the KL estimate logged beside χ̂²)."""
    return s + expm1_linear(-s, clip)


def chi2_penalty(chi2: Tensor, coef: float, floor: float = FLOOR) -> Tensor:
    """coef · √max(χ̂², floor): the loss of the paper's code (zero gradient while χ̂² < floor)."""
    return coef * torch.sqrt(chi2.clamp(min=floor))


def sqrt_slope(chi2: Tensor, floor: float = FLOOR) -> Tensor:
    """d √max(χ̂², floor) / d χ̂² = 1 / (2 √χ̂²) where χ̂² ≥ floor, else 0 (as autograd of ``chi2_penalty``)."""
    safe = chi2.clamp(min=floor)
    return torch.where(chi2 >= floor, 0.5 / torch.sqrt(safe), torch.zeros_like(safe))


@REGULARIZERS.register("chi2_occupancy")
@needs("ref_logprobs")
class Chi2Occupancy:
    """χ² occupancy-measure regulariser coef·√χ̂²(μ_π‖μ_ref) (Laidlaw et al., "Correlated Proxies", arXiv 2403.03185).

    Per-sequence terms φ_i = expm1(s_i) + expm1(−s_i) with s_i the sequence log-ratio to the
    reference; outer function g(χ̂²) = √max(χ̂², floor) of their batch mean χ̂². Logs ``chi2``
    (χ̂²) and ``chi2_kl`` (the KL estimate mean[s + (1/r − 1)]).
    """

    metric = "chi2"

    def __init__(self, *,
                 clip: Annotated[float, Field(gt=0, le=50, description="|s| beyond which expm1 is extended "
                                                                       "linearly (the paper's code: 10)")] = CLIP,
                 floor: Annotated[float, Field(gt=0, description="lower bound of χ̂² under the square root "
                                                                 "(the paper's code: 1e-4)")] = FLOOR) -> None:
        self.clip, self.floor = float(clip), float(floor)

    def sample_terms(self, logprobs: Tensor, mask: Tensor, *, ref_logprobs: Tensor) -> Tensor:
        """φ_i per sequence, [N, R] -> [N] (differentiable in ``logprobs``)."""
        return chi2_terms(sequence_log_ratio(logprobs, ref_logprobs, mask), self.clip)

    def penalty(self, mean: Tensor) -> Tensor:
        """g(χ̂²) = √max(χ̂², floor) (times coef in the loss)."""
        return chi2_penalty(mean, 1.0, self.floor)

    def slope(self, mean: Tensor) -> Tensor:
        """g'(χ̂²), the scale the trainer fixes per mini-batch."""
        return sqrt_slope(mean, self.floor)

    def sample_metrics(self, logprobs: Tensor, mask: Tensor, *, ref_logprobs: Tensor) -> dict[str, Tensor]:
        """Per-sequence quantities whose batch means are logged: χ² terms and KL terms, [N] each."""
        s = sequence_log_ratio(logprobs.detach(), ref_logprobs, mask)
        return {"chi2": chi2_terms(s, self.clip), "chi2_kl": kl_terms(s, self.clip)}


__all__ = ["CLIP", "Chi2Occupancy", "FLOOR", "chi2_penalty", "chi2_terms", "expm1_linear", "kl_terms",
           "sequence_log_ratio", "sqrt_slope"]
