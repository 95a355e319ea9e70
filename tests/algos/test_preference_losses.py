"""Preference losses against the worked numbers and invariants of shared/methods/preference.md.

Toy pair unless noted: log pi_theta(y_w) = -10, log pi_theta(y_l) = -12, reference -11 / -11 (rho_w = 1,
rho_l = -1, h = 2), beta = 0.1; float64, 1e-6.
"""

from __future__ import annotations

import inspect
import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F

from rlfold.algos.preference import PREFERENCE_LOSSES, PreferenceLogps, spec_of
from rlfold.algos.preference import pairwise, token_level as token
from rlfold.algos.preference.unpaired import TokenLogits
from rlfold.algos.preference.listwise import current_ranks, lambda_weights
from rlfold.algos.preference.rso import rso_accept, rso_acceptance_probs

D = torch.float64
TOL = 1e-6


def T(x) -> torch.Tensor:
    return torch.tensor(x, dtype=D)


def pair(pw=-10.0, pl=-12.0, rw=-11.0, rl=-11.0, lengths=(1.0, 1.0), scores=(1.0, 0.0), grad=False) -> PreferenceLogps:
    policy = T([[pw, pl]]).requires_grad_(grad)
    return PreferenceLogps(policy=policy, reference=T([[rw, rl]]), lengths=T([lengths]), scores=T([scores]))


def pairs_from_h(h: torch.Tensor) -> PreferenceLogps:
    """Pairs with margin h (rho_w = h, rho_l = 0), policy with gradient."""
    b = h.shape[0]
    policy = torch.stack([h, torch.zeros_like(h)], -1).detach().requires_grad_(True)
    return PreferenceLogps(policy=policy, reference=torch.zeros(b, 2, dtype=D), lengths=torch.ones(b, 2, dtype=D),
                           scores=T([[1.0, 0.0]] * b))


def loss(name: str, lp: PreferenceLogps, **kw) -> torch.Tensor:
    return PREFERENCE_LOSSES.get(name)(lp, **kw)


def value(name: str, lp: PreferenceLogps, **kw) -> float:
    out = loss(name, lp, **kw)
    assert out.shape == (lp.policy.shape[0],)
    return out.mean().item()


# ------------------------------------------------------------------------------------ worked numbers

SIMPO_LP = dict(pw=-1.0, pl=-2.0, rw=0.0, rl=0.0, lengths=(2.0, 2.0))  # a_w = -0.5, a_l = -1

WORKED = [
    ("dpo", {}, {}, 0.5981389),
    ("cdpo", {"eps": 0.1}, {}, 0.6181389),
    ("rdpo", {"eps": 0.1}, {}, 0.5731389),
    ("ipo", {}, {}, 9.0),
    ("hinge_norm", {}, {}, 0.8),
    ("rpo", {"eta": 0.005, "sft_form": "cumulative"}, {}, 0.6031389),
    ("bco_pair", {}, {}, 1.2887933),
    ("nca_pair", {}, {}, 1.3387933),
    ("exo_pair", {"eps": 1e-3}, {}, 2.4220146),
    ("sppo_hard", {}, {}, 32.0),
    ("apo_zero", {}, {}, 0.9500416),
    ("apo_down", {}, {}, 0.9751452),
    ("discopop", {"tau": 0.05}, {}, 0.8147631),
    ("simpo", {"beta": 2.5, "gamma": 1.375}, SIMPO_LP, 0.7575990),
    ("orpo", {"beta": 0.1}, SIMPO_LP, 0.5320300),
    ("cpl", {"contrastive_bias": 0.5}, {}, 0.9130153),
    ("copg", {}, {}, 0.64),
    ("slic_hf", {"delta": 1.0}, {}, 0.0),
    ("slic_hf", {"delta": 1.0, "lambda_reg": 0.5}, {}, 5.0),
]


@pytest.mark.parametrize(("name", "kw", "lp_kw", "expected"), WORKED, ids=[f"{w[0]}-{i}" for i, w in enumerate(WORKED)])
def test_worked_numbers(name, kw, lp_kw, expected):
    kw = {"beta": 0.1, **kw}
    assert value(name, pair(**lp_kw), **kw) == pytest.approx(expected, abs=TOL)


def test_orpo_log_odds_worked_number():
    a_w, a_l = T(-0.5), T(-1.0)
    log_odds = (a_w - a_l) - (pairwise._log1mexp(a_w) - pairwise._log1mexp(a_l))
    assert log_odds.item() == pytest.approx(0.9740770, abs=TOL)
    # total = NLL 0.5 - 0.1 log sigma(log-odds)
    assert 0.5 - 0.1 * F.logsigmoid(log_odds).item() == pytest.approx(0.5320300, abs=TOL)


def test_kto_worked_numbers_fixed_z0_and_from_kl():
    chosen = PreferenceLogps(policy=T([[-10.0]]), reference=T([[-11.0]]), lengths=T([[1.0]]), scores=T([[1.0]]))
    rejected = PreferenceLogps(policy=T([[-12.0]]), reference=T([[-11.0]]), lengths=T([[1.0]]), scores=T([[0.0]]))
    assert value("kto", chosen, beta=0.1, z0=0.2) == pytest.approx(0.4800107, abs=TOL)
    assert value("kto", rejected, beta=0.1, z0=0.2) == pytest.approx(0.4700359, abs=TOL)
    # z0 = clamp(mean(kl), 0): mismatched log-ratios [0.5, -0.1] -> 0.2; a negative mean clamps to 0
    assert value("kto", chosen, beta=0.1, kl=T([0.5, -0.1])) == pytest.approx(0.4800107, abs=TOL)
    assert value("kto", chosen, beta=0.1, kl=T([-0.5])) == pytest.approx(1 - 1 / (1 + math.exp(-0.1)), abs=TOL)


def test_kto_z0_is_detached_and_weights_apply():
    kl = T([0.3, 0.1]).requires_grad_(True)
    lp = PreferenceLogps(policy=T([[-10.0], [-12.0]]).requires_grad_(True), reference=T([[-11.0], [-11.0]]),
                         lengths=T([[1.0], [1.0]]), scores=T([[1.0], [0.0]]))
    out = loss("kto", lp, beta=0.1, kl=kl, desirable_weight=2.0, undesirable_weight=0.5)
    assert out[0].item() == pytest.approx(2 * 0.4800107, abs=TOL)
    assert out[1].item() == pytest.approx(0.5 * 0.4700359, abs=TOL)
    out.sum().backward()
    assert kl.grad is None


def test_lipo_worked_numbers_both_discounts():
    lp = PreferenceLogps(policy=T([[0.2, 0.3, -0.1]]), reference=torch.zeros(1, 3, dtype=D),
                         lengths=torch.ones(1, 3, dtype=D), scores=T([[1.0, 0.5, 0.0]]))
    ranks = current_ranks(lp.policy, lp.mask())
    assert ranks.tolist() == [[2, 1, 3]]
    delta = lambda_weights(lp.scores, ranks, "log2")[0]
    assert delta[0, 1].item() == pytest.approx(0.216196, abs=2e-6)
    assert delta[0, 2].item() == pytest.approx(0.130930, abs=TOL)
    assert delta[1, 2].item() == pytest.approx(0.207107, abs=TOL)
    assert value("lipo_lambda", lp, beta=1.0) == pytest.approx(0.339766, abs=TOL)
    assert value("lipo_lambda", lp, beta=1.0, discount="ln") == pytest.approx(0.490179, abs=TOL)
    assert value("lipo_lambda", lp, beta=1.0, discount="ln") == pytest.approx(
        value("lipo_lambda", lp, beta=1.0) / math.log(2), abs=1e-12)
    assert value("listmle", lp, beta=1.0) == pytest.approx(1.558926, abs=TOL)
    assert value("list_softmax_ce", lp, beta=1.0) == pytest.approx(1.012577, abs=TOL)


def test_dr_dpo_worked_number_and_weights():
    losses = T([0.5, 1.0, 2.0]).requires_grad_(True)
    out = pairwise._dr_aggregate(losses, 1.0)
    assert out.shape == (3,)
    assert out.mean().item() == pytest.approx(0.994482, abs=TOL)
    out.mean().backward()
    assert losses.grad.tolist() == pytest.approx([0.5465, 0.3315, 0.1220], abs=1e-4)
    # through the registered loss: pairs whose DPO losses are [0.5, 1, 2] (beta h = -log(e^l - 1))
    h = -torch.log(torch.expm1(T([0.5, 1.0, 2.0])))
    lp = pairs_from_h(h)
    assert loss("dpo", lp, beta=1.0).tolist() == pytest.approx([0.5, 1.0, 2.0], abs=1e-12)
    assert value("dr_dpo", lp, beta=1.0, beta_prime=1.0) == pytest.approx(0.994482, abs=TOL)
    # beta' -> infinity: the plain mean
    assert value("dr_dpo", lp, beta=1.0, beta_prime=1e6) == pytest.approx(3.5 / 3, abs=1e-5)


def test_dno_minimiser_is_logit_of_the_soft_target():
    # z = sigma(scale (s_w - s_l)) = 0.8; loss minimised at beta h = logit(0.8) = 1.386294
    logit = math.log(0.8 / 0.2)
    assert logit == pytest.approx(1.386294, abs=TOL)
    for h_star_offset, sign in ((0.0, 0), (0.3, 1), (-0.3, -1)):
        h = T([(logit + h_star_offset) / 0.1]).requires_grad_(True)
        lp = PreferenceLogps(policy=torch.stack([h, torch.zeros_like(h)], -1), reference=torch.zeros(1, 2, dtype=D),
                             lengths=torch.ones(1, 2, dtype=D), scores=T([[logit, 0.0]]))
        loss("dno", lp, beta=0.1, scale=1.0).sum().backward()
        g = h.grad.item()
        assert (abs(g) < 1e-12) if sign == 0 else (math.copysign(1, g) == sign)


def test_rso_acceptance_and_sampler():
    probs = rso_acceptance_probs(T([1.0, 0.5, 0.0]), beta=0.5)
    assert probs.tolist() == pytest.approx([1.0, 0.3679, 0.1353], abs=1e-4)
    rewards = T([0.3, 2.0, -1.0, 1.5, 0.0, 1.9])
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        got = rso_accept(rewards, beta=0.5, num_samples=4, generator=g)
        assert len(got) == 4 and len(set(got)) == 4
        assert got[0] == 1  # the argmax is accepted first, with probability 1
    g = torch.Generator().manual_seed(0)
    assert rso_accept(rewards, beta=math.inf, num_samples=4, generator=g) == [0, 1, 2, 3]
    g = torch.Generator().manual_seed(0)
    assert rso_accept(rewards, beta=1e12, num_samples=3, generator=g) == [0, 1, 2]
    # beta -> 0: best first, then the best of the rest (top-k)
    g = torch.Generator().manual_seed(0)
    assert rso_accept(rewards, beta=1e-6, num_samples=3, generator=g) == [1, 5, 3]
    with pytest.raises(ValueError, match="num_samples"):
        rso_accept(rewards, beta=0.5, num_samples=7, generator=g)
    with pytest.raises(ValueError, match="beta"):
        rso_accept(rewards, beta=0.0, num_samples=1, generator=g)


# ------------------------------------------------------------------------------------ DPO invariants


@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0])
@pytest.mark.parametrize(("name", "kw"), [("dpo", {}), ("cdpo", {"eps": 0.2}), ("rdpo", {"eps": 0.3})])
def test_zero_margin_gives_log2(name, kw, beta):
    lp = pair(pw=-11.0, pl=-11.0)
    assert value(name, lp, beta=beta, **kw) == pytest.approx(math.log(2), abs=1e-12)


def test_dpo_antisymmetry_and_gradient():
    h = T([-3.0, -0.5, 0.7, 2.0, 9.0])
    beta = 0.3
    fwd = loss("dpo", pairs_from_h(h), beta=beta)
    back = loss("dpo", pairs_from_h(-h), beta=beta)
    assert (fwd - back).tolist() == pytest.approx((-beta * h).tolist(), abs=1e-12)
    lp = pairs_from_h(h)
    loss("dpo", lp, beta=beta).sum().backward()
    assert lp.policy.grad[:, 0].tolist() == pytest.approx((-beta * torch.sigmoid(-beta * h)).tolist(), abs=1e-12)


def test_cdpo_rdpo_reduce_to_dpo_and_rdpo_is_unbiased():
    h = torch.linspace(-30, 30, 13, dtype=D)
    dpo = loss("dpo", pairs_from_h(h), beta=0.1)
    assert torch.allclose(loss("cdpo", pairs_from_h(h), beta=0.1, eps=0.0), dpo, atol=1e-14)
    assert torch.allclose(loss("rdpo", pairs_from_h(h), beta=0.1, eps=0.0), dpo, atol=1e-14)
    for eps in (0.1, 0.3, 0.45):
        flipped = (1 - eps) * loss("rdpo", pairs_from_h(h), beta=0.1, eps=eps) \
            + eps * loss("rdpo", pairs_from_h(-h), beta=0.1, eps=eps)
        assert (flipped - dpo).abs().max().item() < 1e-12
    # unbounded below, decreasing everywhere
    assert value("rdpo", pairs_from_h(T([50.0])), beta=0.1, eps=0.1) == pytest.approx(-0.618, abs=1e-3)
    assert value("rdpo", pairs_from_h(T([200.0])), beta=0.1, eps=0.1) == pytest.approx(-2.5, abs=1e-3)
    lp = pairs_from_h(torch.linspace(-100, 400, 11, dtype=D))
    loss("rdpo", lp, beta=0.1, eps=0.1).sum().backward()
    assert bool((lp.policy.grad[:, 0] < 0).all())
    assert lp.policy.grad[-1, 0].item() == pytest.approx(-0.1 * 0.1 / 0.8, abs=1e-6)


def test_cdpo_has_a_finite_minimiser():
    h_star = math.log(0.9 / 0.1) / 0.1
    assert h_star == pytest.approx(21.9722, abs=1e-4)
    lp = pairs_from_h(T([h_star - 1, h_star, h_star + 1]))
    loss("cdpo", lp, beta=0.1, eps=0.1).sum().backward()
    g = lp.policy.grad[:, 0]
    assert g[0] < 0 and abs(g[1].item()) < 1e-12 and g[2] > 0


def test_ipo_target_and_gradient_sign_change():
    beta = 0.1
    target = 1 / (2 * beta)
    lp = pairs_from_h(T([target - 1, target, target + 1]))
    out = loss("ipo", lp, beta=beta)
    assert out[1].item() == 0.0
    out.sum().backward()
    g = lp.policy.grad[:, 0]
    assert g.tolist() == pytest.approx([-2.0, 0.0, 2.0], abs=1e-12)


def test_ipo_length_normalize_divides_each_log_ratio():
    lp = pair(pw=-10.0, pl=-12.0, rw=-11.0, rl=-11.0, lengths=(2.0, 4.0))
    # rho_w / 2 - rho_l / 4 = 0.5 + 0.25
    assert value("ipo", lp, beta=0.1, length_normalize=True) == pytest.approx((0.75 - 5) ** 2, abs=1e-12)
    assert value("ipo", lp, beta=0.1) == pytest.approx(9.0, abs=1e-12)


def test_copg_is_beta_squared_ipo_at_half_reward_gap_and_zero_at_beta_h():
    beta = 0.1
    h = T([-3.0, 0.0, 2.0, 7.0])
    lp = pairs_from_h(h)
    lp.scores = T([[0.5, 0.0]] * 4)
    ipo = loss("ipo", pairs_from_h(h), beta=beta)
    assert (loss("copg", lp, beta=beta) - beta ** 2 * ipo).abs().max().item() < 1e-14
    lp.scores = torch.stack([beta * h, torch.zeros_like(h)], -1).detach()
    assert loss("copg", lp, beta=beta).abs().max().item() < 1e-14


def test_copg_lists_k2_matches_pairs():
    lp = pair()
    lists = PreferenceLogps(policy=T([[-10.0, -12.0, 0.0]]), reference=T([[-11.0, -11.0, 0.0]]),
                            lengths=torch.ones(1, 3, dtype=D), scores=T([[1.0, 0.0, 5.0]]),
                            valid=torch.tensor([[True, True, False]]))
    assert value("copg", lists, beta=0.1) == pytest.approx(value("copg", lp, beta=0.1), abs=1e-12)


def test_cpl_with_bias_one_is_reference_free_dpo_and_bias_breaks_shift_invariance():
    lp = pair()
    free = PreferenceLogps(policy=lp.policy, reference=torch.zeros_like(lp.policy), lengths=lp.lengths,
                           scores=lp.scores)
    assert value("cpl", lp, beta=0.1, contrastive_bias=1.0) == pytest.approx(value("dpo", free, beta=0.1), abs=1e-14)
    shifted = pair(pw=-5.0, pl=-7.0)
    assert value("cpl", shifted, beta=0.1, contrastive_bias=1.0) == pytest.approx(
        value("cpl", lp, beta=0.1, contrastive_bias=1.0), abs=1e-14)
    assert abs(value("cpl", shifted, beta=0.1, contrastive_bias=0.5) - value("cpl", lp, beta=0.1,
                                                                             contrastive_bias=0.5)) > 1e-3


def test_hinges_have_zero_gradient_past_the_margin():
    lp = pairs_from_h(T([10.0, 12.0, 9.0]))  # beta h = 1.0, 1.2, 0.9
    out = loss("hinge_norm", lp, beta=0.1)
    out.sum().backward()
    assert out.tolist() == pytest.approx([0.0, 0.0, 0.1], abs=1e-12)
    assert lp.policy.grad[:2].abs().max().item() == 0.0
    assert lp.policy.grad[2].tolist() == pytest.approx([-0.1, 0.1], abs=1e-12)
    for name in ("rso_hinge", "list_pairwise_hinge"):
        lp = pairs_from_h(T([10.0, 12.0]))
        loss(name, lp, beta=0.1).sum().backward()
        assert lp.policy.grad.abs().max().item() == 0.0, name
    lp = pairs_from_h(T([1.0, 3.0]))
    loss("slic_hf", lp, delta=1.0).sum().backward()
    assert lp.policy.grad[1].abs().max().item() == 0.0
    assert lp.policy.grad[0].tolist() == [0.0, 0.0]  # exactly at the margin: relu's subgradient 0


def test_rpo_forms():
    lp = pair(grad=True)
    assert value("rpo", lp, beta=0.1, eta=0.0) == pytest.approx(value("dpo", pair(), beta=0.1), abs=1e-14)
    extra = loss("rpo", lp, beta=0.1, eta=0.005) - loss("dpo", lp, beta=0.1)
    extra.sum().backward()
    assert lp.policy.grad[0, 0].item() == pytest.approx(-0.005 * 0.1, abs=1e-14)
    # token_mean: eta * (-sum log pi_w / sum |y_w|) over the batch, the same for every pair
    lp2 = PreferenceLogps(policy=T([[-10.0, -12.0], [-4.0, -3.0]]), reference=T([[-11.0, -11.0], [-4.0, -4.0]]),
                          lengths=T([[5.0, 6.0], [2.0, 3.0]]), scores=T([[1.0, 0.0], [1.0, 0.0]]))
    diff = loss("rpo", lp2, beta=0.1, eta=0.2, sft_form="token_mean") - loss("dpo", lp2, beta=0.1)
    assert diff.tolist() == pytest.approx([0.2 * 14 / 7] * 2, abs=1e-12)


def test_dno_hard_labels_reduce_to_dpo():
    h = T([-4.0, 0.5, 3.0])
    lp = pairs_from_h(h)
    dpo = loss("dpo", lp, beta=0.1)
    assert (loss("dno", lp, beta=0.1, scale=1e3) - dpo).abs().max().item() < 1e-12
    lp.scores = T([[0.0, 1.0]] * 3)  # the other hard label: DPO with the pair swapped
    assert (loss("dno", lp, beta=0.1, scale=1e3) - loss("dpo", pairs_from_h(-h), beta=0.1)).abs().max().item() < 1e-12


def test_aot_single_pair_is_dpo_and_sorting_couples_the_batch():
    lp = pair()
    assert value("aot", lp, beta=0.1) == pytest.approx(0.5981389, abs=TOL)
    assert value("aot_unpaired", lp, beta=0.1) == pytest.approx(0.5981389, abs=TOL)
    lp2 = PreferenceLogps(policy=T([[-10.0, -12.0], [-3.0, -1.0]]), reference=T([[-11.0, -11.0], [-2.0, -5.0]]),
                          lengths=torch.ones(2, 2, dtype=D), scores=T([[1.0, 0.0]] * 2))
    # gaps sorted: policy [-2, 2], reference [0, 3] -> d = [-2, -1]
    expected = -F.logsigmoid(0.1 * T([-2.0, -1.0]))
    assert loss("aot", lp2, beta=0.1).tolist() == pytest.approx(expected.tolist(), abs=1e-12)


def test_simpo_alphapo_orpo_cpo_are_reference_free_and_consistent():
    for name in ("simpo", "orpo", "cpo", "cpl", "slic_hf", "rso_hinge", "alphapo"):
        assert spec_of(PREFERENCE_LOSSES.get(name)).reference is False, name
    lp = pair(**SIMPO_LP)
    # AlphaPO tends to SimPO as alpha -> 0
    assert value("alphapo", lp, alpha=1e-9) == pytest.approx(value("simpo", lp), abs=1e-7)
    assert abs(value("alphapo", lp, alpha=0.5) - value("simpo", lp)) > 1e-3
    # CPO with cpo_alpha = 0 is reference-free DPO
    free = PreferenceLogps(policy=lp.policy, reference=torch.zeros_like(lp.policy), lengths=lp.lengths,
                           scores=lp.scores)
    assert value("cpo", lp, beta=0.1, cpo_alpha=0.0) == pytest.approx(value("dpo", free, beta=0.1), abs=1e-14)
    assert value("cpo", lp, beta=0.1, cpo_alpha=1.0) == pytest.approx(value("dpo", free, beta=0.1) + 0.5, abs=1e-14)


def test_bco_and_apo_unpaired_split_their_pair_versions():
    def unpaired(policy, reference, labels):
        n = len(policy)
        return PreferenceLogps(policy=T([[p] for p in policy]), reference=T([[r] for r in reference]),
                               lengths=torch.ones(n, 1, dtype=D), scores=T([[s] for s in labels]))
    u = unpaired([-10.0, -12.0], [-11.0, -11.0], [1.0, 0.0])
    assert loss("bco", u, beta=0.1, reward_shift=T(0.0)).sum().item() == pytest.approx(1.2887933, abs=TOL)
    assert loss("apo_zero_unpaired", u, beta=0.1).sum().item() == pytest.approx(0.9500416, abs=TOL)
    # the shift: desirable -log sigma(b rho - d), undesirable -log sigma(-(b rho - d))
    out = loss("bco", u, beta=0.1, reward_shift=T(0.05))
    assert out.tolist() == pytest.approx([-math.log(1 / (1 + math.exp(-0.05))),
                                         -math.log(1 / (1 + math.exp(-0.15)))], abs=1e-12)


# ------------------------------------------------------------------------------------ HyPO


def test_hypo_zero_coefficient_is_dpo():
    h = T([-1.0, 2.0])
    online = PreferenceLogps(policy=torch.randn(3, 4, dtype=D), reference=torch.randn(3, 4, dtype=D),
                             lengths=torch.ones(3, 4, dtype=D), scores=torch.zeros(3, 4, dtype=D))
    assert torch.equal(loss("hypo", pairs_from_h(h), beta=0.1, kl_coef=0.0, online=online),
                       loss("dpo", pairs_from_h(h), beta=0.1))


def _categorical(vocab=3):
    theta = torch.tensor([0.3, -0.4, 1.1][:vocab], dtype=D, requires_grad=True)
    log_ref = torch.log_softmax(torch.tensor([0.0, 0.5, -0.2][:vocab], dtype=D), -1)
    return theta, log_ref


def _exact_kl_grad(theta, log_ref):
    t = theta.detach().clone().requires_grad_(True)
    logp = torch.log_softmax(t, -1)
    kl = (logp.exp() * (logp - log_ref)).sum()
    kl.backward()
    return kl.item(), t.grad


def _hypo_kl_part(theta, log_ref, samples: torch.Tensor, kl_coef=1.0):
    logp = torch.log_softmax(theta, -1)
    online = PreferenceLogps(policy=logp[samples], reference=log_ref[samples], lengths=torch.ones_like(logp[samples]),
                             scores=torch.zeros_like(logp[samples]))
    offline = pairs_from_h(T([0.0]))
    return loss("hypo", offline, beta=0.1, kl_coef=kl_coef, online=online) - math.log(2)


def test_hypo_kl_gradient_is_unbiased_exactly_over_all_sample_tuples():
    # k = 2 samples per prompt from a 3-way categorical: average the surrogate gradient over all 9
    # tuples weighted by their probability; it must equal grad KL(pi || ref) (and the value the KL).
    theta, log_ref = _categorical()
    kl, exact = _exact_kl_grad(theta, log_ref)
    probs = torch.softmax(theta.detach(), -1)
    mean_grad, mean_value = torch.zeros(3, dtype=D), 0.0
    for a, b in itertools.product(range(3), repeat=2):
        th = theta.detach().clone().requires_grad_(True)
        out = _hypo_kl_part(th, log_ref, torch.tensor([[a, b]]))
        out.sum().backward()
        w = (probs[a] * probs[b]).item()
        mean_grad += w * th.grad
        mean_value += w * out[0].item()
    assert mean_value == pytest.approx(kl, abs=1e-12)
    assert mean_grad.tolist() == pytest.approx(exact.tolist(), abs=1e-12)


def test_hypo_kl_gradient_monte_carlo():
    theta, log_ref = _categorical()
    kl, exact = _exact_kl_grad(theta, log_ref)
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(theta.detach(), -1)
    samples = torch.multinomial(probs, 20000 * 4, replacement=True, generator=g).view(20000, 4)
    out = _hypo_kl_part(theta, log_ref, samples)
    out[0].backward()
    assert out[0].item() == pytest.approx(kl, abs=0.01)
    assert (theta.grad - exact).abs().max().item() < 0.01
    assert exact.abs().max().item() > 0.1  # the check is not vacuous


def test_hypo_needs_two_samples_per_prompt():
    online = PreferenceLogps(policy=torch.zeros(2, 1, dtype=D), reference=torch.zeros(2, 1, dtype=D),
                             lengths=torch.ones(2, 1, dtype=D), scores=torch.zeros(2, 1, dtype=D))
    with pytest.raises(ValueError, match="k >= 2"):
        loss("hypo", pair(), kl_coef=0.1, online=online)


# ------------------------------------------------------------------------------------ listwise


def _lists(s, psi, valid=None, grad=False):
    policy = T(s).requires_grad_(grad)
    return PreferenceLogps(policy=policy, reference=torch.zeros_like(policy), lengths=torch.ones_like(policy),
                           scores=T(psi), valid=None if valid is None else torch.tensor(valid))


@pytest.mark.parametrize("name", ["list_pairwise_logistic", "listmle", "lipo_lambda"])
def test_lists_of_two_reduce_to_dpo(name):
    lp = pair()
    got = value(name, lp, beta=0.1)
    if name == "lipo_lambda":  # Delta = (2 - 1) * (1 - 1/log2(3)) for a two-item list
        got /= 1 - 1 / math.log2(3)
    assert got == pytest.approx(0.5981389, abs=TOL)
    assert value("list_pairwise_hinge", lp, beta=0.1) == pytest.approx(0.8, abs=TOL)


@pytest.mark.parametrize("name", ["lipo_lambda", "listmle", "list_softmax_ce", "list_pairwise_logistic",
                                  "list_pairwise_hinge", "copg"])
def test_lists_ignore_invalid_entries(name):
    full = _lists([[0.2, 0.3, -0.1]], [[1.0, 0.5, 0.0]])
    padded = _lists([[0.2, 7.0, 0.3, -0.1, -3.0]], [[1.0, 9.0, 0.5, 0.0, 4.0]],
                    valid=[[True, False, True, True, False]], grad=True)
    assert value(name, padded, beta=1.0) == pytest.approx(value(name, full, beta=1.0), abs=1e-12)
    loss(name, padded, beta=1.0).sum().backward()
    assert padded.policy.grad[0, [1, 4]].abs().max().item() == 0.0


def test_ties_form_no_pairs():
    tied = _lists([[0.4, -0.2]], [[1.0, 1.0]])
    for name in ("lipo_lambda", "listmle", "list_pairwise_logistic", "list_pairwise_hinge"):
        assert value(name, tied, beta=1.0) == 0.0, name
    # a tie inside a longer list adds nothing: [1, 1, 0] equals the two pairs (0, 2), (1, 2)
    lp = _lists([[0.4, -0.2, 0.1]], [[1.0, 1.0, 0.0]])
    expected = F.softplus(-T(0.3)) + F.softplus(-T(-0.3))
    assert value("list_pairwise_logistic", lp, beta=1.0) == pytest.approx(expected.item(), abs=1e-12)


def test_lipo_weights_carry_no_gradient():
    lp = _lists([[0.2, 0.3, -0.1]], [[1.0, 0.5, 0.0]], grad=True)
    loss("lipo_lambda", lp, beta=1.0).sum().backward()
    s = lp.policy.detach()
    delta = lambda_weights(lp.scores, current_ranks(s, lp.mask()))[0]
    expected = torch.zeros(3, dtype=D)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        g = -delta[i, j] * torch.sigmoid(-(s[0, i] - s[0, j]))
        expected[i] += g
        expected[j] -= g
    assert lp.policy.grad[0].tolist() == pytest.approx(expected.tolist(), abs=1e-12)


def test_list_softmax_ce_targets():
    lp = _lists([[0.2, 0.3, -0.1]], [[-1.0, 0.5, 0.0]])
    with pytest.raises(ValueError, match="scores >= 0"):
        loss("list_softmax_ce", lp, beta=1.0)
    expected = -(torch.softmax(T([-1.0, 0.5, 0.0]), -1) * torch.log_softmax(T([0.2, 0.3, -0.1]), -1)).sum()
    assert value("list_softmax_ce", lp, beta=1.0, target="softmax") == pytest.approx(expected.item(), abs=1e-12)
    assert value("list_softmax_ce", _lists([[0.2, 0.3]], [[0.0, 0.0]]), beta=1.0) == 0.0


# ------------------------------------------------------------------------------------ every loss

def _random_lp(kind: str, b: int = 5, g: torch.Generator | None = None) -> PreferenceLogps:
    k = {"pairs": 2, "lists": 4, "unpaired": 1}[kind]
    lengths = torch.randint(1, 20, (b, k), generator=g).to(D)
    policy = (-torch.rand(b, k, generator=g, dtype=D) * 2 - 0.01) * lengths
    reference = policy.detach() + torch.randn(b, k, generator=g, dtype=D)
    if kind == "pairs":
        scores = T([[1.0, 0.0]] * b)
    elif kind == "unpaired":
        scores = T([[float(i % 2)] for i in range(b)])
    else:
        scores = torch.rand(b, k, generator=g, dtype=D)
    valid = None
    if kind == "lists":
        valid = torch.ones(b, k, dtype=torch.bool)
        valid[0, 3] = False
    return PreferenceLogps(policy=policy.requires_grad_(True), reference=reference, lengths=lengths, scores=scores,
                           valid=valid)


def _needed(name: str, lp: PreferenceLogps, g: torch.Generator) -> dict:
    out = {}
    for need in spec_of(PREFERENCE_LOSSES.get(name)).needs:
        if need == "kl":
            out["kl"] = torch.randn(lp.policy.shape[0], generator=g, dtype=D)
        elif need == "reward_shift":
            out["reward_shift"] = T(0.03)
        elif need == "token_logits":  # token-level losses: the policy's logits at 6 response positions
            b = lp.policy.shape[0]
            out["token_logits"] = TokenLogits(torch.randn(b, 6, 7, generator=g, dtype=D).requires_grad_(True),
                                              torch.randint(0, 7, (b, 6), generator=g), torch.ones(b, 6, dtype=D))
        elif need == "online":
            pol = -torch.rand(3, 4, generator=g, dtype=D) * 5
            out["online"] = PreferenceLogps(policy=pol.requires_grad_(True), reference=pol.detach() + 0.1,
                                            lengths=torch.ones(3, 4, dtype=D), scores=torch.zeros(3, 4, dtype=D))
        else:
            raise AssertionError(f"test has no builder for input {need!r} of {name}")
    return out


ALL = PREFERENCE_LOSSES.names()


@pytest.mark.parametrize("name", ALL)
def test_every_loss_shape_finite_and_declared(name):
    fn = PREFERENCE_LOSSES.get(name)
    spec = spec_of(fn)
    assert spec.kinds and set(spec.kinds) <= {"pairs", "lists", "unpaired"}
    g = torch.Generator().manual_seed(1)
    for kind in spec.kinds:
        lp = _random_lp(kind, g=g)
        extra = _needed(name, lp, g)
        out = fn(lp, **extra)
        assert out.shape == (5,), (name, kind)
        assert bool(torch.isfinite(out).all()), (name, kind)
        out.mean().backward()
        # a token-level loss differentiates the logits, a sequence-level one the sequence log-probs
        leaf = extra["token_logits"].logits if "token_logits" in extra else lp.policy
        assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())
        if not spec.reference:  # reference-free: the reference changes nothing
            moved = PreferenceLogps(policy=lp.policy.detach(), reference=lp.reference + 3.0, lengths=lp.lengths,
                                    scores=lp.scores, valid=lp.valid)
            assert torch.equal(fn(moved, **extra), out.detach()), name


@pytest.mark.parametrize("name", ALL)
def test_every_loss_docstring_cites_a_paper_and_signature_is_declarative(name):
    fn = PREFERENCE_LOSSES.get(name)
    first = (fn.__doc__ or "").strip().splitlines()[0]
    assert re.search(r"arXiv \d{4}\.\d{4,5}", first), f"{name}: first docstring line cites no arXiv id: {first!r}"
    assert hasattr(fn, "preference_kinds") and hasattr(fn, "uses_reference")
    params = list(inspect.signature(fn).parameters.values())
    assert params[0].name == "lp"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:]), name
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    if "token_logits" not in spec_of(fn).needs:  # sequence-level losses scale the log-ratios by beta
        assert "beta" in [p.name for p in params]
    needs = set(spec_of(fn).needs)
    for p in params[1:]:
        assert p.annotation is not inspect.Parameter.empty, (name, p.name)
        assert p.name in needs or p.default is not inspect.Parameter.empty, (name, p.name)


@pytest.mark.parametrize(("name", "kw", "match"), [
    ("rdpo", {"eps": 0.5}, "eps"),
    ("cdpo", {"eps": -0.1}, "eps"),
    ("exo_pair", {"eps": 0.0}, "eps"),
    ("cpl", {"contrastive_bias": 0.0}, "contrastive_bias"),
    ("alphapo", {"alpha": 0.0}, "alpha"),
    ("dr_dpo", {"beta_prime": 0.0}, "beta_prime"),
    ("rpo", {"sft_form": "mean"}, "sft_form"),
    ("lipo_lambda", {"discount": "log10"}, "discount"),
])
def test_bad_options_are_refused(name, kw, match):
    with pytest.raises(ValueError, match=match):
        loss(name, pair(), **kw)


@pytest.mark.parametrize(("name", "kw"), [
    ("rdpo", {"eps": 0.5}), ("cdpo", {"eps": 0.6}), ("exo_pair", {"eps": 0.0}), ("cpl", {"contrastive_bias": 1.5}),
    ("kto", {"z0": -0.1}), ("rpo", {"sft_form": "mean"}), ("lipo_lambda", {"discount": "log10"}),
    ("list_softmax_ce", {"target": "rank"}), ("dr_dpo", {"beta_prime": 0.0}), ("hypo", {"kl_coef": -1.0}),
])
def test_option_domains_are_read_from_the_signature(name, kw):
    """A config loading these options refuses them from the annotations alone (before any call)."""
    from rlfold.core.config import check_part_options

    fn = PREFERENCE_LOSSES.get(name)
    with pytest.raises(ValueError, match=next(iter(kw))):
        check_part_options(("preference", "loss_kwargs"), "preference loss", name, fn, kw, n_positional=1,
                      reserved=("beta",))
    ok = {k: v for k, v in {"eps": 0.1, "contrastive_bias": 1.0, "z0": 0.0}.items() if k in kw}
    if ok:
        check_part_options(("preference", "loss_kwargs"), "preference loss", name, fn, ok, n_positional=1,
                      reserved=("beta",))


def test_wrong_kind_is_refused():
    three = _lists([[0.1, 0.2, 0.3]], [[1.0, 0.5, 0.0]])
    with pytest.raises(ValueError, match="pairs"):
        loss("dpo", three)
    with pytest.raises(ValueError, match="unpaired"):
        loss("kto", pair(), z0=0.0)
    with pytest.raises(ValueError, match="kl"):
        loss("kto", PreferenceLogps(policy=T([[-1.0]]), reference=T([[-1.0]]), lengths=T([[1.0]]), scores=T([[1.0]])))


# ------------------------------------------------------------------------------------ token level


def test_aligndistil_worked_numbers():
    z_d, z_r = T([[[2.0, 1.0, 0.0]]]), T([[[0.0, 1.0, 2.0]]])
    z_star, w = token.aligndistil_teacher(z_d, z_r, beta2=10.0)
    tvd = (w.item() - 1e-3) / 10
    assert tvd == pytest.approx(1.150421, abs=TOL)
    assert w.item() == pytest.approx(11.505208, abs=TOL)
    assert 0.1 / w.item() == pytest.approx(0.0086917, abs=1e-7)
    assert z_star[0, 0].tolist() == pytest.approx([25.0104, 1.0, -23.0104], abs=1e-4)
    mask = torch.ones(1, 1)
    uniform = torch.zeros(1, 1, 3, dtype=D)
    at_uniform = token.aligndistil_loss(uniform, z_d, z_r, mask, beta=0.1, beta2=10.0)
    assert at_uniform.item() == pytest.approx(0.199143, abs=TOL)
    at_teacher = token.aligndistil_loss(z_star.clone(), z_d, z_r, mask, beta=0.1, beta2=10.0)
    assert at_teacher.item() == pytest.approx(0.0, abs=1e-12)
    # p_d = p_r: w = 1e-3, z* = z_d and the coefficient beta / w = 100
    z_star, w = token.aligndistil_teacher(z_d, z_d.clone(), beta2=10.0)
    assert w.item() == pytest.approx(1e-3, abs=1e-15) and torch.equal(z_star, z_d)
    student = T([[[0.0, 0.5, 0.0]]])
    got = token.aligndistil_loss(student, z_d, z_d.clone(), mask, beta=0.1, beta2=10.0).item()
    kl = F.kl_div(torch.log_softmax(z_d, -1), torch.log_softmax(student, -1), log_target=True, reduction="sum").item()
    assert got == pytest.approx(100 * kl, rel=1e-12)


def test_aligndistil_length_normalises_and_masks():
    g = torch.Generator().manual_seed(0)
    s, zd, zr = (torch.randn(2, 4, 5, generator=g, dtype=D) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    out = token.aligndistil_loss(s, zd, zr, mask)
    per_token = torch.stack([token.aligndistil_loss(s[:, t:t + 1], zd[:, t:t + 1], zr[:, t:t + 1], torch.ones(2, 1))
                             for t in range(4)], -1)
    assert out.tolist() == pytest.approx([per_token[0, :3].mean().item(), per_token[1, 0].item()], abs=1e-12)


def test_ce_u_worked_numbers_and_gradient():
    z = T([[[2.0, 1.0, 0.0]]]).requires_grad_(True)
    labels, mask = torch.tensor([[0]]), torch.ones(1, 1)
    out = token.ce_u_loss(z, labels, mask)
    assert out.item() == pytest.approx(1.676547, abs=TOL)
    out.backward()
    assert z.grad[0, 0].tolist() == pytest.approx([0.665241, -0.486330, -0.178911], abs=TOL)
    z2 = z.detach().clone().requires_grad_(True)
    kl = token.ce_u_loss(z2, labels, mask, form="kl")
    p_y = torch.softmax(z.detach(), -1)[0, 0, 0].item()
    assert kl.item() == pytest.approx(1.094344, abs=TOL)
    assert kl.item() == pytest.approx(-math.log(1 - p_y), abs=1e-12)
    kl.backward()
    assert torch.allclose(z2.grad, z.grad, atol=1e-14)


def test_ce_u_ignores_the_first_tokens():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 5, generator=g, dtype=D)
    labels = torch.randint(0, 5, (2, 4), generator=g)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    dropped = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0]])
    assert token.ce_u_loss(z, labels, mask, ignore_first_n=1).item() == pytest.approx(
        token.ce_u_loss(z, labels, dropped).item(), abs=1e-12)


def test_coipo_contrast():
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 3, 4, generator=g, dtype=D)
    mask = torch.ones(2, 3)
    # identical example rows: every KL is equal, c = 0, value 1 with zero gradient
    same = clean[:1].expand(2, 3, 4).clone().requires_grad_(True)
    noisy = same.detach().clone().requires_grad_(True)
    out = token.coipo_contrast(same, noisy, mask)
    assert out.tolist() == [1.0]
    out.sum().backward()
    assert noisy.grad.abs().max().item() == 0.0
    # noisy equal to clean: own KLs vanish, c = -(k10 + k01) < 0, value exp(c)
    noisy = clean.clone().requires_grad_(True)
    out = token.coipo_contrast(clean, noisy, mask)
    lc = torch.log_softmax(clean, -1)
    k10 = (lc[1].exp() * (lc[1] - lc[0])).sum(-1).mean()
    k01 = (lc[0].exp() * (lc[0] - lc[1])).sum(-1).mean()
    assert out.item() == pytest.approx(math.exp(-(k10 + k01).item()), abs=1e-12)
    out.sum().backward()
    assert noisy.grad.abs().max().item() > 0
    # uneven lengths: past the shorter example the distribution is uniform, averaged over the longer length
    short = torch.tensor([[1, 1, 1], [1, 0, 0]])
    out = token.coipo_contrast(clean, clean, short)
    uni = torch.full((4,), -math.log(4), dtype=D)
    lc1 = torch.stack([lc[1, 0], uni, uni])
    k10 = (lc1.exp() * (lc1 - lc[0])).sum(-1).mean()
    k01 = (lc[0].exp() * (lc[0] - lc1)).sum(-1).mean()
    assert out.item() == pytest.approx(math.exp(-(k10 + k01).item()), abs=1e-12)


def test_coipo_scale():
    gen = T(2.0)
    assert token.coipo_scale(T(1e-4), gen, ratio=1000.0).item() == pytest.approx(0.1, abs=1e-12)
    c = T(0.01).requires_grad_(True)
    out = token.coipo_scale(c, gen, ratio=1000.0)  # 10 > 2: rescaled to the generation loss
    assert out.item() == pytest.approx(2.0, abs=1e-12)
    out.backward()
    assert c.grad.item() == pytest.approx(1000.0 * 0.2, abs=1e-9)
