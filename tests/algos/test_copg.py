"""Online CoPG (Contrastive Policy Gradient, arXiv 2406.19185): the contrastive advantage on R_beta = R - beta l."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlfold.algos import ADVANTAGES, POLICY_LOSSES, aggregate
from rlfold.algos.copg import sequence_log_ratio
from rlfold.algos.preference.base import PREFERENCE_LOSSES, PreferenceLogps
from rlfold.cli import main
from rlfold.core.options import is_group_relative
from rlfold.core.registry import needed_inputs

COPG = ADVANTAGES.get("copg")
RLOO = ADVANTAGES.get("rloo")
REINFORCE = POLICY_LOSSES.get("reinforce")
AGG = "seq-mean-token-sum"  # ln pi(y) is the sum of the token log-probs


def _logprobs(log_ratio, width=3, valid=2):
    """(old, ref, mask): ``valid`` tokens per row whose old - ref sums to ``log_ratio[i]``; padding holds junk."""
    n = len(log_ratio)
    mask = torch.zeros(n, width)
    mask[:, :valid] = 1
    old = torch.full((n, width), float("-inf"))
    old[:, :valid] = torch.tensor([-1.0, -2.0])
    ref = torch.full((n, width), 7.0)
    ref[:, :valid] = old[:, :valid] - torch.tensor(log_ratio, dtype=torch.float64)[:, None].float() / valid
    return old, ref, mask


def _explicit_pairwise(reg, ids):
    """A_i = 1/(k-1) sum over the other rows j of i's group of (R_beta_i - R_beta_j), written as the double loop."""
    out = []
    for i in range(len(reg)):
        group = [j for j in range(len(reg)) if ids[j] == ids[i]]
        k = len(group)
        out.append(sum(reg[i] - reg[j] for j in group) / (k - 1) if k > 1 else 0.0)
    return out


def _batch(seed, n=12, width=5, k=4):
    gen = torch.Generator().manual_seed(seed)
    r = torch.rand(n, generator=gen).round(decimals=1)
    ids = torch.arange(n // k).repeat_interleave(k)[torch.randperm(n, generator=gen)]
    mask = (torch.rand(n, width, generator=gen) > 0.3).float()
    mask[:, 0] = 1
    old = -torch.rand(n, width, generator=gen) * 2
    ref = -torch.rand(n, width, generator=gen) * 2
    return r, ids, mask, old, ref


def _adv(r, ids, mask, old, ref, beta):
    adv, metrics = COPG(r, ids, mask, old_logprobs=old, ref_logprobs=ref, beta=beta)
    assert (adv[mask == 0] == 0).all()  # exactly zero on masked tokens
    return adv, metrics


# ----- declaration ---------------------------------------------------------------------------


def test_declares_its_inputs_and_is_group_relative():
    assert set(needed_inputs(COPG)) == {"old_logprobs", "ref_logprobs"}
    assert is_group_relative(COPG)


# ----- hand numbers ---------------------------------------------------------------------------


def test_hand_numbers_k2():
    # R = [1, 0], l = [0.5, -0.5], beta = 0.1: R_beta = [0.95, 0.05]; A = +-(0.95 - 0.05) = +-0.9
    old, ref, mask = _logprobs([0.5, -0.5])
    r, ids = torch.tensor([1.0, 0.0]), torch.tensor([3, 3])
    adv, m = _adv(r, ids, mask, old, ref, 0.1)
    assert adv[:, 0].tolist() == pytest.approx([0.9, -0.9], abs=1e-6)
    assert adv[:, 0].tolist() == pytest.approx(_explicit_pairwise([0.95, 0.05], [3, 3]), abs=1e-6)
    assert (adv == adv[:, :1] * mask).all()  # one value per row, broadcast over its valid tokens
    assert m["copg/reg_reward_mean"] == pytest.approx(0.5, abs=1e-6)
    assert m["copg/log_ratio_mean"] == pytest.approx(0.0, abs=1e-6)


def test_hand_numbers_k4():
    # R = [1, 0, 0.5, 0.1], l = [2, -1, 0, 1], beta = 0.5: R_beta = [0, 0.5, 0.5, -0.4];
    # A_0 = (-0.5 - 0.5 + 0.4) / 3 = -0.2, A_1 = A_2 = (0.5 + 0 + 0.9) / 3 = 1.4/3, A_3 = (-0.4 - 0.9 - 0.9) / 3
    old, ref, mask = _logprobs([2.0, -1.0, 0.0, 1.0])
    r, ids = torch.tensor([1.0, 0.0, 0.5, 0.1]), torch.zeros(4, dtype=torch.long)
    adv, m = _adv(r, ids, mask, old, ref, 0.5)
    expected = [-0.2, 1.4 / 3, 1.4 / 3, -2.2 / 3]
    assert adv[:, 0].tolist() == pytest.approx(expected, abs=1e-6)
    assert adv[:, 0].tolist() == pytest.approx(_explicit_pairwise([0.0, 0.5, 0.5, -0.4], [0] * 4), abs=1e-6)
    assert m["copg/reg_reward_mean"] == pytest.approx(0.15, abs=1e-6)
    assert m["copg/log_ratio_mean"] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_matches_the_explicit_pairwise_sum_on_shuffled_groups(seed):
    r, ids, mask, old, ref = _batch(seed)
    beta = 0.3
    reg = (r.double() - beta * ((old - ref).double() * mask).sum(1)).tolist()
    adv, _ = _adv(r, ids, mask, old, ref, beta)
    assert adv[:, 0].tolist() == pytest.approx(_explicit_pairwise(reg, ids.tolist()), abs=1e-6)


def test_sequence_log_ratio_ignores_padding_and_refuses_non_finite_valid_tokens():
    old, ref, mask = _logprobs([1.5, -0.25])  # padding: old -inf, ref 7
    assert sequence_log_ratio(old, ref, mask).tolist() == pytest.approx([1.5, -0.25], abs=1e-6)
    old[0, 0] = float("nan")
    with pytest.raises(ValueError, match="old_logprobs must be finite"):
        sequence_log_ratio(old, ref, mask)


# ----- the constant: gradients against RLOO, the pair gradient and the offline squared loss ----------------


def _grad(adv, logp0, mask):
    logp = logp0.clone().requires_grad_(True)
    loss, _ = REINFORCE(logp, logp.detach(), adv, mask)
    aggregate(loss, mask, AGG).backward()
    return logp.grad


def test_beta0_k2_gradient_is_rloo_and_half_the_pair_contrastive_gradient():
    gen = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    logp0 = -torch.rand(2, 3, generator=gen, dtype=torch.float64)  # toy on-policy log-probs (old = current)
    r, ids = torch.tensor([1.0, 0.25], dtype=torch.float64), torch.tensor([0, 0])
    ref = -torch.rand(2, 3, generator=gen, dtype=torch.float64)  # ignored at beta = 0
    a_copg, _ = COPG(r, ids, mask, old_logprobs=logp0, ref_logprobs=ref, beta=0.0)
    a_rloo, _ = RLOO(r, ids, mask)
    g_copg, g_rloo = _grad(a_copg, logp0, mask), _grad(a_rloo, logp0, mask)
    assert torch.allclose(g_copg, g_rloo, atol=1e-6, rtol=0)  # multiple 1 of RLOO with the same aggregation
    # the pair's contrastive gradient (R(y) - R(y')) (grad ln pi(y) - grad ln pi(y')), as a loss to minimise
    logp = logp0.clone().requires_grad_(True)
    seq = (logp * mask).sum(1)
    (-(r[0] - r[1]) * (seq[0] - seq[1])).backward()
    assert torch.allclose(g_copg, 0.5 * logp.grad, atol=1e-6, rtol=0)
    assert g_copg.abs().max() > 0.1  # the comparison is not between zeros
    # direct call without a reference model at beta = 0
    a_noref, _ = COPG(r, ids, mask, old_logprobs=logp0, ref_logprobs=None, beta=0.0)
    assert torch.equal(a_noref, a_copg)


@pytest.mark.parametrize("k", [2, 4])
def test_gradient_is_the_offline_squared_loss_over_2_beta_k(k):
    """On-policy (old = current log-probs), the online loss has the gradient of the offline ``copg`` group loss
    1/(k-1) sum_{i<j} (R_beta_i - R_beta_j)^2 divided by 2 beta k."""
    gen = torch.Generator().manual_seed(k)
    beta, width = 0.3, 4
    mask = torch.ones(k, width, dtype=torch.float64)
    mask[0, -1] = 0
    logp0 = -torch.rand(k, width, generator=gen, dtype=torch.float64)
    ref = -torch.rand(k, width, generator=gen, dtype=torch.float64)
    r = torch.rand(k, generator=gen, dtype=torch.float64)
    adv, _ = COPG(r, torch.zeros(k, dtype=torch.long), mask, old_logprobs=logp0, ref_logprobs=ref, beta=beta)
    g_online = _grad(adv, logp0, mask)
    logp = logp0.clone().requires_grad_(True)
    lp = PreferenceLogps(policy=(logp * mask).sum(1)[None], reference=(ref * mask).sum(1)[None],
                         lengths=mask.sum(1)[None], scores=r[None])
    (PREFERENCE_LOSSES.get("copg")(lp, beta=beta).sum() / (2 * beta * k)).backward()
    assert torch.allclose(g_online, logp.grad, atol=1e-6, rtol=0)
    assert g_online.abs().max() > 1e-2


# ----- invariants ---------------------------------------------------------------------------


def test_equal_regularised_rewards_give_exactly_zero():
    # R_beta = R - 0.5 l = 0.25 on every row of group 0 although R and l differ (dyadic numbers: exact in
    # floating point); group 1 is a singleton
    old, ref, mask = _logprobs([0.5, -0.25, 1.0, 0.75])
    r = torch.tensor([0.5, 0.125, 0.75, 1.0])
    ids = torch.tensor([0, 0, 0, 1])
    adv, _ = _adv(r, ids, mask, old, ref, 0.5)
    assert (adv == 0).all()  # a constant group and a group of one (no pair) have no contrast


def test_equal_rewards_at_the_reference_give_zero():
    old, _, mask = _logprobs([0.0] * 4)
    adv, _ = _adv(torch.full((4,), 0.7), torch.zeros(4, dtype=torch.long), mask, old, old, 0.1)
    assert (adv == 0).all()


@pytest.mark.parametrize("seed", range(3))
def test_invariant_to_a_constant_added_to_a_group(seed):
    r, ids, mask, old, ref = _batch(seed)
    shift = torch.tensor([3.0, -1.5, 10.0])[ids]  # a different constant per group
    a, _ = _adv(r, ids, mask, old, ref, 0.2)
    b, _ = _adv(r + shift, ids, mask, old, ref, 0.2)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert a.abs().max() > 0.05


@pytest.mark.parametrize("seed", range(3))
def test_is_rloo_on_the_regularised_reward_and_keeps_signs(seed):
    r, ids, mask, old, ref = _batch(seed)
    reg = r.double() - 0.2 * ((old - ref).double() * mask).sum(1)
    a, _ = _adv(r, ids, mask, old, ref, 0.2)
    b, _ = RLOO(reg.float(), ids, mask)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    # sign preservation: a row above its group's mean regularised reward gets a positive advantage
    mean = torch.zeros(3, dtype=torch.float64).index_add(0, ids, reg) / 4
    centred = reg - mean[ids]
    assert (torch.sign(a[:, 0]).double() == torch.sign(centred.round(decimals=9))).all()


@pytest.mark.parametrize("seed", range(2))
def test_beta0_is_dr_grpo_times_k_over_k_minus_1(seed):
    r, ids, mask, old, ref = _batch(seed)  # groups of k = 4
    a, _ = _adv(r, ids, mask, old, ref, 0.0)
    b, _ = ADVANTAGES.get("dr_grpo")(r, ids, mask)
    assert torch.allclose(a, b * 4 / 3, atol=1e-6, rtol=0)


def test_bad_inputs_are_refused():
    old, ref, mask = _logprobs([0.1, 0.2])
    r, ids = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        COPG(r, ids, mask, old_logprobs=old, ref_logprobs=None, beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        COPG(r, ids, mask, old_logprobs=old, ref_logprobs=ref, beta=-1.0)
    with pytest.raises(ValueError, match="ref_logprobs must have the shape"):
        COPG(r, ids, mask, old_logprobs=old, ref_logprobs=ref[:, :2], beta=0.1)


# ----- end to end ---------------------------------------------------------------------------


def _run(tmp_path, *overrides):
    run_dir = tmp_path / "run"
    rc = main(["train", "copg_online", f"run_dir={run_dir}", "train.steps=2", "train.prompts_per_step=2",
               "rollout.n=4", "task.held_out_size=4", "eval.size=4", "log.progress=false", "checkpoint.every=0",
               "threads=1", *overrides])
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return rc, [r for r in rows if r["step"] > 0]


def test_recipe_runs_two_steps_and_logs_the_metrics(tmp_path, capsys):
    rc, steps = _run(tmp_path)
    assert rc == 0, capsys.readouterr().err
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert r["nonfinite_steps"] == 0
        for key in ("copg/reg_reward_mean", "copg/log_ratio_mean", "actor/pg_loss"):
            assert math.isfinite(r[key])
        assert "actor/pg_clipfrac" not in r  # reinforce: no ratio, no clip
    # step 1 samples with the reference weights: the log-ratio is rounding noise, R_beta is the reward
    assert abs(steps[0]["copg/log_ratio_mean"]) < 1e-3
    assert steps[0]["copg/reg_reward_mean"] == pytest.approx(steps[0]["reward/mean"], abs=1e-3)


def test_beta_domain_is_checked_by_the_config(tmp_path, capsys):
    rc, _ = _run(tmp_path, "algo.advantage_kwargs.beta=-0.5")
    assert rc != 0 and "beta" in capsys.readouterr().err
