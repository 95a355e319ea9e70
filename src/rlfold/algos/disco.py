"""DisCO and DRPO, discriminative objectives over whole groups (Li et al. 2025, arXiv 2505.12366 and 2510.04474).

"DisCO: Reinforcing Large Reasoning Models with Discriminative Constrained Optimization" replaces
GRPO's clipped surrogate with a discriminative objective on binary rewards: per prompt, raise the
scores of the correct responses (R = 1) and lower those of the incorrect ones (R = 0), with a trust
region from a constrained KL (a squared-hinge penalty) instead of clipping (policy.md §5).
"DRPO: Efficient Reasoning via Decoupled Reward Policy Optimization" (arXiv 2510.04474, the id given
by the official repository Optimization-AI/DRPO; the seeds list the title only) is DisCO-logL whose
positives are weighted by their length within the positives only (policy.md §17).

The math (pure functions, any rows, no trainer):

* score s_i of a response over its valid tokens: ``logL`` s_i = (1/|o_i|) sum_t log pi(o_it);
  ``Lratio`` s_i = (1/|o_i|) sum_t r_it, r = exp(clamp(logp - old_logp, -20, 20)).
* per group q with >= 1 positive and >= 1 negative (other groups give exactly 0):
  J_q = sum_{i+} w_i s_i - N_q, positive weights w_i (uniform 1/|+| for DisCO), and
  N_q = mean_{j-} s_j (``form: mean``, DisCO-b) or tau log mean_{j-} exp(s_j / tau) (``form: lse``).
* J = sum_q J_q / (number of ALL questions, those without signal included).
* D^ = token mean over the batch of k3 = -log r + r - 1 (KL(pi_old || pi_theta), the official loss
  function's default ``low_var_kl``) or of k1 = -log r (``kl: k1``, what the official training scripts
  select with ``ppo_kl_type=kl``).
* loss = -J + sg(beta [D^ - delta]_+) D^. Its gradient is beta [D^ - delta]_+ grad D^ =
  grad (beta/2) [D^ - delta]_+^2: ``beta`` is the official code's coefficient, which is twice the
  coefficient of the squared hinge beta' [D - delta]_+^2 the paper writes (beta' = beta / 2).

The LSE term is computed exactly (``torch.logsumexp``), so its value is tau log mean exp(s/tau) and
its gradient is the softmax over the negatives, sum_j softmax(s/tau)_j grad s_j. The official code
writes a surrogate S / sg(S) (S = sum_j exp(s_j/tau - max)) whose value is 1 instead (the logged
loss is then mean_+ s - tau) and whose gradient is the same; the tests check that equality.

In training (registered parts ``disco`` and ``drpo``, ``POLICY_LOSSES``): a call sees whole groups
(the trainer refuses micro/mini-batch settings that would split one), the normaliser is the number
of questions of the optimiser mini-batch and the KL token mean uses the mini-batch's loss tokens, so
the objective part is exactly micro-batch invariant. The hinge coefficient sg(beta [D^ - delta]_+) is
that of the call's own D^ (the official code computes it per micro-batch, all-gathered across ranks);
with ``train.micro_batch_size: 0`` (one call per mini-batch) it is the mini-batch's, as in the paper.
The call's loss is written uniformly on its valid tokens (value loss * m / sum m), so the trainer's
``loss_agg: token-sum`` adds exactly the loss (the trainer refuses another aggregation).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.policy_losses import POLICY_LOSSES, _check_inputs, _log_ratio, _ppo_kl
from rlfold.core.errors import ConfigError
from rlfold.core.groups import group_index
from rlfold.core.masked import masked_mean
from rlfold.core.registry import needs

# The aggregation under which a group objective's per-token loss adds up to its value (the trainer checks it).
GROUP_OBJECTIVE_AGGREGATION = "token-sum"

__all__ = [
    "DISCO_INPUTS", "disco", "disco_loss", "drpo", "drpo_log_weights", "group_objectives", "kl_estimate",
    "kl_hinge_penalty", "kl_hinge_surrogate", "negative_term", "score_gradients", "sequence_scores",
]

Score = Literal["logL", "Lratio"]
Form = Literal["lse", "mean"]
KLForm = Literal["k3", "k1"]
Tau = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Lambda = Annotated[float, Field(gt=0)]  # +inf allowed: DRPO without length weights = DisCO-logL

# What the trainer supplies to a group objective besides the per-token tensors (trainers/update.py).
DISCO_INPUTS = ("rewards", "group_ids", "batch_groups", "batch_tokens")

DEFAULT_TAU = 10.0     # logL (the official README and scripts use tau = 1 for Lratio)
DEFAULT_DELTA = 1e-4
DEFAULT_BETA = 1e3
DEFAULT_LAMBDA = 0.1


# ----- pure functions ---------------------------------------------------------------------------
def sequence_scores(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, *, score: Score = "logL") -> Tensor:
    """[N] score of each row over its valid tokens: mean log-prob (``logL``) or mean ratio (``Lratio``).

    The ratio is exp(clamp(logp - old_logp, -20, 20)); a row without a valid token scores 0 (and is
    left out of every group by ``group_objectives``)."""
    _check_inputs(logprobs, old_logprobs, logprobs, mask)
    if score == "logL":
        values = logprobs
    elif score == "Lratio":
        values = torch.exp(_log_ratio(logprobs, old_logprobs))
    else:
        raise ValueError(f"score must be 'logL' or 'Lratio', got {score!r}")
    return masked_mean(values, mask, dim=-1)


def negative_term(scores: Tensor, *, form: Form = "lse", tau: float = DEFAULT_TAU) -> Tensor:
    """N = mean(s) (``mean``, DisCO-b) or tau log mean exp(s / tau) (``lse``) of one group's negative scores.

    tau -> inf gives the mean, tau -> 0 the max (policy.md §5(e): s = [-1.0, -0.6], tau = 10 give -0.7980)."""
    if scores.dim() != 1 or scores.numel() == 0:
        raise ValueError(f"scores must be a non-empty 1-d tensor, got shape {tuple(scores.shape)}")
    if form == "mean":
        return scores.mean()
    if form != "lse":
        raise ValueError(f"form must be 'lse' or 'mean', got {form!r}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    return tau * (torch.logsumexp(scores / tau, dim=0) - math.log(scores.numel()))


def _binary(rewards: Tensor) -> tuple[Tensor, Tensor]:
    positive, negative = rewards == 1, rewards == 0
    if not bool((positive | negative).all()):
        bad = sorted({float(v) for v in rewards[~(positive | negative)].tolist()})[:5]
        raise ValueError(f"DisCO needs binary rewards (1 correct, 0 incorrect), got values {bad}")
    return positive, negative


def group_objectives(scores: Tensor, rewards: Tensor, group_ids: Tensor, *, form: Form = "lse",
                     tau: float = DEFAULT_TAU, positive_log_weights: Tensor | None = None,
                     live: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """([G] J_q of each group in sorted id order, [G] bool: the group has >= 1 positive and >= 1 negative).

    J_q = sum_{i+} w_i s_i - N_q (``negative_term``) for a group with both kinds, exactly 0 otherwise;
    w = softmax over the group's positives of ``positive_log_weights`` [N] (None: uniform 1/|+|), DRPO's
    length weighting, which never touches the negatives (no gradient flows through the weights).
    Rewards must be 1 or 0 on the rows that count; ``live`` [N] bool (default all) leaves rows out of
    their group (a row without a loss token).
    """
    n = scores.shape[0]
    for name, t in (("rewards", rewards), ("group_ids", group_ids)):
        if tuple(t.shape) != (n,):
            raise ValueError(f"{name} must be [N] like scores ({n},), got {tuple(t.shape)}")
    if positive_log_weights is not None and tuple(positive_log_weights.shape) != (n,):
        raise ValueError(f"positive_log_weights must be [N] ({n},), got {tuple(positive_log_weights.shape)}")
    if form not in ("lse", "mean"):
        raise ValueError(f"form must be 'lse' or 'mean', got {form!r}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    live = torch.ones(n, dtype=torch.bool, device=scores.device) if live is None else live.bool()
    inv, g = group_index(group_ids.to(scores.device))
    if g == 0:
        return scores.new_zeros(0), torch.zeros(0, dtype=torch.bool, device=scores.device)
    r = rewards.to(scores.device)
    positive, negative = _binary(r[live]) if bool(live.any()) else (r[live] == 1, r[live] == 0)
    pos = torch.zeros(n, dtype=torch.bool, device=scores.device)
    neg = torch.zeros_like(pos)
    pos[live], neg[live] = positive, negative
    zeros = scores.new_zeros(g)
    n_pos = zeros.index_add(0, inv, pos.to(scores.dtype))
    n_neg = zeros.index_add(0, inv, neg.to(scores.dtype))
    valid = (n_pos > 0) & (n_neg > 0)

    w = _positive_weights(positive_log_weights, pos, inv, g, scores)
    w_sum = zeros.index_add(0, inv, w)
    pos_mean = zeros.index_add(0, inv, w * scores) / torch.where(w_sum > 0, w_sum, torch.ones_like(w_sum))

    if form == "mean":
        s_neg = torch.where(neg, scores, torch.zeros_like(scores))
        neg_term = zeros.index_add(0, inv, s_neg) / n_neg.clamp(min=1)
    else:
        z = scores / tau
        top = torch.full((g,), -math.inf, dtype=scores.dtype, device=scores.device)
        top = top.scatter_reduce(0, inv[neg], z.detach()[neg], reduce="amax", include_self=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        e = torch.where(neg, torch.exp(torch.where(neg, z - top[inv], torch.zeros_like(z))), torch.zeros_like(z))
        total = zeros.index_add(0, inv, e)
        safe = torch.where(n_neg > 0, total, torch.ones_like(total))
        neg_term = tau * (torch.log(safe) + top - torch.log(n_neg.clamp(min=1)))
    j = torch.where(valid, pos_mean - neg_term, torch.zeros_like(pos_mean))
    return j, valid


def _positive_weights(log_w: Tensor | None, pos: Tensor, inv: Tensor, g: int, like: Tensor) -> Tensor:
    """[N] exp(log w - max over the row's group's positives) on positives, 0 elsewhere (detached)."""
    if log_w is None:
        return pos.to(like.dtype)
    x = log_w.detach().to(like.dtype)
    top = torch.full((g,), -math.inf, dtype=like.dtype, device=like.device)
    top = top.scatter_reduce(0, inv[pos], x[pos], reduce="amax", include_self=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return torch.where(pos, torch.exp(torch.where(pos, x - top[inv], torch.zeros_like(x))), torch.zeros_like(x))


def score_gradients(scores: Tensor, rewards: Tensor, group_ids: Tensor, *, form: Form = "lse",
                    tau: float = DEFAULT_TAU, positive_log_weights: Tensor | None = None) -> Tensor:
    """[N] dJ_q / ds_i in closed form (no autograd): softmax(log w) over the positives on a positive,
    -1/|-| (``mean``) or -softmax(s_neg / tau)_j (``lse``) on a negative, 0 in a group without both kinds.

    sum_i sg(dJ/ds_i) s_i is a surrogate with the gradient of sum_q J_q (the chain rule through s)."""
    with torch.no_grad():
        positive, negative = _binary(rewards)
        inv, g = group_index(group_ids)
        out = torch.zeros_like(scores)
        for q in range(g):
            rows = inv == q
            p, m = rows & positive, rows & negative
            if not (bool(p.any()) and bool(m.any())):
                continue
            lw = (torch.zeros_like(scores) if positive_log_weights is None
                  else positive_log_weights.to(scores.dtype))
            out[p] = torch.softmax(lw[p], dim=0)
            out[m] = (-torch.softmax(scores[m] / tau, dim=0) if form == "lse"
                      else -torch.full_like(scores[m], 1.0 / int(m.sum())))
        return out


def kl_estimate(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, *, kl: KLForm = "k3") -> Tensor:
    """[N, R] per-token estimator of KL(pi_old || pi_theta), 0 on masked tokens: k3 = -log r + r - 1
    (``low_var_kl``), or k1 = -log r (the official scripts' ``ppo_kl_type=kl``); log r clamped to +-20."""
    log_ratio = _log_ratio(logprobs, old_logprobs)
    if kl == "k3":
        values = -log_ratio + torch.exp(log_ratio) - 1.0
    elif kl == "k1":
        values = -log_ratio
    else:
        raise ValueError(f"kl must be 'k3' or 'k1', got {kl!r}")
    return torch.where(mask.bool(), values, torch.zeros_like(values))


def kl_hinge_penalty(d_hat: Tensor, *, delta: float = DEFAULT_DELTA, beta: float = DEFAULT_BETA) -> Tensor:
    """(beta/2) [D^ - delta]_+^2, the squared hinge whose gradient the official loss has (paper: beta/2 -> beta')."""
    return 0.5 * beta * torch.clamp(d_hat - delta, min=0.0) ** 2


def kl_hinge_surrogate(d_hat: Tensor, *, delta: float = DEFAULT_DELTA, beta: float = DEFAULT_BETA) -> Tensor:
    """sg(beta [D^ - delta]_+) D^, the official code's penalty term: its gradient is beta [D^ - delta]_+ grad D^,
    that of ``kl_hinge_penalty``; zero gradient when D^ <= delta."""
    return (beta * torch.clamp(d_hat - delta, min=0.0)).detach() * d_hat


def drpo_log_weights(lengths: Tensor, max_length: float, *, lam: float = DEFAULT_LAMBDA) -> Tensor:
    """[N] log of DRPO's unnormalised weights, (1 - L_i / L_max) / lambda; ``group_objectives`` normalises
    exp of them over each group's positives (a softmax, so no overflow for small lambda). lambda = inf
    gives 0 everywhere: uniform weights, i.e. DisCO-logL."""
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam!r}")
    if not max_length > 0:
        raise ValueError(f"max_length must be > 0, got {max_length!r}")
    return (1.0 - lengths.to(torch.float64) / float(max_length)) / lam


def disco_loss(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, rewards: Tensor, group_ids: Tensor, *,
               n_questions: float | Tensor, n_tokens: float | Tensor | None = None, score: Score = "logL",
               form: Form = "lse", tau: float = DEFAULT_TAU, delta: float = DEFAULT_DELTA,
               beta: float = DEFAULT_BETA, kl: KLForm = "k3", positive_log_weights: Tensor | None = None,
               ) -> tuple[Tensor, dict[str, Tensor]]:
    """The DisCO loss of some rows: -sum_q J_q / n_questions + sg(beta [D^ - delta]_+) sum k / n_tokens.

    D^ = sum k / (valid tokens of these rows) decides the hinge; ``n_tokens`` (default: those valid
    tokens) is the token count of the whole batch these rows are part of, so the sum over parts of a
    batch adds up. Returns the 0-d loss (with gradient) and detached parts: ``objective`` (sum_q J_q /
    n_questions), ``kl`` (D^), ``penalty`` (the hinge term's value)."""
    s = sequence_scores(logprobs, old_logprobs, mask, score=score)
    live = mask.bool().any(dim=-1)
    j, valid = group_objectives(s, rewards, group_ids, form=form, tau=tau,
                                positive_log_weights=positive_log_weights, live=live)
    objective = j.sum() / n_questions
    k = kl_estimate(logprobs, old_logprobs, mask, kl=kl)
    k_sum = k.sum()
    own = mask.to(k.dtype).sum().clamp(min=1.0)
    d_hat = k_sum / own
    coef = (beta * torch.clamp(d_hat - delta, min=0.0)).detach()
    penalty = coef * k_sum / (own if n_tokens is None else n_tokens)
    loss = -objective + penalty
    parts = {"objective": objective.detach(), "kl": d_hat.detach(), "penalty": penalty.detach(),
             "valid_groups": valid.sum().detach(), "groups": torch.tensor(float(valid.numel()))}
    return loss, parts


# ----- registered parts -------------------------------------------------------------------------
def _spread(loss: Tensor, mask: Tensor, like: Tensor) -> Tensor:
    """The 0-d ``loss`` written uniformly on the valid tokens: its masked token sum is ``loss`` (token-sum)."""
    m = mask.to(like.dtype)
    return loss * m / m.sum().clamp(min=1.0)


def _group_call(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, rewards: Tensor,
                group_ids: Tensor, batch_groups: Tensor, batch_tokens: Tensor, *, who: str,
                **kwargs) -> tuple[Tensor, dict[str, Tensor]]:
    _check_inputs(logprobs, old_logprobs, advantages, mask)
    try:
        _binary(rewards[mask.bool().any(dim=-1).to(rewards.device)])
    except ValueError as exc:
        raise ConfigError(f"policy loss {who!r}: {exc}; score with one 0/1 reward (rewards: [{{name: exact_match, "
                          "weight: 1.0}]) and no KL in the reward (algo.kl_in: loss)") from None
    dev = logprobs.device
    loss, parts = disco_loss(logprobs, old_logprobs, mask, rewards.to(dev), group_ids.to(dev),
                             n_questions=batch_groups.to(dev).clamp(min=1.0),
                             n_tokens=batch_tokens.to(dev).clamp(min=1.0), **kwargs)
    groups = parts["groups"].clamp(min=1.0)
    metrics = {
        "disco_objective": parts["objective"] * batch_groups.to(dev).clamp(min=1.0).detach() / groups,
        "disco_valid_group_frac": parts["valid_groups"] / groups,
        "disco_kl": parts["kl"],
        "disco_kl_above_delta": (parts["kl"] > kwargs.get("delta", DEFAULT_DELTA)).to(loss.dtype),
        "ppo_kl": _ppo_kl(_log_ratio(logprobs, old_logprobs), mask),
    }
    return _spread(loss, mask, logprobs), metrics


@POLICY_LOSSES.register("disco")
@needs(*DISCO_INPUTS)
def disco(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    rewards: Tensor,
    group_ids: Tensor,
    batch_groups: Tensor,
    batch_tokens: Tensor,
    score: Score = "logL",
    form: Form = "lse",
    tau: Tau = DEFAULT_TAU,
    delta: NonNegative = DEFAULT_DELTA,
    beta: NonNegative = DEFAULT_BETA,
    kl: KLForm = "k3",
) -> tuple[Tensor, dict[str, Tensor]]:
    """DisCO discriminative objective with a constrained-KL hinge (Li et al. 2025, arXiv 2505.12366).

    Over the call's rows (whole groups; ``rewards`` [n] in {0, 1}, ``group_ids`` [n]): scores s_i
    (``score``: logL mean token log-prob, Lratio mean token ratio), J_q = mean_+ s - N_q with N_q =
    tau log mean_- exp(s/tau) (``form: lse``, DisCO) or mean_- s (``form: mean``, DisCO-b), 0 for a
    group without both kinds; loss = -sum_q J_q / ``batch_groups`` (questions of the optimiser
    mini-batch, those without signal included) + sg(beta [D^ - delta]_+) sum k / ``batch_tokens``, k the
    per-token ``kl`` estimator (k3 default, as the official loss function; its scripts pass k1) and D^
    the call's token mean of k. ``beta`` is the official code's (gradient beta [D^ - delta]_+ grad D^ =
    grad (beta/2)[D^ - delta]_+^2; the paper's squared-hinge coefficient is beta/2). ``advantages`` are
    ignored. Defaults: the paper's logL setting tau 10, delta 1e-4, beta 1e3 (Lratio: tau 1). The call's
    loss is spread on its valid tokens (aggregate with ``loss_agg: token-sum``). Metrics (per call):
    ``disco_objective`` (sum_q J_q / the call's questions), ``disco_valid_group_frac``, ``disco_kl``
    (D^), ``disco_kl_above_delta`` (1 when the hinge is active, the official ``pg_clipfrac``), ``ppo_kl``.
    """
    return _group_call(logprobs, old_logprobs, advantages, mask, rewards, group_ids, batch_groups, batch_tokens,
                       who="disco", score=score, form=form, tau=tau, delta=delta, beta=beta, kl=kl)


@POLICY_LOSSES.register("drpo")
@needs(*DISCO_INPUTS, "max_response_length")
def drpo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    rewards: Tensor,
    group_ids: Tensor,
    batch_groups: Tensor,
    batch_tokens: Tensor,
    max_response_length: int,
    tau: Tau = DEFAULT_TAU,
    delta: NonNegative = DEFAULT_DELTA,
    beta: NonNegative = DEFAULT_BETA,
    lam: Lambda = DEFAULT_LAMBDA,
    kl: KLForm = "k3",
) -> tuple[Tensor, dict[str, Tensor]]:
    """DRPO, DisCO-logL with length-weighted positives (Li et al. 2025, DRPO, arXiv 2510.04474).

    As ``disco`` with ``score: logL``, ``form: lse``, except that the positives' mean is weighted:
    J_q = sum_{i+} w_i s_i - tau log mean_- exp(s/tau), w_i = exp((1 - L_i/L_max)/lam) / sum_{j+} w_j,
    normalised over the group's positives only: the negatives' lengths never enter. L_i is the row's
    valid (loss) tokens, L_max the generation limit ``max_response_length`` (rollout.max_new_tokens;
    the official code divides by the padded response width, which verl pads to that limit).
    lam = inf gives DisCO-logL. Defaults as the official script: tau 10, delta 1e-4, beta 1e3, lam 0.1.
    Metrics as ``disco``.
    """
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam!r}")
    lengths = mask.to(torch.float64).sum(dim=-1)
    log_w = drpo_log_weights(lengths, float(max_response_length), lam=lam).to(logprobs.dtype)
    return _group_call(logprobs, old_logprobs, advantages, mask, rewards, group_ids, batch_groups, batch_tokens,
                       who="drpo", score="logL", form="lse", tau=tau, delta=delta, beta=beta, kl=kl,
                       positive_log_weights=log_w)
