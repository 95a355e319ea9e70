"""Listwise preference losses (learning to rank over K responses per prompt; pairs are lists of two).

Each loss scores response i by s_i = beta * rho_i (rho = log pi_theta - log pi_ref, summed over
tokens) and ranks with the labels psi = ``lp.scores`` (higher is better). ``lp.valid`` marks the
responses that exist (lists of uneven size): an invalid entry takes part in nothing. Pairwise sums run
over ordered pairs with psi_i > psi_j strictly, so equal scores never form a pair. Each loss returns
[B], the loss of each list (a sum over its pairs or positions, not a mean).

Registered (kinds ``("lists", "pairs")``; none is in TRL):

- ``lipo_lambda``: LiPO-lambda, the lambda-weighted pairwise logistic loss (Liu et al. 2024, arXiv 2402.01878);
- ``listmle``: the Plackett-Luce likelihood of the label order (DPO_PL);
- ``list_softmax_ce``: ListNet-style softmax cross-entropy;
- ``list_pairwise_logistic``: DPO over every ordered pair (Delta = 1; K = 2 is ``dpo``);
- ``list_pairwise_hinge``: SLiC hinge over every ordered pair (K = 2 is ``hinge_norm``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from rlfold.algos.preference.base import PREFERENCE_LOSSES, Beta, PreferenceLogps, check_kind, preference_loss


def _scores(lp: PreferenceLogps, beta: float, name: str) -> tuple[Tensor, Tensor, Tensor]:
    """(s [B, K] = beta rho, 0 where invalid; psi [B, K]; valid [B, K] bool)."""
    check_kind(lp, None, name)
    valid = lp.mask()
    if lp.policy.shape[1] < 2:
        raise ValueError(f"{name} needs K >= 2 responses per list, got K={lp.policy.shape[1]}")
    s = torch.where(valid, beta * lp.ratios, torch.zeros_like(lp.policy))
    psi = torch.where(valid, lp.scores, torch.zeros_like(lp.scores))
    return s, psi, valid


def _ordered_pairs(psi: Tensor, valid: Tensor) -> Tensor:
    """[B, K, K] bool: (i, j) with both valid and psi_i > psi_j."""
    both = valid.unsqueeze(-1) & valid.unsqueeze(-2)
    return both & (psi.unsqueeze(-1) > psi.unsqueeze(-2))


def _gaps(s: Tensor) -> Tensor:
    """[B, K, K] s_i - s_j."""
    return s.unsqueeze(-1) - s.unsqueeze(-2)


def current_ranks(s: Tensor, valid: Tensor) -> Tensor:
    """[B, K] 1-based rank of each response when the valid s are sorted descending (ties: index order)."""
    keyed = torch.where(valid, s.detach(), torch.full_like(s, -math.inf))
    order = torch.sort(keyed, dim=-1, descending=True, stable=True).indices
    pos = torch.arange(1, s.shape[-1] + 1, device=s.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, pos)


def lambda_weights(psi: Tensor, ranks: Tensor, discount: Literal["log2", "ln"] = "log2") -> Tensor:
    """[B, K, K] Delta_ij = |G_i - G_j| |1/D(tau_i) - 1/D(tau_j)|, G = 2^psi, D(tau) = log(1 + tau)."""
    tau = ranks.to(psi.dtype)
    if discount == "log2":
        inv_d = 1 / torch.log2(1 + tau)
    elif discount == "ln":
        inv_d = 1 / torch.log1p(tau)
    else:
        raise ValueError(f"lipo_lambda: discount must be 'log2' or 'ln', got {discount!r}")
    gain = torch.pow(2.0, psi)
    return (gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs() * (inv_d.unsqueeze(-1) - inv_d.unsqueeze(-2)).abs()


@PREFERENCE_LOSSES.register("lipo_lambda")
@preference_loss(kinds=("lists", "pairs"))
def lipo_lambda(lp: PreferenceLogps, *, beta: Beta = 0.1, discount: Literal["log2", "ln"] = "log2") -> Tensor:
    """LiPO-lambda (Liu et al. 2024, arXiv 2402.01878): sum_{psi_i > psi_j} Delta_ij log(1 + exp(-(s_i - s_j))).

    Delta_ij = |2^psi_i - 2^psi_j| |1/D(tau_i) - 1/D(tau_j)| with tau the rank under the current s (sorted
    descending), both constants (no gradient). CHOICE: D(tau) = log2(1 + tau) by default (the NDCG
    discount); ``discount="ln"`` uses the natural log, which scales every Delta by 1/ln 2. Not in TRL.
    """
    s, psi, valid = _scores(lp, beta, "lipo_lambda")
    with torch.no_grad():
        delta = lambda_weights(psi, current_ranks(s, valid), discount)
    pairs = _ordered_pairs(psi, valid)
    return torch.where(pairs, delta * F.softplus(-_gaps(s)), torch.zeros_like(delta)).sum((-1, -2))


@PREFERENCE_LOSSES.register("listmle")
@preference_loss(kinds=("lists", "pairs"))
def listmle(lp: PreferenceLogps, *, beta: Beta = 0.1) -> Tensor:
    """ListMLE / DPO_PL (Plackett-Luce, as in LiPO arXiv 2402.01878): -sum_k log(e^{s_(k)} / sum_{m >= k} e^{s_(m)}).

    (k) runs over the responses sorted by psi descending. CHOICE for ties: response i competes with itself
    and the responses scored strictly below it, so tied responses are never contrasted (an all-tied list
    gives 0); without ties this is exactly Plackett-Luce. K = 2 is ``dpo``. Not in TRL.
    """
    s, psi, valid = _scores(lp, beta, "listmle")
    eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
    below = _ordered_pairs(psi, valid) | eye                                  # [B, i, m]: m competes with i
    logits = torch.where(below, s.unsqueeze(-2).expand_as(below), torch.full_like(below, -math.inf, dtype=s.dtype))
    terms = torch.logsumexp(logits, dim=-1) - s                              # -log P(i first among its set)
    return torch.where(valid, terms, torch.zeros_like(terms)).sum(-1)


@PREFERENCE_LOSSES.register("list_softmax_ce")
@preference_loss(kinds=("lists", "pairs"))
def list_softmax_ce(lp: PreferenceLogps, *, beta: Beta = 0.1,
                    target: Literal["linear", "softmax"] = "linear") -> Tensor:
    """ListNet-style softmax cross-entropy (Cao et al. 2007; LiPO arXiv 2402.01878): -sum_i t_i log softmax(s)_i.

    ``linear`` (default): t = psi / sum psi over the valid responses, which needs psi >= 0 (a list whose
    scores are all 0 gives 0); ``softmax``: t = softmax(psi), ListNet's top-one target, any real psi. Not in TRL.
    """
    s, psi, valid = _scores(lp, beta, "list_softmax_ce")
    neg_inf = torch.full_like(s, -math.inf)
    log_p = torch.log_softmax(torch.where(valid, s, neg_inf), dim=-1)
    log_p = torch.where(valid, log_p, torch.zeros_like(log_p))
    if target == "linear":
        if bool((psi < 0).any()):
            raise ValueError("list_softmax_ce: target='linear' needs scores >= 0; use target='softmax' for any scores")
        total = psi.sum(-1, keepdim=True)
        t = torch.where(total > 0, psi / total.clamp(min=torch.finfo(psi.dtype).tiny), torch.zeros_like(psi))
    elif target == "softmax":
        t = torch.softmax(torch.where(valid, psi, neg_inf), dim=-1)
    else:
        raise ValueError(f"list_softmax_ce: target must be 'linear' or 'softmax', got {target!r}")
    return -(t * log_p).sum(-1)


@PREFERENCE_LOSSES.register("list_pairwise_logistic")
@preference_loss(kinds=("lists", "pairs"))
def list_pairwise_logistic(lp: PreferenceLogps, *, beta: Beta = 0.1) -> Tensor:
    """Pairwise logistic over a list (DPO_BT, LiPO arXiv 2402.01878): sum_{psi_i > psi_j} log(1 + exp(-(s_i - s_j)))."""
    s, psi, valid = _scores(lp, beta, "list_pairwise_logistic")
    pairs = _ordered_pairs(psi, valid)
    loss = F.softplus(-_gaps(s))
    return torch.where(pairs, loss, torch.zeros_like(loss)).sum((-1, -2))


@PREFERENCE_LOSSES.register("list_pairwise_hinge")
@preference_loss(kinds=("lists", "pairs"))
def list_pairwise_hinge(lp: PreferenceLogps, *, beta: Beta = 0.1) -> Tensor:
    """Pairwise hinge over a list (SLiC, LiPO arXiv 2402.01878): sum_{psi_i > psi_j} max(0, 1 - (s_i - s_j))."""
    s, psi, valid = _scores(lp, beta, "list_pairwise_hinge")
    pairs = _ordered_pairs(psi, valid)
    loss = torch.relu(1 - _gaps(s))
    return torch.where(pairs, loss, torch.zeros_like(loss)).sum((-1, -2))


__all__ = ["current_ranks", "lambda_weights", "lipo_lambda", "list_pairwise_hinge", "list_pairwise_logistic",
           "list_softmax_ce", "listmle"]
