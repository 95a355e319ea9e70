"""Unlikeliness reward (Rewarding the Unlikely, arXiv 2506.02355): rank-penalised rewards, then GRPO."""

from __future__ import annotations

import math
import json
import statistics

import pytest
import torch

from rlfold.cli import main

import rlfold.algos.unlikeliness  # noqa: F401  (registers the unlikeliness advantage)
from rlfold.algos import ADVANTAGES
from rlfold.algos.unlikeliness import likelihood_ranks
from rlfold.core.options import is_group_relative
from rlfold.core.registry import needed_inputs

U = ADVANTAGES.get("unlikeliness")
GRPO = ADVANTAGES.get("grpo")


def _reference(rewards, group_ids, mean_logp, beta, eps=1e-6):
    """Independent per-group reference: rank by ascending likelihood, R~ = R (1 - beta rank / G), z-score."""
    out = [0.0] * len(rewards)
    for g in sorted(set(group_ids)):
        rows = [i for i, x in enumerate(group_ids) if x == g]
        by_likelihood = sorted(rows, key=lambda i: mean_logp[i])  # distinct values in these tests
        rank = {i: k for k, i in enumerate(by_likelihood)}
        tilde = [rewards[i] * (1 - beta * rank[i] / len(rows)) for i in rows]
        if len(rows) == 1:
            mu, sd = 0.0, 1.0
        else:
            mu, sd = statistics.mean(tilde), statistics.stdev(tilde)
        for i, t in zip(rows, tilde):
            out[i] = 0.0 if len(rows) > 1 and max(tilde) == min(tilde) else (t - mu) / (sd + eps)
    return torch.tensor(out, dtype=torch.float64)


def _logp_rows(means, width=3):
    return torch.tensor(means, dtype=torch.float32)[:, None].expand(-1, width).clone()


def test_the_methods_worked_example():
    # policy.md 10(e): G = 4, mean logp [-0.1, -0.5, -0.3, -0.9], R = [1, 1, 0, 1] => ranks [3, 1, 2, 0]
    means, r = [-0.1, -0.5, -0.3, -0.9], [1.0, 1.0, 0.0, 1.0]
    ids = torch.zeros(4, dtype=torch.long)
    ranks, sizes = likelihood_ranks(torch.tensor(means), ids)
    assert ranks.tolist() == [3, 1, 2, 0] and sizes.tolist() == [4, 4, 4, 4]
    tilde = [1 * (1 - 0.25 * 3 / 4), 1 * (1 - 0.25 * 1 / 4), 0.0, 1.0]
    assert tilde == [0.8125, 0.9375, 0.0, 1.0]
    adv, m = U(torch.tensor(r), ids, torch.ones(4, 3), old_logprobs=_logp_rows(means), beta_rank=0.25)
    mu, sd = statistics.mean(tilde), statistics.stdev(tilde)
    expected = [(t - mu) / (sd + 1e-6) for t in tilde]
    assert adv[:, 0].tolist() == pytest.approx(expected, abs=1e-6)
    assert (adv == adv[:, :1]).all()
    assert m["unlikeliness/penalty_mean"] == pytest.approx((0.1875 + 0.0625) / 4)
    # the rarest correct sample now has the largest advantage, the most likely correct one the smallest
    assert adv[3, 0] > adv[1, 0] > adv[0, 0] > adv[2, 0]


def test_beta_zero_is_grpo_exactly():
    gen = torch.Generator().manual_seed(1)
    r = (torch.rand(12, generator=gen) > 0.5).float()
    ids = torch.tensor([2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])
    mask = (torch.rand(12, 5, generator=gen) > 0.2).float()
    logp = -torch.rand(12, 5, generator=gen)
    adv, m = U(r, ids, mask, old_logprobs=logp, beta_rank=0.0)
    ref, m_ref = GRPO(r, ids, mask)
    assert torch.equal(adv, ref) and m["frac_reward_zero_std"] == m_ref["frac_reward_zero_std"]


def test_matches_the_independent_reference_on_several_unsorted_groups():
    gen = torch.Generator().manual_seed(2)
    ids = torch.tensor([0, 1, 0, 2, 1, 0, 1, 2, 2, 0, 1, 3])  # group 3 is a singleton
    r = (torch.rand(12, generator=gen) > 0.4).float()
    means = (-torch.rand(12, generator=gen, dtype=torch.float64)).tolist()
    for beta in (0.25, 0.5, 1.0):
        adv, _ = U(r, ids, torch.ones(12, 2), old_logprobs=_logp_rows(means, 2), beta_rank=beta)
        expected = _reference(r.tolist(), ids.tolist(), means, beta)
        assert torch.allclose(adv[:, 0].double(), expected, atol=1e-5)


def test_the_likelihood_is_the_mean_over_valid_tokens_only():
    # padding holds junk log-probs (even -inf); the valid tokens decide the order
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)
    logp = torch.tensor([[-0.2, -0.4, float("-inf")], [-0.1, 5.0, 5.0], [-1.0, -1.0, -1.0]])
    adv, _ = U(torch.ones(3), torch.zeros(3, dtype=torch.long), mask, old_logprobs=logp, beta_rank=0.3)
    # means [-0.3, -0.1, -1.0] -> ranks [1, 2, 0] -> R~ = [0.9, 0.8, 1.0]
    expected = _reference([1.0, 1.0, 1.0], [0, 0, 0], [-0.3, -0.1, -1.0], 0.3)
    assert torch.allclose(adv[:, 0].double(), expected, atol=1e-5)
    assert (adv[mask == 0] == 0).all()


def test_ties_are_broken_by_row_order():
    ranks, _ = likelihood_ranks(torch.tensor([-0.5, -0.5, -0.2, -0.5]), torch.zeros(4, dtype=torch.long))
    assert ranks.tolist() == [0, 1, 3, 2]


def test_equal_zero_rewards_give_zero_and_an_all_correct_group_is_spread_by_rank():
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    r = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    logp = _logp_rows([-0.1, -0.2, -0.3, -0.1, -0.2, -0.3])
    adv, m = U(r, ids, torch.ones(6, 3), old_logprobs=logp)
    assert (adv[:3] == 0).all()  # R~ = 0 whatever the ranks
    # as in the official code (the paper drops such groups with a filter): the most likely is pushed down
    assert adv[3, 0] < adv[4, 0] < adv[5, 0] and adv[3, 0] < 0 < adv[5, 0]
    assert m["frac_reward_zero_std"] == pytest.approx(0.5)


def test_declares_old_logprobs_and_refuses_bad_inputs():
    assert needed_inputs(U) == ("old_logprobs",) and is_group_relative(U)
    ids, mask = torch.zeros(2, dtype=torch.long), torch.ones(2, 3)
    with pytest.raises(ValueError, match="old_logprobs must have the shape of response_mask"):
        U(torch.ones(2), ids, mask, old_logprobs=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="old_logprobs must be finite on valid tokens"):
        U(torch.ones(2), ids, mask, old_logprobs=torch.tensor([[0.0, float("nan"), 0.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="rewards must be 1-D"):
        U(torch.ones(2, 1), ids, mask, old_logprobs=torch.zeros(2, 3))
    adv, m = U(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, 3), old_logprobs=torch.zeros(0, 3))
    assert adv.shape == (0, 3) and m["unlikeliness/penalty_mean"] == 0.0

def test_recipe_runs_two_steps_through_the_cli(tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = main(["train", "unlikeliness", f"run_dir={run_dir}", "train.steps=2", "train.prompts_per_step=4",
               "eval.size=8", "eval.every=0", "checkpoint.every=0", "log.progress=false", "threads=1"])
    assert rc == 0, capsys.readouterr().err
    steps = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert not {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
        assert r["nonfinite_steps"] == 0 and r["unlikeliness/penalty_mean"] >= 0 and r["actor/kl_coef"] == 0.1
