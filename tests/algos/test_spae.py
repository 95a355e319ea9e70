"""SPAE (arXiv 2601.03823): the worked numbers of policy.md section 16 (e), the per-step pieces on hand-made
maps, and the invariants (alpha = xi = 0 is Dr. GRPO before the z-score, equal rewards with a flat potential give
0, masked tokens 0, sign of the group advantage kept without difference shaping)."""

from __future__ import annotations

import math

import pytest
import torch

from rlfold.algos.advantages import ADVANTAGES, dr_grpo, reinforce_pp_baseline
from rlfold.algos.spae import (difference_shaping, per_step_potential, potential_gains, saturation_counts,
                               saturation_factor, spae, spae_token_advantages, step_potential)
from rlfold.core.registry import needed_inputs

D = torch.float64


@pytest.mark.parametrize("acc, conf, phi", [(0.9, 0.8, 0.73), (1.0, 1.0, 1.0), (0.0, 1.0, -1.0), (0.0, 0.0, 0.0)])
def test_step_potential_worked_numbers(acc, conf, phi):
    assert float(step_potential(torch.tensor(acc, dtype=D), torch.tensor(conf, dtype=D))) == pytest.approx(phi, abs=1e-12)


def test_saturation_factor_worked_number():
    f = float(saturation_factor(torch.tensor(2.0, dtype=D), 0.5))
    assert f == pytest.approx(0.5677, abs=5e-5) and f == pytest.approx(1 - 0.5 * (1 - math.exp(-2)), abs=1e-12)
    assert float(saturation_factor(torch.tensor(0.0, dtype=D), 0.5)) == 1.0


# Two rows; row 0: steps 0,0 | 1 | 2,2 then padding; row 1: steps 0 | 1,1 then padding.
STEPS = torch.tensor([[0, 0, 1, 2, 2, -1], [0, 1, 1, -1, -1, -1]])
MASK = (STEPS >= 0).long()
PHI_STEP = [[0.2, 0.9, 0.95], [0.9, 0.5]]
POT = torch.tensor([[0.2, 0.2, 0.9, 0.95, 0.95, 0.0], [0.9, 0.5, 0.5, 0.0, 0.0, 0.0]], dtype=D)


def test_per_step_pieces_on_a_hand_made_map():
    phi, exists = per_step_potential(STEPS, POT, MASK)
    assert exists.tolist() == [[True, True, True], [True, True, False]]
    assert torch.allclose(phi, torch.tensor([[0.2, 0.9, 0.95], [0.9, 0.5, 0.0]], dtype=D), atol=0)
    c_sat = saturation_counts(phi, exists, 0.8)
    assert c_sat.tolist() == [[0, 0, 1], [0, 1, 1]]  # the last entry of row 1 is no step (ignored)
    d = potential_gains(phi, exists)
    assert torch.allclose(d, torch.tensor([[0.0, 0.7, 0.05], [0.0, -0.4, 0.0]], dtype=D), atol=1e-12)
    g = difference_shaping(d, exists)
    # min -0.4, max 0.7 over the five steps; u = (d + 0.4) / 1.1
    u = [(x + 0.4) / 1.1 for x in (0.0, 0.7, 0.05, 0.0, -0.4)]
    mean = sum(math.exp(x) for x in u) / 5
    want = [[math.exp(u[0]) - mean, math.exp(u[1]) - mean, math.exp(u[2]) - mean],
            [math.exp(u[3]) - mean, math.exp(u[4]) - mean, 0.0]]
    assert torch.allclose(g, torch.tensor(want, dtype=D), atol=1e-12)
    assert abs(float(g[exists].sum())) < 1e-12


def test_token_advantages_equal_a_hand_computation():
    rewards, groups = torch.tensor([1.0, 0.0]), torch.tensor([3, 3])
    adv, m = spae_token_advantages(rewards, groups, MASK, STEPS, POT, alpha=0.5, xi=0.5, eps_sat=0.8)
    phi, exists = per_step_potential(STEPS, POT, MASK)
    g = difference_shaping(potential_gains(phi, exists), exists)
    c = [[0, 0, 1], [0, 1]]
    grp = [0.5, -0.5]
    for i in range(2):
        for t in range(6):
            k = int(STEPS[i, t])
            want = 0.0 if k < 0 else grp[i] * (1 - 0.5 * (1 - math.exp(-c[i][k]))) + 0.5 * float(g[i, k])
            assert float(adv[i, t]) == pytest.approx(want, abs=1e-6), (i, t)
    assert m["spae/phi_mean"] == pytest.approx((0.2 + 0.9 + 0.95 + 0.9 + 0.5) / 5, abs=1e-12)
    assert m["spae/c_sat_mean"] == pytest.approx(2 / 5, abs=1e-12)
    f = [1.0, 1.0, 1 - 0.5 * (1 - math.exp(-1)), 1.0, 1 - 0.5 * (1 - math.exp(-1))]
    assert m["spae/f_mean"] == pytest.approx(sum(f) / 5, abs=1e-12)
    assert m["spae/steps_mean"] == 2.5


def _random_batch(seed=0, n=8, r=7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, r + 1, (n,), generator=g)
    mask = (torch.arange(r)[None, :] < lengths[:, None]).long()
    steps = torch.where(mask.bool(), torch.arange(r)[None, :] // 2, torch.full((n, r), -1))
    pot = torch.where(mask.bool(), torch.rand(n, r, generator=g, dtype=D) * 2 - 1, torch.zeros(n, r, dtype=D))
    pot = torch.where(mask.bool(), pot.gather(1, (steps.clamp(min=0) * 2)), torch.zeros_like(pot))  # one Phi per step
    rewards = torch.randint(0, 2, (n,), generator=g).float()
    groups = torch.arange(n) // 4
    return rewards, groups, mask, steps, pot


def test_alpha_and_xi_zero_is_dr_grpo_before_the_z_score_and_reinforce_pp_baseline_after():
    rewards, groups, mask, steps, pot = _random_batch()
    base, _ = dr_grpo(rewards, groups, mask)
    assert base.abs().sum() > 0
    adv, _ = spae_token_advantages(rewards, groups, mask, steps, pot, alpha=0.0, xi=0.0)
    assert torch.equal(adv, base)
    raw, _ = spae(rewards, groups, mask, spae_steps=steps, spae_potential=pot, alpha=0.0, xi=0.0, normalize=False)
    assert torch.equal(raw, base)
    z, _ = spae(rewards, groups, mask, spae_steps=steps, spae_potential=pot, alpha=0.0, xi=0.0)
    assert torch.allclose(z, reinforce_pp_baseline(rewards, groups, mask)[0], atol=1e-6)


def test_shaping_changes_the_advantage_and_keeps_the_group_sign_without_difference_shaping():
    rewards, groups, mask, steps, pot = _random_batch(1)
    base, _ = dr_grpo(rewards, groups, mask)
    shaped, _ = spae_token_advantages(rewards, groups, mask, steps, pot, alpha=0.5, xi=0.5, eps_sat=0.0)
    assert not torch.allclose(shaped, base)
    f_only, _ = spae_token_advantages(rewards, groups, mask, steps, pot, alpha=0.5, xi=0.0, eps_sat=0.0)
    assert torch.equal(torch.sign(f_only), torch.sign(base))
    assert (f_only.abs() <= base.abs() + 1e-7).all()  # 0.5 <= f <= 1


def test_equal_rewards_and_a_flat_potential_give_zero_and_masked_tokens_are_zero():
    _, groups, mask, steps, _ = _random_batch(2)
    flat = torch.where(mask.bool(), torch.full(mask.shape, 0.3, dtype=D), torch.zeros(mask.shape, dtype=D))
    rewards = torch.ones(groups.shape[0])
    adv, _ = spae_token_advantages(rewards, groups, mask, steps, flat)
    assert (adv == 0).all()
    z, _ = spae(rewards, groups, mask, spae_steps=steps, spae_potential=flat)
    assert (z == 0).all()
    rewards, groups, mask, steps, pot = _random_batch(3)
    z, _ = spae(rewards, groups, mask, spae_steps=steps, spae_potential=pot)
    assert (z[mask == 0] == 0).all() and (z[mask == 1] != 0).any()
    valid = z[mask.bool()].double()
    assert abs(float(valid.mean())) < 1e-6 and float(valid.std()) == pytest.approx(1.0, abs=1e-4)


def test_bad_inputs_are_refused():
    rewards, groups = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    bad = STEPS.clone()
    bad[0, 1] = -1
    with pytest.raises(ValueError, match="negative"):
        spae(rewards, groups, MASK, spae_steps=bad, spae_potential=POT)
    with pytest.raises(ValueError, match="shape"):
        spae(rewards, groups, MASK, spae_steps=STEPS[:, :3], spae_potential=POT)


def test_registered_with_its_inputs():
    assert ADVANTAGES.get("spae") is spae
    assert needed_inputs(spae) == ("spae_steps", "spae_potential")
