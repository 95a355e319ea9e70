"""ACE (Overconfident Errors Need Stronger Correction, arXiv 2602.21420): confidence-scaled negative advantages."""

from __future__ import annotations

import json
import math

import pytest
import torch

import rlfold.algos.ace  # noqa: F401  (registers the ace advantage)
from rlfold.algos import ADVANTAGES
from rlfold.algos.ace import ace_factor, confidence_shift
from rlfold.cli import main
from rlfold.core.options import is_group_relative
from rlfold.core.registry import needed_inputs
from rlfold.trainers.inputs import INPUTS

ACE = ADVANTAGES.get("ace")
GRPO = ADVANTAGES.get("grpo")
MODULATIONS = ("relu", "tanh", "softplus")


def _logprobs_with_shift(c, width=3, valid=2):
    """(old, ref, mask): ``valid`` tokens per row whose old - ref sums to c_i; padding holds junk (-inf, 9)."""
    n = len(c)
    mask = torch.zeros(n, width)
    mask[:, :valid] = 1
    old = torch.full((n, width), float("-inf"))
    old[:, :valid] = torch.tensor([-1.0, -2.0][:valid] + [-0.5] * max(valid - 2, 0))
    ref = torch.full((n, width), 9.0)
    per_token = torch.tensor(c, dtype=torch.float32)[:, None] / valid
    ref[:, :valid] = old[:, :valid] - per_token
    return old, ref, mask


def _batch(seed, n=12, width=5):
    gen = torch.Generator().manual_seed(seed)
    r = (torch.rand(n, generator=gen) > 0.5).float()
    ids = torch.arange(n // 4).repeat_interleave(4)[torch.randperm(n, generator=gen)]
    mask = (torch.rand(n, width, generator=gen) > 0.2).float()
    mask[:, 0] = 1
    old = -torch.rand(n, width, generator=gen) * 2
    ref = -torch.rand(n, width, generator=gen) * 2
    return r, ids, mask, old, ref


# ----- hand numbers ------------------------------------------------------------------------


def test_hand_numbers_for_every_modulation():
    # one group of 4, R = [1, 0, 0, 0]: mean 0.25, unbiased std 0.5, so with eps = 0 GRPO gives
    # A = [1.5, -0.5, -0.5, -0.5]; confidence shifts c = [2, 1.5, -1, 0]
    c = [2.0, 1.5, -1.0, 0.0]
    old, ref, mask = _logprobs_with_shift(c)
    r, ids = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.zeros(4, dtype=torch.long)
    base, _ = GRPO(r, ids, mask, eps=0.0)
    assert base[:, 0].tolist() == [1.5, -0.5, -0.5, -0.5]

    def run(**kw):
        adv, m = ACE(r, ids, mask, old_logprobs=old, ref_logprobs=ref, eps=0.0, **kw)
        assert (adv[mask == 0] == 0).all() and (adv == adv[:, :1] * mask).all()
        return adv[:, 0].tolist(), m

    got, m = run()  # relu, alpha 1: row 1 gets -0.5 (1 + 1.5); c <= 0 rows unchanged
    assert got == pytest.approx([1.5, -1.25, -0.5, -0.5], abs=1e-6)
    assert m["ace/c_mean"] == pytest.approx(0.625, abs=1e-6)
    assert m["ace/frac_overconfident_errors"] == pytest.approx(1 / 3)
    assert m["ace/factor_mean"] == pytest.approx((2.5 + 1 + 1) / 3, abs=1e-6)
    assert m["ace/factor_max"] == pytest.approx(2.5, abs=1e-6)
    assert m["frac_reward_zero_std"] == 0.0

    got, _ = run(alpha=0.5)
    assert got == pytest.approx([1.5, -0.875, -0.5, -0.5], abs=1e-6)

    got, _ = run(modulation="tanh", alpha=1.0, tau=0.5)  # -0.5 (1 + tanh(3))
    assert got == pytest.approx([1.5, -0.5 * (1 + math.tanh(3.0)), -0.5, -0.5], abs=1e-6)

    got, _ = run(modulation="softplus", alpha=2.0, tau=1.0)  # -0.5 (1 + 2 log(1 + e^c)), every error row
    sp = [-0.5 * (1 + 2 * math.log1p(math.exp(x))) for x in c[1:]]
    assert got == pytest.approx([1.5, *sp], abs=1e-6)
    assert sp[2] == pytest.approx(-0.5 * (1 + 2 * math.log(2)))  # c = 0 is raised by alpha tau log 2


def test_the_confidence_shift_is_the_sequence_log_ratio_over_valid_tokens():
    old = torch.tensor([[-0.1, -0.2, float("-inf")], [-1.0, float("nan"), 7.0], [-0.3, -0.3, -0.3]])
    ref = torch.tensor([[-0.4, -0.6, 3.0], [-0.5, 2.0, float("inf")], [-0.3, -0.3, -0.3]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float32)
    c = confidence_shift(old, ref, mask)
    assert c.dtype == torch.float64
    assert c.tolist() == pytest.approx([0.3 + 0.4, -0.5, 0.0])  # a row with no valid token has c = 0


def test_factor_formulas_and_bounds():
    c = torch.linspace(-20, 20, 401, dtype=torch.float64)
    relu = ace_factor(c, alpha=0.7, modulation="relu", tau=1.0)
    tanh = ace_factor(c, alpha=0.7, modulation="tanh", tau=2.0)
    soft = ace_factor(c, alpha=0.7, modulation="softplus", tau=0.5)
    assert torch.allclose(relu, 1 + 0.7 * c.clamp(min=0))
    assert torch.allclose(tanh, 1 + 0.7 * torch.tanh(c.clamp(min=0) / 2))
    assert torch.allclose(soft, 1 + 0.7 * 0.5 * torch.log1p(torch.exp(c / 0.5)))
    for f in (relu, tanh, soft):
        assert (f >= 1).all() and (f[1:] >= f[:-1]).all()  # never shrinks a penalty, non-decreasing in c
    assert (relu[c <= 0] == 1).all() and (tanh[c <= 0] == 1).all()
    assert tanh.max() <= 1.7 and (soft[c >= -10] > 1).all()  # softplus is above 1 (up to rounding far below 0)
    # softplus tends to relu as tau -> 0
    assert torch.allclose(ace_factor(c, alpha=0.7, modulation="softplus", tau=1e-3), relu, atol=1e-3)


# ----- invariants -----------------------------------------------------------------------


@pytest.mark.parametrize("modulation", MODULATIONS)
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_alpha_zero_is_grpo_exactly(modulation, scale):
    r, ids, mask, old, ref = _batch(1)
    adv, m = ACE(r, ids, mask, old_logprobs=old, ref_logprobs=ref, alpha=0.0, modulation=modulation, scale=scale)
    base, m_base = GRPO(r, ids, mask, scale=scale)
    assert torch.equal(adv, base) and adv.dtype == base.dtype
    assert m["frac_reward_zero_std"] == m_base["frac_reward_zero_std"] and m["ace/factor_max"] == 1.0


def test_zero_confidence_shift_is_grpo_for_relu_and_tanh():
    r, ids, mask, old, _ = _batch(2)
    base, _ = GRPO(r, ids, mask)
    for modulation in ("relu", "tanh"):
        adv, _ = ACE(r, ids, mask, old_logprobs=old, ref_logprobs=old.clone(), alpha=3.0, modulation=modulation)
        assert torch.equal(adv, base)


@pytest.mark.parametrize("modulation", MODULATIONS)
def test_positive_untouched_negative_amplified_sign_kept(modulation):
    for seed in range(5):
        r, ids, mask, old, ref = _batch(10 + seed)
        base, _ = GRPO(r, ids, mask)
        adv, _ = ACE(r, ids, mask, old_logprobs=old, ref_logprobs=ref, alpha=1.5, modulation=modulation, tau=0.7)
        c = confidence_shift(old, ref, mask)[:, None].expand_as(base)
        assert torch.equal(adv[base >= 0], base[base >= 0])  # positive, zero and masked tokens untouched
        neg = base < 0
        assert (adv[neg] < 0).all() and (adv[neg].abs() >= base[neg].abs()).all()
        if modulation != "softplus":  # softplus raises every error a little (see the docstring)
            keep = neg & (c <= 0)
            assert torch.equal(adv[keep], base[keep])
            assert (adv[neg & (c > 0)].abs() > base[neg & (c > 0)].abs()).all()


@pytest.mark.parametrize("modulation", MODULATIONS)
def test_penalty_is_non_decreasing_in_the_confidence_shift_of_its_row_only(modulation):
    c = [0.0, 0.0, 0.0, 0.0]
    r, ids = torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long)
    previous = None
    for shift in (-3.0, -1.0, -0.1, 0.0, 0.2, 1.0, 4.0):
        c[1] = shift
        old, ref, mask = _logprobs_with_shift(c)
        adv, _ = ACE(r, ids, mask, old_logprobs=old, ref_logprobs=ref, modulation=modulation, alpha=0.8)
        row = adv[:, 0]
        assert row[1] < 0
        if previous is not None:
            assert row[1].abs() >= previous[1].abs()
            assert torch.equal(row[[0, 2, 3]], previous[[0, 2, 3]])  # the other rows do not move
        previous = row


@pytest.mark.parametrize("modulation", MODULATIONS)
def test_equal_rewards_give_zero_advantage_whatever_the_confidence(modulation):
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    r = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    old, ref, mask = _logprobs_with_shift([5.0, 2.0, -1.0, 3.0, 0.0, 8.0])
    adv, m = ACE(r, ids, mask, old_logprobs=old, ref_logprobs=ref, alpha=10.0, modulation=modulation)
    assert (adv == 0).all()
    assert m["frac_reward_zero_std"] == 1.0 and m["ace/factor_mean"] == 1.0
    assert m["ace/frac_overconfident_errors"] == 0.0


def test_the_overconfidence_metric_ignores_rounding_noise():
    # policy = reference (the first step): c is noise around 0, which the metric must not count
    r, ids = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.zeros(4, dtype=torch.long)
    old, ref, mask = _logprobs_with_shift([0.0, 2e-6, -1e-6, 0.5])
    _, m = ACE(r, ids, mask, old_logprobs=old, ref_logprobs=ref)
    assert m["ace/frac_overconfident_errors"] == pytest.approx(1 / 3)  # only c = 0.5 of the three errors


def test_rows_are_independent_so_permuting_the_batch_permutes_the_advantages():
    # c_i is per row and GRPO's statistics are per group: the part runs on the whole batch in stage 4,
    # and any order of the rows (or of the groups) gives the same per-row advantages
    r, ids, mask, old, ref = _batch(4)
    adv, _ = ACE(r, ids, mask, old_logprobs=old, ref_logprobs=ref)
    perm = torch.randperm(r.numel(), generator=torch.Generator().manual_seed(0))
    adv_p, _ = ACE(r[perm], ids[perm], mask[perm], old_logprobs=old[perm], ref_logprobs=ref[perm])
    assert torch.allclose(adv_p, adv[perm], atol=1e-6)


def test_logprobs_gradients_never_reach_the_advantage():
    r, ids, mask, old, ref = _batch(5)
    old, ref = old.requires_grad_(), ref.requires_grad_()
    adv, _ = ACE(r, ids, mask, old_logprobs=old, ref_logprobs=ref)
    assert not adv.requires_grad


# ----- declarations, shapes and bad inputs ----------------------------------------------


def test_declares_its_inputs_and_is_group_relative():
    assert needed_inputs(ACE) == ("old_logprobs", "ref_logprobs") and is_group_relative(ACE)
    assert ACE.__doc__.splitlines()[0].endswith("(Xu et al. 2026, arXiv 2602.21420).")


def test_refuses_bad_shapes_values_and_options():
    ids, mask = torch.zeros(2, dtype=torch.long), torch.ones(2, 3)
    ok = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="old_logprobs must have the shape of response_mask"):
        ACE(torch.ones(2), ids, mask, old_logprobs=torch.zeros(2, 4), ref_logprobs=ok)
    with pytest.raises(ValueError, match="ref_logprobs must have the shape of response_mask"):
        ACE(torch.ones(2), ids, mask, old_logprobs=ok, ref_logprobs=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="ref_logprobs must be finite on valid tokens; non-finite in rows \\[1\\]"):
        ACE(torch.ones(2), ids, mask, old_logprobs=ok, ref_logprobs=torch.tensor([[0.0] * 3, [0.0, float("-inf"), 0]]))
    with pytest.raises(ValueError, match="old_logprobs must be finite on valid tokens"):
        ACE(torch.ones(2), ids, mask, old_logprobs=torch.full((2, 3), float("nan")), ref_logprobs=ok)
    with pytest.raises(ValueError, match="rewards must be 1-D"):
        ACE(torch.ones(2, 1), ids, mask, old_logprobs=ok, ref_logprobs=ok)
    with pytest.raises(ValueError, match="response_mask must be \\[N, R\\]"):
        ACE(torch.ones(2), ids, torch.ones(3, 3), old_logprobs=ok, ref_logprobs=ok)
    with pytest.raises(ValueError, match="alpha must be finite and >= 0"):
        ACE(torch.ones(2), ids, mask, old_logprobs=ok, ref_logprobs=ok, alpha=-1.0)
    with pytest.raises(ValueError, match="tau must be finite and > 0"):
        ACE(torch.ones(2), ids, mask, old_logprobs=ok, ref_logprobs=ok, tau=0.0)
    with pytest.raises(ValueError, match="modulation must be one of"):
        ACE(torch.ones(2), ids, mask, old_logprobs=ok, ref_logprobs=ok, modulation="exp")


def test_empty_batch():
    z = torch.zeros(0, 3)
    adv, m = ACE(torch.zeros(0), torch.zeros(0, dtype=torch.long), z, old_logprobs=z, ref_logprobs=z)
    assert adv.shape == (0, 3) and m["ace/factor_mean"] == 1.0 and m["ace/c_mean"] == 0.0


# ----- through the CLI ------------------------------------------------------------------


def _run(tmp_path, *overrides):
    run_dir = tmp_path / "run"
    rc = main(["train", "ace", f"run_dir={run_dir}", "train.steps=2", "train.prompts_per_step=4", "eval.size=8",
               "eval.every=0", "checkpoint.every=0", "log.progress=false", "threads=1", *overrides])
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return rc, [r for r in rows if r["step"] > 0]


def _finite(r):
    return not {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}


@pytest.fixture
def shifted_ref_input():
    """A stand-in ``ref_logprobs`` input, old log-probs minus 0.25 per token (so c = 0.25 x length > 0 on
    every row); it replaces the trainer's provider for the test, restored afterwards."""
    saved = INPUTS.unregister("ref_logprobs") if "ref_logprobs" in INPUTS else None

    @INPUTS.register("ref_logprobs")
    def _stand_in(ctx):
        return ctx.old_logprobs - 0.25

    yield
    INPUTS.unregister("ref_logprobs")
    if saved is not None:
        INPUTS.register("ref_logprobs")(saved)


def test_the_part_trains_through_the_cli_with_a_stand_in_reference(tmp_path, capsys, shifted_ref_input):
    rc, steps = _run(tmp_path)
    assert rc == 0, capsys.readouterr().err
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert _finite(r) and r["nonfinite_steps"] == 0
        assert r["ace/c_mean"] > 0
        if r["ace/factor_max"] > 1:  # some error row: every one is overconfident here
            assert r["ace/frac_overconfident_errors"] == 1.0 and r["ace/factor_mean"] > 1


@pytest.mark.skipif("ref_logprobs" not in INPUTS, reason="the trainer input ref_logprobs has not landed yet")
def test_recipe_runs_two_steps_through_the_cli(tmp_path, capsys):
    rc, steps = _run(tmp_path)
    assert rc == 0, capsys.readouterr().err
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert _finite(r) and r["nonfinite_steps"] == 0 and "ace/c_mean" in r
        assert "actor/reward_kl" in r  # the reference model was built for the advantage (kl_coef is 0)
    assert abs(steps[0]["ace/c_mean"]) < 1e-3  # step 1: the policy is still the reference


def test_option_domains_are_validated_by_the_config(tmp_path, capsys):
    rc, _ = _run(tmp_path, "algo.advantage_kwargs.alpha=-0.5")
    assert rc != 0 and "alpha" in capsys.readouterr().err
    rc, _ = _run(tmp_path, "algo.advantage_kwargs.modulation=exp")
    assert rc != 0 and "modulation" in capsys.readouterr().err
    rc, _ = _run(tmp_path, "algo.advantage_kwargs.tau=0")
    assert rc != 0 and "tau" in capsys.readouterr().err
