"""Pairwise preference losses: the DPO family, its hinge / SLiC relatives and the reference-free ones.

Every loss takes pairs (``lp.policy`` [B, 2], chosen first) of sequence log-probs **summed** over
completion tokens; a length-normalised loss divides by ``lp.lengths`` itself (clamped at 1, as TRL).
Notation: rho = log pi_theta - log pi_ref per response, h = rho_w - rho_l; s (or sigma) is the logistic function.

Registered (TRL 1.16 name in brackets where TRL has the loss):

- with a reference: ``dpo`` [DPO ``sigmoid``], ``cdpo`` (label smoothing; TRL <= 0.28 ``sigmoid`` +
  ``label_smoothing``), ``ipo`` [``ipo`` with ``length_normalize=True``], ``hinge_norm`` [``hinge``],
  ``rdpo`` [``robust``], ``rpo`` [``["sigmoid", "sft"]`` with ``sft_form="token_mean"``],
  ``sigmoid_norm`` [``sigmoid_norm``], ``copg``, ``dno``, ``nca_pair`` [``nca_pair``], ``exo_pair``
  [``exo_pair``], ``bco_pair`` [``bco_pair``], ``sppo_hard`` [``sppo_hard``], ``aot`` [``aot``],
  ``aot_unpaired`` [``aot_unpaired``], ``apo_zero`` [``apo_zero``], ``apo_down`` [``apo_down``],
  ``discopop`` [``discopop``], ``dr_dpo``, ``hypo``;
- reference-free (``spec_of(fn).reference`` is False): ``slic_hf``, ``rso_hinge`` [CPO ``hinge``],
  ``cpl``, ``cpo`` [CPO ``sigmoid``], ``simpo`` [CPO ``simpo``], ``alphapo`` [CPO ``alphapo``],
  ``orpo`` [ORPO].

Inputs beyond ``lp`` (declared with ``@needs``, passed as keywords):

- ``online`` (``hypo``): a ``PreferenceLogps`` of k >= 2 samples per prompt drawn from the current policy,
  ``policy`` [P, k] with gradient, ``reference`` [P, k] without (``valid`` marks uneven k).

Scores: ``copg`` and ``dno`` read ``lp.scores`` as the responses' rewards (plain pairs carry [1, 0]).

Batch coupling: ``aot``, ``aot_unpaired`` (they sort across the pairs of the micro-batch they get, as
TRL sorts a device batch), ``dr_dpo`` (a log-mean-exp over the micro-batch), ``hypo`` (one KL estimate
over the online batch) and the token-mean NLL terms of ``rpo`` (``token_mean``), ``cpo`` and ``orpo``
(the mean NLL over all chosen tokens of the batch, TRL's convention) return per-pair values whose
**mean** is the batch loss; an individual entry is not a per-example loss. The result therefore
depends on how the trainer splits a batch into micro-batches.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from rlfold.algos.preference.base import (
    PREFERENCE_LOSSES, Beta, FlipRate, NonNegative, Positive, PreferenceLogps, SmoothRate, check_kind,
    check_range, chosen_nll_token_mean, preference_loss,
)
from rlfold.core.registry import needs

OpenUnit = Annotated[float, Field(gt=0, lt=1)]     # EXO's target mass eps in (0, 1)
Bias = Annotated[float, Field(gt=0, le=1)]         # CPL's conservative bias lambda in (0, 1]

# --------------------------------------------------------------------------------------------- helpers


def _pairs(lp: PreferenceLogps, name: str) -> tuple[Tensor, Tensor]:
    """(rho_w, rho_l) of checked pairs."""
    check_kind(lp, 2, name)
    rho = lp.ratios
    return rho[:, 0], rho[:, 1]


def _margin(lp: PreferenceLogps, name: str) -> Tensor:
    rho_w, rho_l = _pairs(lp, name)
    return rho_w - rho_l


def _positive(name: str, option: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name}: {option} must be > 0, got {value}")


def _smoothed_logistic(u: Tensor, eps: float) -> Tensor:
    """-(1 - eps) log sigma(u) - eps log sigma(-u): the logistic loss on labels flipped at rate eps."""
    if eps == 0:
        return -F.logsigmoid(u)
    return -(1 - eps) * F.logsigmoid(u) - eps * F.logsigmoid(-u)


def _averaged(lp: PreferenceLogps) -> tuple[Tensor, Tensor]:
    """(a_w, a_l): policy log-probs divided by the completion lengths (clamped at 1)."""
    avg = lp.policy / lp.lengths.clamp(min=1)
    return avg[:, 0], avg[:, 1]


def _dr_aggregate(losses: Tensor, beta_prime: float) -> Tensor:
    """-beta' log mean_i exp(-l_i / beta') of [B] losses, broadcast to [B] (its mean is the batch loss)."""
    n = losses.shape[0]
    value = -beta_prime * (torch.logsumexp(-losses / beta_prime, dim=0) - math.log(n))
    return value.expand(n).clone()


def _rloo_kl(online: PreferenceLogps) -> Tensor:
    """Scalar: value mean(rho) over the online samples, gradient the RLOO estimate of grad KL(pi || ref).

    rho_i = log pi(y_i) - log pi_ref(y_i) for y_i ~ pi; A_i = rho_i - mean_{j != i} rho_j over the valid
    samples of the same prompt (all detached); the surrogate is sg(mean rho) + mean_i A_i (log pi_i -
    sg(log pi_i)), whose value is the KL estimate and whose gradient is mean_i A_i grad log pi_i.
    """
    pol = online.policy
    if pol.dim() != 2 or tuple(online.reference.shape) != tuple(pol.shape):
        raise ValueError(f"hypo: online.policy and online.reference must be [P, k] of one shape, got "
                         f"{tuple(pol.shape)} and {tuple(online.reference.shape)}")
    m = online.mask().to(pol.dtype)
    n = m.sum(-1, keepdim=True)
    if bool((n < 2).any()):
        raise ValueError("hypo: every prompt needs k >= 2 valid online samples (the RLOO baseline leaves one out)")
    rho = torch.where(m > 0, pol.detach() - online.reference.detach(), torch.zeros_like(pol))
    baseline = (rho.sum(-1, keepdim=True) - rho) / (n - 1)
    adv = (rho - baseline) * m
    count = m.sum()
    score = (adv * (pol - pol.detach())).sum() / count
    return rho.sum() / count + score


# ------------------------------------------------------------------------------------- the DPO family


@PREFERENCE_LOSSES.register("dpo")
@preference_loss(kinds=("pairs",))
def dpo(lp: PreferenceLogps, *, beta: Beta = 0.1) -> Tensor:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290): -log sigma(beta h), h = rho_w - rho_l; TRL ``sigmoid``."""
    return -F.logsigmoid(beta * _margin(lp, "dpo"))


@PREFERENCE_LOSSES.register("cdpo")
@preference_loss(kinds=("pairs",))
def cdpo(lp: PreferenceLogps, *, beta: Beta = 0.1, eps: SmoothRate = 0.1) -> Tensor:
    """Conservative DPO (Mitchell 2023 cDPO note, in the DPO code of arXiv 2305.18290): label smoothing eps.

    l = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h); finite minimiser beta h* = log((1-eps)/eps).
    TRL <= 0.28 ``sigmoid`` with ``label_smoothing`` (TRL >= 0.29 has no cDPO). CHOICE: the official config
    defaults eps to 0, which is plain ``dpo``; we default to 0.1, the flip rate of the rDPO experiments.
    """
    check_range("cdpo", "eps", eps, 0.0, 0.5)
    return _smoothed_logistic(beta * _margin(lp, "cdpo"), eps)


@PREFERENCE_LOSSES.register("ipo")
@preference_loss(kinds=("pairs",), lengths=True)
def ipo(lp: PreferenceLogps, *, beta: Beta = 0.1, length_normalize: bool = False) -> Tensor:
    """IPO (Azar et al. 2023, arXiv 2310.12036): (h - 1/(2 beta))^2, beta as tau; TRL ``ipo`` when length-normalised.

    CHOICE: h uses summed log-ratios by default, as the official DPO repository's ``ipo=True``;
    ``length_normalize=True`` divides each log-ratio by its completion length first, which is exactly
    TRL's ``ipo`` (and TRL's CPO ``ipo`` with a zero reference).
    """
    rho_w, rho_l = _pairs(lp, "ipo")
    if length_normalize:
        n = lp.lengths.clamp(min=1)
        rho_w, rho_l = rho_w / n[:, 0], rho_l / n[:, 1]
    return (rho_w - rho_l - 1 / (2 * beta)) ** 2


@PREFERENCE_LOSSES.register("hinge_norm")
@preference_loss(kinds=("pairs",))
def hinge_norm(lp: PreferenceLogps, *, beta: Beta = 0.05) -> Tensor:
    """RSO hinge-norm (Liu et al. 2023, arXiv 2309.06657, Eq. 10): max(0, 1 - beta h); TRL DPO ``hinge``.

    beta is RSO's gamma (paper default 0.05).
    """
    return torch.relu(1 - beta * _margin(lp, "hinge_norm"))


@PREFERENCE_LOSSES.register("rdpo")
@preference_loss(kinds=("pairs",))
def rdpo(lp: PreferenceLogps, *, beta: Beta = 0.1, eps: FlipRate = 0.1) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024, arXiv 2403.00409): [(1-eps) l(h) - eps l(-h)] / (1-2 eps); TRL ``robust``.

    l(h) = -log sigma(beta h). Unbiased under labels flipped at rate eps: (1-eps) l_eps(h) + eps l_eps(-h) =
    l(h). Unbounded below (its slope tends to -eps beta / (1 - 2 eps)). eps in [0, 1/2); default 0.1 (paper §6).
    """
    check_range("rdpo", "eps", eps, 0.0, 0.5, high_open=True)
    u = beta * _margin(lp, "rdpo")
    return ((1 - eps) * F.softplus(-u) - eps * F.softplus(u)) / (1 - 2 * eps)


@PREFERENCE_LOSSES.register("rpo")
@preference_loss(kinds=("pairs",), lengths=True)
def rpo(lp: PreferenceLogps, *, beta: Beta = 0.01, eta: NonNegative = 0.005,
        sft_form: Literal["cumulative", "token_mean"] = "cumulative") -> Tensor:
    """RPO (Liu et al. 2024, arXiv 2405.16436): DPO + an SFT loss on the chosen responses; TRL ``["sigmoid","sft"]``.

    ``cumulative`` (the paper's alignment-handbook code, default): + eta * beta * (-log pi(y_w)), summed over
    tokens. ``token_mean``: + eta * (token-mean NLL over all chosen tokens of the batch, the same value for
    every pair), which is TRL's ``loss_type=["sigmoid", "sft"], loss_weights=[1, eta]`` (batch-coupled).
    Defaults: the zephyr-7b-beta config (eta 0.005, beta 0.01). Not TRL <= 0.28 ``rpo_alpha`` (another paper).
    """
    check_range("rpo", "eta", eta, 0.0, math.inf)
    base = dpo(lp, beta=beta)
    if sft_form == "cumulative":
        return base + eta * beta * (-lp.policy[:, 0])
    if sft_form == "token_mean":
        return base + eta * chosen_nll_token_mean(lp)
    raise ValueError(f"rpo: sft_form must be 'cumulative' or 'token_mean', got {sft_form!r}")


@PREFERENCE_LOSSES.register("sigmoid_norm")
@preference_loss(kinds=("pairs",), lengths=True)
def sigmoid_norm(lp: PreferenceLogps, *, beta: Beta = 5.0) -> Tensor:
    """Length-normalised DPO (Tülu 3, Lambert et al. 2024, arXiv 2411.15124): -log s(beta (rho_w/|y_w| - rho_l/|y_l|)).

    TRL ``sigmoid_norm``. Default beta 5, Tülu 3's setting for this loss.
    """
    rho_w, rho_l = _pairs(lp, "sigmoid_norm")
    n = lp.lengths.clamp(min=1)
    return -F.logsigmoid(beta * (rho_w / n[:, 0] - rho_l / n[:, 1]))


@PREFERENCE_LOSSES.register("copg")
@preference_loss(kinds=("pairs", "lists"))
def copg(lp: PreferenceLogps, *, beta: Beta = 0.1) -> Tensor:
    """CoPG (Flet-Berliac et al. 2024, arXiv 2406.19185): (R^b(y_w) - R^b(y_l))^2, R^b = R - beta rho, R = lp.scores.

    With k responses (lists): (1/(k-1)) sum_{i<j} (R^b_i - R^b_j)^2 over the valid ones (the Command A
    report's form; k = 2 is the pair loss). Equals beta^2 * IPO when R_w - R_l = 1/2. Not in TRL.
    """
    check_kind(lp, None, "copg")
    m = lp.mask()
    r = torch.where(m, lp.scores - beta * lp.ratios, torch.zeros_like(lp.policy))
    diff = r.unsqueeze(-1) - r.unsqueeze(-2)                                   # [B, K, K]
    pair = (m.unsqueeze(-1) & m.unsqueeze(-2)).triu(diagonal=1)
    k = m.sum(-1).to(lp.policy.dtype)
    return (diff.square() * pair).sum((-1, -2)) / (k - 1).clamp(min=1)


@PREFERENCE_LOSSES.register("dno")
@preference_loss(kinds=("pairs",))
def dno(lp: PreferenceLogps, *, beta: Beta = 0.1, scale: Positive = 1.0) -> Tensor:
    """DNO (Rosset et al. 2024, arXiv 2404.03715, Alg. 1): BCE of sigma(beta h) onto z = sigma(scale (s_w - s_l)).

    s = lp.scores (DNO's r_t, an expected win-rate); l = -z log sigma(beta h) - (1 - z) log sigma(-beta h),
    minimised at beta h = logit(z). Hard labels with a large scale (z = 1) give ``dpo``. DNO's reference
    is the previous iterate pi_t: the trainer's job (set the reference to it), not this loss's.
    """
    _positive("dno", "scale", scale)
    h = _margin(lp, "dno")
    z = torch.sigmoid(scale * (lp.scores[:, 0] - lp.scores[:, 1])).detach()
    u = beta * h
    return -z * F.logsigmoid(u) - (1 - z) * F.logsigmoid(-u)


@PREFERENCE_LOSSES.register("nca_pair")
@preference_loss(kinds=("pairs",))
def nca_pair(lp: PreferenceLogps, *, beta: Beta = 0.01) -> Tensor:
    """NCA (Chen et al. 2024, arXiv 2402.05369), pairwise: -log s(b rho_w) - 1/2 log s(-b rho_w) - 1/2 log s(-b rho_l).

    TRL ``nca_pair``; default beta 0.01 (TRL docs).
    """
    rho_w, rho_l = _pairs(lp, "nca_pair")
    u_w, u_l = beta * rho_w, beta * rho_l
    return -F.logsigmoid(u_w) - 0.5 * F.logsigmoid(-u_w) - 0.5 * F.logsigmoid(-u_l)


@PREFERENCE_LOSSES.register("exo_pair")
@preference_loss(kinds=("pairs",))
def exo_pair(lp: PreferenceLogps, *, beta: Beta = 0.1, eps: OpenUnit = 1e-3) -> Tensor:
    """EXO (Ji et al. 2024, arXiv 2402.00856, Eq. 16): KL([q, 1-q] || [1-eps, eps]), q = s(beta h); TRL ``exo_pair``.

    eps in (0, 1) (TRL recommends 1e-3).
    """
    check_range("exo_pair", "eps", eps, 0.0, 1.0, low_open=True, high_open=True)
    u = beta * _margin(lp, "exo_pair")
    q_w, q_l = torch.sigmoid(u), torch.sigmoid(-u)
    return q_w * (F.logsigmoid(u) - math.log1p(-eps)) + q_l * (F.logsigmoid(-u) - math.log(eps))


@PREFERENCE_LOSSES.register("bco_pair")
@preference_loss(kinds=("pairs",))
def bco_pair(lp: PreferenceLogps, *, beta: Beta = 0.1) -> Tensor:
    """BCO (Jung et al. 2024, arXiv 2404.04656), pairwise without the running-mean shift: TRL 1.16 ``bco_pair``.

    l = -log sigma(beta rho_w) - log sigma(-beta rho_l) (TRL <= 0.28 subtracted a running mean; see ``bco``).
    """
    rho_w, rho_l = _pairs(lp, "bco_pair")
    return -F.logsigmoid(beta * rho_w) - F.logsigmoid(-beta * rho_l)


@PREFERENCE_LOSSES.register("sppo_hard")
@preference_loss(kinds=("pairs",))
def sppo_hard(lp: PreferenceLogps, *, beta: Beta = 0.001) -> Tensor:
    """SPPO (Wu et al. 2024, arXiv 2405.00675), hard labels: (rho_w - 1/(2b))^2 + (rho_l + 1/(2b))^2; TRL ``sppo_hard``.

    The winner's probability is set to 1 and the loser's to 0; default beta 0.001 (TRL docs).
    """
    rho_w, rho_l = _pairs(lp, "sppo_hard")
    return (rho_w - 0.5 / beta) ** 2 + (rho_l + 0.5 / beta) ** 2


@PREFERENCE_LOSSES.register("aot")
@preference_loss(kinds=("pairs",))
def aot(lp: PreferenceLogps, *, beta: Beta = 0.01, eps: SmoothRate = 0.0) -> Tensor:
    """AOT (Melnyk et al. 2024, arXiv 2406.05882), paired: smoothed logistic on sorted log-ratio gaps; TRL ``aot``.

    d_(r) = sort_b(log pi_w - log pi_l)_(r) - sort_b(log pi_ref_w - log pi_ref_l)_(r); l_(r) = -(1-eps) log
    sigma(beta d_(r)) - eps log sigma(-beta d_(r)). Batch-coupled: entry r is the r-th sorted quantile of
    this micro-batch, not pair r (TRL sorts a device batch likewise); only the mean is the loss.
    """
    check_kind(lp, 2, "aot")
    check_range("aot", "eps", eps, 0.0, 0.5)
    gap = torch.sort(lp.policy[:, 0] - lp.policy[:, 1], dim=0).values
    ref_gap = torch.sort(lp.reference[:, 0] - lp.reference[:, 1], dim=0).values
    return _smoothed_logistic(beta * (gap - ref_gap), eps)


@PREFERENCE_LOSSES.register("aot_unpaired")
@preference_loss(kinds=("pairs",))
def aot_unpaired(lp: PreferenceLogps, *, beta: Beta = 0.01, eps: SmoothRate = 0.0) -> Tensor:
    """AOT (Melnyk et al. 2024, arXiv 2406.05882), unpaired: d = sort(rho_w) - sort(rho_l); TRL ``aot_unpaired``.

    Same smoothed logistic as ``aot``. Batch-coupled: entry r is the r-th quantile of the micro-batch.
    """
    rho_w, rho_l = _pairs(lp, "aot_unpaired")
    check_range("aot_unpaired", "eps", eps, 0.0, 0.5)
    d = torch.sort(rho_w, dim=0).values - torch.sort(rho_l, dim=0).values
    return _smoothed_logistic(beta * d, eps)


@PREFERENCE_LOSSES.register("apo_zero")
@preference_loss(kinds=("pairs",))
def apo_zero(lp: PreferenceLogps, *, beta: Beta = 0.1) -> Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, arXiv 2408.06266, Eq. 7): (1 - s(b rho_w)) + s(b rho_l); TRL apo_zero."""
    rho_w, rho_l = _pairs(lp, "apo_zero")
    return (1 - torch.sigmoid(beta * rho_w)) + torch.sigmoid(beta * rho_l)


@PREFERENCE_LOSSES.register("apo_down")
@preference_loss(kinds=("pairs",))
def apo_down(lp: PreferenceLogps, *, beta: Beta = 0.1) -> Tensor:
    """APO-down (D'Oosterlinck et al. 2024, arXiv 2408.06266, Eq. 8): s(b rho_w) + (1 - s(b h)); TRL ``apo_down``."""
    rho_w, rho_l = _pairs(lp, "apo_down")
    return torch.sigmoid(beta * rho_w) + (1 - torch.sigmoid(beta * (rho_w - rho_l)))


@PREFERENCE_LOSSES.register("discopop")
@preference_loss(kinds=("pairs",))
def discopop(lp: PreferenceLogps, *, beta: Beta = 0.05, tau: Positive = 0.05) -> Tensor:
    """DiscoPOP (Lu et al. 2024, arXiv 2406.08414, Eq. 5): u = beta h, m = sigma(u/tau), (1-m)(-log sigma(u)) + m e^-u.

    TRL ``discopop`` (``discopop_tau``); defaults tau 0.05, beta 0.05 (TRL docs).
    """
    _positive("discopop", "tau", tau)
    u = beta * _margin(lp, "discopop")
    m = torch.sigmoid(u / tau)
    return (1 - m) * (-F.logsigmoid(u)) + m * torch.exp(-u)


@PREFERENCE_LOSSES.register("dr_dpo")
@preference_loss(kinds=("pairs",))
def dr_dpo(lp: PreferenceLogps, *, beta: Beta = 0.1, beta_prime: Positive = 1.0) -> Tensor:
    """Dr. DPO (Wu et al. 2024, arXiv 2407.07880): -beta' log mean_i exp(-l_DPO,i / beta') over the micro-batch.

    The gradient weights pairs by softmax(-l_i / beta'), so high-loss (likely mislabelled) pairs count less.
    Batch-coupled: every entry holds the batch value (so their mean is the loss); beta' default 1.0.
    """
    _positive("dr_dpo", "beta_prime", beta_prime)
    return _dr_aggregate(dpo(lp, beta=beta), beta_prime)


@PREFERENCE_LOSSES.register("hypo")
@preference_loss(kinds=("pairs",))
@needs("online")
def hypo(lp: PreferenceLogps, *, beta: Beta = 0.1, kl_coef: NonNegative = 0.01, online: PreferenceLogps) -> Tensor:
    """HyPO (Song et al. 2024, arXiv 2406.01462): DPO on offline pairs + kl_coef * KL(pi || ref) on online samples.

    Entry i = l_DPO,i + kl_coef * S, S one scalar over the online batch (batch-coupled). Value of S: the
    mean of rho = log pi - log pi_ref over the valid online samples, an unbiased KL estimate (they are
    drawn from pi). Gradient of S: mean_i sg(rho_i - mean_{j != i} rho_j) grad log pi_i over samples of the
    same prompt (RLOO; the E[grad log pi] = 0 term is dropped), unbiased for grad KL. CHOICE: the
    paper's lambda was not recovered; default 0.01. kl_coef = 0 is exactly ``dpo``.
    """
    check_range("hypo", "kl_coef", kl_coef, 0.0, math.inf)
    base = dpo(lp, beta=beta)
    if kl_coef == 0:
        return base
    return base + kl_coef * _rloo_kl(online)


# ----------------------------------------------------------------------------------- reference-free


@PREFERENCE_LOSSES.register("slic_hf")
@preference_loss(kinds=("pairs",), reference=False)
def slic_hf(lp: PreferenceLogps, *, beta: Beta = 0.1, delta: NonNegative = 1.0,
            lambda_reg: NonNegative = 0.0) -> Tensor:
    """SLiC-HF (Zhao et al. 2023, arXiv 2305.10425): max(0, delta - log pi_w + log pi_l) - lambda_reg log pi(y_w).

    Summed log-probs, no reference. CHOICES: y_ref = y_w (the chosen response, as TRL's CPO ``hinge`` +
    ``cpo_alpha`` does, but summed NLL here); the paper's lambda was not recovered and RSO (App. A.6) found no
    gain from it, so the default is 0. SLiC-HF has no temperature: ``beta`` is accepted and unused.
    """
    check_kind(lp, 2, "slic_hf")
    check_range("slic_hf", "delta", delta, 0.0, math.inf)
    check_range("slic_hf", "lambda_reg", lambda_reg, 0.0, math.inf)
    loss = torch.relu(delta - (lp.policy[:, 0] - lp.policy[:, 1]))
    return loss if lambda_reg == 0 else loss - lambda_reg * lp.policy[:, 0]


@PREFERENCE_LOSSES.register("rso_hinge")
@preference_loss(kinds=("pairs",), reference=False)
def rso_hinge(lp: PreferenceLogps, *, beta: Beta = 0.05) -> Tensor:
    """RSO "hinge" (Liu et al. 2023, arXiv 2309.06657, Eq. 9): max(0, 1 - beta (log pi_w - log pi_l)); TRL CPO hinge.

    Reference-free SLiC hinge with margin 1/beta (beta is RSO's gamma, default 0.05); TRL's CPO ``hinge``
    with ``cpo_alpha=0``.
    """
    check_kind(lp, 2, "rso_hinge")
    return torch.relu(1 - beta * (lp.policy[:, 0] - lp.policy[:, 1]))


@PREFERENCE_LOSSES.register("cpl")
@preference_loss(kinds=("pairs",), reference=False)
def cpl(lp: PreferenceLogps, *, beta: Beta = 0.1, contrastive_bias: Bias = 0.5) -> Tensor:
    """CPL (Hejna et al. 2024, arXiv 2310.13639): -log sigma(alpha S_w - lambda alpha S_l), alpha = beta, S = log pi.

    S is the undiscounted sum of log-probs, as the official code (the paper writes gamma^t); lambda =
    ``contrastive_bias`` in (0, 1] (config default 0.5; 1 is reference-free DPO). alpha default 0.1. Not in TRL.
    """
    check_kind(lp, 2, "cpl")
    check_range("cpl", "contrastive_bias", contrastive_bias, 0.0, 1.0, low_open=True)
    return -F.logsigmoid(beta * lp.policy[:, 0] - contrastive_bias * beta * lp.policy[:, 1])


@PREFERENCE_LOSSES.register("cpo")
@preference_loss(kinds=("pairs",), reference=False, lengths=True)
def cpo(lp: PreferenceLogps, *, beta: Beta = 0.1, cpo_alpha: NonNegative = 1.0, eps: SmoothRate = 0.0) -> Tensor:
    """CPO (Xu et al. 2024, arXiv 2401.08417): -log sigma(beta (log pi_w - log pi_l)) + alpha NLL; TRL CPO ``sigmoid``.

    Summed log-probs, no reference; NLL = token-mean NLL over all chosen tokens of the batch (TRL's
    cross-entropy, batch-coupled); eps = TRL's ``label_smoothing``. Defaults TRL's: cpo_alpha 1, beta 0.1.
    """
    check_kind(lp, 2, "cpo")
    check_range("cpo", "cpo_alpha", cpo_alpha, 0.0, math.inf)
    check_range("cpo", "eps", eps, 0.0, 0.5)
    loss = _smoothed_logistic(beta * (lp.policy[:, 0] - lp.policy[:, 1]), eps)
    return loss if cpo_alpha == 0 else loss + cpo_alpha * chosen_nll_token_mean(lp)


@PREFERENCE_LOSSES.register("simpo")
@preference_loss(kinds=("pairs",), reference=False, lengths=True)
def simpo(lp: PreferenceLogps, *, beta: Beta = 2.5, gamma: NonNegative = 1.375, eps: SmoothRate = 0.0) -> Tensor:
    """SimPO (Meng et al. 2024, arXiv 2405.14734): -log sigma(beta (a_w - a_l) - gamma), a = token-averaged log pi.

    No reference; eps smooths labels as TRL's CPO ``simpo`` (``cpo_alpha=0``, ``simpo_gamma`` = gamma).
    Defaults: beta 2.5, gamma 1.375 (the paper setting TRL's docs quote; TRL's own default gamma is 0.5).
    """
    check_kind(lp, 2, "simpo")
    check_range("simpo", "gamma", gamma, 0.0, math.inf)
    check_range("simpo", "eps", eps, 0.0, 0.5)
    a_w, a_l = _averaged(lp)
    return _smoothed_logistic(beta * (a_w - a_l) - gamma, eps)


@PREFERENCE_LOSSES.register("alphapo")
@preference_loss(kinds=("pairs",), reference=False, lengths=True)
def alphapo(lp: PreferenceLogps, *, beta: Beta = 2.5, gamma: NonNegative = 1.375, alpha: float = 0.25,
            eps: SmoothRate = 0.0) -> Tensor:
    """AlphaPO (Gupta et al. 2025, arXiv 2501.03884): SimPO on r = (1 - p^-alpha)/alpha, p = e^a; TRL CPO alphapo.

    l = -log sigma(beta (r_w - r_l) - gamma) (smoothed by eps), a = token-averaged log pi; alpha -> 0 is
    SimPO, and alpha = 0 is refused (use ``simpo``). CHOICE: default alpha 0.25 (not checked against the
    paper's tables); beta and gamma as ``simpo``.
    """
    check_kind(lp, 2, "alphapo")
    if alpha == 0:
        raise ValueError("alphapo: alpha must be nonzero (alpha = 0 is SimPO: use loss 'simpo')")
    check_range("alphapo", "gamma", gamma, 0.0, math.inf)
    check_range("alphapo", "eps", eps, 0.0, 0.5)
    a_w, a_l = _averaged(lp)
    r_w = -torch.expm1(-alpha * a_w) / alpha
    r_l = -torch.expm1(-alpha * a_l) / alpha
    return _smoothed_logistic(beta * (r_w - r_l) - gamma, eps)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - e^x) for x < 0, switching formulas at -log 2 for accuracy."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


@PREFERENCE_LOSSES.register("orpo")
@preference_loss(kinds=("pairs",), reference=False, lengths=True)
def orpo(lp: PreferenceLogps, *, beta: Beta = 0.1) -> Tensor:
    """ORPO (Hong et al. 2024, arXiv 2403.07691): NLL - lambda log sigma(log-odds(a_w) - log-odds(a_l)); TRL ORPO.

    lambda = beta (paper 0.1); a = token-averaged log pi; log-odds(a) = a - log(1 - e^a) (a clamped to at
    most -eps of the dtype so that a certain response stays finite). NLL = token-mean NLL over all chosen
    tokens of the batch (batch-coupled). TRL's ORPO NLL also counts prompt tokens; ours only completions.
    """
    check_kind(lp, 2, "orpo")
    a_w, a_l = _averaged(lp)
    top = -torch.finfo(lp.policy.dtype).eps
    a_w, a_l = a_w.clamp(max=top), a_l.clamp(max=top)
    log_odds = (a_w - a_l) - (_log1mexp(a_w) - _log1mexp(a_l))
    return chosen_nll_token_mean(lp) - beta * F.logsigmoid(log_odds)


__all__ = [
    "alphapo", "aot", "aot_unpaired", "apo_down", "apo_zero", "bco_pair", "cdpo", "copg", "cpl", "cpo", "discopop",
    "dno", "dpo", "dr_dpo", "exo_pair", "hinge_norm", "hypo", "ipo", "nca_pair", "orpo", "rdpo", "rpo", "rso_hinge",
    "sigmoid_norm", "simpo", "slic_hf", "sppo_hard",
]
