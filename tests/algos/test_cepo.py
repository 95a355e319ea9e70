"""CEPO (arXiv 2605.19436): the token weights of policy.md §18 (e), the lambda schedule, sign preservation,
the reduction to GRPO, and weighting the ppo_clip loss = scaling its advantage."""

from __future__ import annotations

import math

import pytest
import torch

from rlfold.algos.aggregation import aggregate
from rlfold.algos.cepo import cepo, cepo_lambda, cepo_weights
from rlfold.algos.policy_losses import ppo_clip
from rlfold.algos.selection import SELECTIONS, SelectionInput
from rlfold.core.registry import needed_inputs


def make_input(adv, mask=None):
    adv = torch.as_tensor(adv, dtype=torch.float32)
    n, r = adv.shape
    mask = torch.ones(n, r) if mask is None else torch.as_tensor(mask, dtype=torch.float32)
    return SelectionInput(rewards=adv[:, 0].clone(), group_ids=torch.zeros(n, dtype=torch.long), response_mask=mask,
                          advantages=adv * mask, truncated=torch.zeros(n, dtype=torch.bool),
                          old_logprobs=torch.zeros(n, r), behaviour_logprobs=torch.zeros(n, r))


def steps(n, step):
    return torch.full((n,), float(step), dtype=torch.float64)


def test_registered_with_its_inputs():
    assert SELECTIONS.get("cepo") is cepo
    assert needed_inputs(cepo) == ("cepo_delta", "train_step")


# ----- policy.md §18 (e) ---------------------------------------------------------------------------------------
def test_worked_numbers_of_the_spec():
    """A=+1, Delta=0.3, lam=0.5, eps_w=0.2 => A_hat 1.1; A=-1, Delta=0.3 => A_hat -0.9."""
    inp = make_input([[1.0], [-1.0]])
    sel = cepo(inp, cepo_delta=torch.full((2, 1), 0.3), train_step=steps(2, 0), lambda0=0.5, warmup=25, eps_w=0.2)
    a_hat = inp.advantages * sel.token_weights
    assert a_hat[0, 0].item() == pytest.approx(1.1, abs=1e-6)
    assert a_hat[1, 0].item() == pytest.approx(-0.9, abs=1e-6)
    assert sel.metrics["selection/cepo_lambda"] == pytest.approx(0.5, abs=1e-12)
    assert sel.metrics["selection/cepo_weight_mean"] == pytest.approx(1.0, abs=1e-6)  # (1.1 + 0.9) / 2
    assert sel.metrics["selection/cepo_delta_abs_mean"] == pytest.approx(0.3, abs=1e-6)
    assert sel.token_mask is None and sel.rows is None


def test_unclipped_weight_is_the_exponential():
    # |Delta| small enough that exp(+-Delta) stays inside [0.8, 1.2]: 0.5 + 0.5 exp(0.1) and 0.5 + 0.5 exp(-0.1).
    w = cepo_weights(torch.tensor([[1.0, -1.0]]), torch.tensor([[0.1, 0.1]]), lam=0.5, eps_w=0.2)
    assert w[0, 0].item() == pytest.approx(0.5 + 0.5 * math.exp(0.1), abs=1e-6)
    assert w[0, 1].item() == pytest.approx(0.5 + 0.5 * math.exp(-0.1), abs=1e-6)


def test_sign_of_the_scaled_advantage_is_that_of_the_advantage():
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(64, 7, generator=g) * 3
    adv[::5] = 0.0
    delta = torch.randn(64, 7, generator=g) * 4
    for lam in (0.0, 0.3, 1.0):
        for eps in (0.0, 0.2, 0.9):
            w = cepo_weights(adv, delta, lam, eps)
            assert (w > 0).all()
            assert torch.equal(torch.sign(adv * w), torch.sign(adv))
            assert (w >= (1 - lam) + lam * (1 - eps) - 1e-6).all() and (w <= (1 - lam) + lam * (1 + eps) + 1e-6).all()


def test_evidence_for_the_correct_answer_raises_positive_and_lowers_negative_credit():
    w = cepo_weights(torch.tensor([[2.0, -2.0]]), torch.tensor([[0.05, 0.05]]), lam=0.5)
    assert w[0, 0] > 1 > w[0, 1]  # positive advantage: weight above 1; negative: |A_hat| shrinks


# ----- reduction to GRPO -------------------------------------------------------------------------------------
def _grpo_case():
    g = torch.Generator().manual_seed(1)
    n, r = 6, 5
    mask = torch.ones(n, r)
    mask[1, 3:] = 0
    mask[4, 1:] = 0
    adv = torch.randn(n, 1, generator=g).expand(n, r).clone()
    logp = torch.randn(n, r, generator=g) * 0.1 - 1.0
    old = logp + torch.randn(n, r, generator=g) * 0.3
    return adv, mask, logp, old


@pytest.mark.parametrize("case", ["lambda0=0", "past warmup", "delta=0"])
def test_neutral_settings_give_exactly_the_grpo_loss(case):
    adv, mask, logp, old = _grpo_case()
    inp = make_input(adv, mask)
    delta = torch.randn(adv.shape, generator=torch.Generator().manual_seed(2)) * mask
    kw = {"lambda0": 0.5, "warmup": 25}
    step = 0
    if case == "lambda0=0":
        kw["lambda0"] = 0.0
    elif case == "past warmup":
        step = 25
    else:
        delta = torch.zeros_like(delta)
    sel = cepo(inp, cepo_delta=delta, train_step=steps(adv.shape[0], step), **kw)
    assert torch.equal(sel.token_weights, torch.ones_like(sel.token_weights))
    pg, _ = ppo_clip(logp, old, inp.advantages, mask)
    weighted = aggregate(pg * sel.token_weights, mask, "seq-mean-token-mean")
    assert torch.equal(weighted, aggregate(pg, mask, "seq-mean-token-mean"))


def test_padding_gets_weight_one_whatever_the_delta_there():
    inp = make_input([[1.0, 1.0, 1.0]], mask=[[1, 1, 0]])
    sel = cepo(inp, cepo_delta=torch.tensor([[0.3, -0.3, 5.0]]), train_step=steps(1, 0))
    assert sel.token_weights[0, 2].item() == 1.0
    assert sel.token_weights[0, 0].item() == pytest.approx(1.1, abs=1e-6)
    assert sel.token_weights[0, 1].item() == pytest.approx(0.9, abs=1e-6)
    assert sel.metrics["selection/cepo_delta_abs_mean"] == pytest.approx(0.3, abs=1e-6)


# ----- weighting the loss = scaling the advantage ------------------------------------------------------------
@pytest.mark.parametrize("clip_c", [None, 3.0])
def test_weighted_ppo_clip_loss_equals_ppo_clip_with_the_scaled_advantage(clip_c):
    g = torch.Generator().manual_seed(3)
    n, r = 16, 6
    adv = torch.randn(n, 1, generator=g).expand(n, r).clone()
    mask = (torch.rand(n, r, generator=g) > 0.2).float()
    logp = torch.randn(n, r, generator=g) * 0.1 - 1.0
    old = logp + torch.randn(n, r, generator=g) * 0.5  # ratios well outside [0.8, 1.28]: both clips active
    delta = torch.randn(n, r, generator=g)
    w = cepo(make_input(adv, mask), cepo_delta=delta, train_step=steps(n, 3)).token_weights
    loss_w, _ = ppo_clip(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, clip_c=clip_c)
    loss_a, _ = ppo_clip(logp, old, adv * w, mask, clip_low=0.2, clip_high=0.28, clip_c=clip_c)
    assert torch.allclose(loss_w * w, loss_a, atol=1e-6, rtol=0)
    assert not torch.allclose(loss_w, loss_a, atol=1e-3)  # the weights do change the loss


# ----- the lambda schedule -----------------------------------------------------------------------------------
@pytest.mark.parametrize("step, lam", [(0, 0.5), (5, 0.4), (10, 0.3), (24, 0.02), (25, 0.0), (100, 0.0)])
def test_lambda_decays_linearly_to_zero(step, lam):
    assert cepo_lambda(step, 0.5, 25) == pytest.approx(lam, abs=1e-12)
    sel = cepo(make_input([[1.0]]), cepo_delta=torch.tensor([[0.3]]), train_step=steps(1, step))
    assert sel.metrics["selection/cepo_lambda"] == pytest.approx(lam, abs=1e-12)
    # A=+1, Delta=0.3: the clipped evidence is 1.2, so the weight is 1 + 0.2 lam
    assert sel.token_weights[0, 0].item() == pytest.approx(1 + 0.2 * lam, abs=1e-6)


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="warmup"):
        cepo_lambda(0, 0.5, 0)
    with pytest.raises(ValueError, match="eps_w"):
        cepo_weights(torch.ones(1, 1), torch.zeros(1, 1), 0.5, eps_w=1.0)
    with pytest.raises(ValueError, match="shape"):
        cepo(make_input([[1.0, 1.0]]), cepo_delta=torch.zeros(1, 3), train_step=steps(1, 0))
    with pytest.raises(ValueError, match="finite"):
        cepo(make_input([[1.0]]), cepo_delta=torch.tensor([[float("nan")]]), train_step=steps(1, 0))


def test_the_recipe_validates_the_part_options():
    import yaml

    from rlfold.cli import RECIPES_DIR
    from rlfold.core.config_loader import load_config
    from rlfold.core.errors import ConfigError

    recipe = RECIPES_DIR / "cepo.yaml"
    assert "2605.19436" in yaml.safe_load(recipe.read_text())["paper"]
    cfg = load_config(recipe, [])
    assert cfg.name == "cepo" and cfg.model.path == "tiny-arith" and cfg.task.levels == [2]
    spec = cfg.algo.selection[0]
    assert spec.name == "cepo" and spec.kwargs == {"lambda0": 0.5, "warmup": 25, "eps_w": 0.2}
    for bad in ("eps_w=1.5", "warmup=0", "lambda0=2.0", "hint=x"):
        with pytest.raises(ConfigError, match="cepo"):
            load_config(recipe, [f"algo.selection.0.kwargs.{bad}"])
