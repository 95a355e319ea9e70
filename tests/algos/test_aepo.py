"""AEPO (arXiv 2510.14545): stop-gradient clipping and the entropy-aware advantage, against the
formulas of policy.md §14 and the official code's conventions (dual clip c = 3, unbiased entropy std)."""

from __future__ import annotations

import math

import pytest
import torch

from rlfold.algos import POLICY_LOSSES, SELECTIONS
from rlfold.algos.aepo import entropy_zscore
from rlfold.algos.selection import SelectionInput

F64 = torch.float64
ppo_clip = POLICY_LOSSES.get("ppo_clip")
aepo_clip = POLICY_LOSSES.get("aepo_clip")
entropy_advantage = SELECTIONS.get("aepo_entropy_advantage")
CLIPS = {"clip_low": 0.2, "clip_high": 0.28, "clip_c": 3.0}


def _random(seed: int, n: int = 6, r: int = 9) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, r, generator=g, dtype=F64) - 1.0
    old = base + 0.5 * torch.randn(n, r, generator=g, dtype=F64)  # many ratios outside [0.8, 1.28]
    adv = torch.randn(n, r, generator=g, dtype=F64)
    mask = (torch.rand(n, r, generator=g) > 0.2).to(F64)
    return base, old, adv, mask


def _loss_and_grad(fn, base, old, adv, mask, **kw):
    logp = base.clone().requires_grad_(True)
    loss, metrics = fn(logp, old, adv, mask, **kw)
    loss.sum().backward()
    return loss.detach(), logp.grad, metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_equals_ppo_clip_and_gradient_differs_only_on_clipped_high_positive_tokens(seed: int) -> None:
    base, old, adv, mask = _random(seed)
    ref_loss, ref_grad, ref_m = _loss_and_grad(ppo_clip, base, old, adv, mask, **CLIPS)
    loss, grad, m = _loss_and_grad(aepo_clip, base, old, adv, mask, **CLIPS)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-15)
    ratio = torch.exp(base - old)
    high = (adv > 0) & (ratio > 1 + CLIPS["clip_high"]) & mask.bool()
    assert high.sum() >= 3 and (~high & mask.bool()).sum() >= 10  # both kinds of token are exercised
    # clipped-high, A > 0: d l / d logp = -A (1 + eps_h)   (PPO: 0)
    torch.testing.assert_close(grad[high], -adv[high] * (1 + CLIPS["clip_high"]))
    assert torch.all(ref_grad[high] == 0)
    # everywhere else (masked tokens included) the gradient is ppo_clip's
    torch.testing.assert_close(grad[~high], ref_grad[~high], rtol=0, atol=1e-15)
    for key in ("pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"):
        assert m[key].item() == pytest.approx(ref_m[key].item())
    assert m["pg_clipfrac_high_grad"].item() == pytest.approx(float(high.sum() / mask.sum()))


def test_one_token_by_hand() -> None:
    # r = 1.5, A = 2, eps_h = 0.2: value -A (1 + eps_h) = -2.4 (as PPO), gradient -2.4 (PPO 0).
    logp = torch.tensor([[math.log(1.5)]], dtype=F64, requires_grad=True)
    zeros, one = torch.zeros(1, 1, dtype=F64), torch.ones(1, 1, dtype=F64)
    loss, _ = aepo_clip(logp, zeros, 2 * one, one)
    loss.sum().backward()
    assert loss.item() == pytest.approx(-2.4) and logp.grad.item() == pytest.approx(-2.4)
    # A < 0 and r = 5 > c = 3: the dual clip bounds the loss at -A c = 3 (constant, zero gradient).
    logp = torch.tensor([[math.log(5.0)]], dtype=F64, requires_grad=True)
    loss, m = aepo_clip(logp, zeros, -one, one)
    loss.sum().backward()
    assert loss.item() == pytest.approx(3.0) and logp.grad.item() == 0.0 and m["pg_clipfrac_lower"].item() == 1.0
    # A < 0, r = 0.5 < 1 - eps_low: the lower side is unchanged (clipped constant, zero gradient).
    logp = torch.tensor([[math.log(0.5)]], dtype=F64, requires_grad=True)
    loss, _ = aepo_clip(logp, zeros, -one, one)
    loss.sum().backward()
    assert loss.item() == pytest.approx(0.8) and logp.grad.item() == 0.0


@pytest.mark.parametrize("seed", [3, 4])
def test_flag_off_is_vanilla_dual_clip_ppo(seed: int) -> None:
    base, old, adv, mask = _random(seed)
    ref = _loss_and_grad(ppo_clip, base, old, adv, mask, **CLIPS)
    off = _loss_and_grad(aepo_clip, base, old, adv, mask, stop_gradient_clip=False, **CLIPS)
    torch.testing.assert_close(off[0], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(off[1], ref[1], rtol=0, atol=0)
    # the default dual clip is the official code's c = 3
    default = _loss_and_grad(aepo_clip, base, old, adv, mask, clip_low=0.2, clip_high=0.28, stop_gradient_clip=False)
    torch.testing.assert_close(default[0], ref[0], rtol=0, atol=0)
    # no dual clip: ppo_clip without it
    none = _loss_and_grad(aepo_clip, base, old, adv, mask, clip_low=0.2, clip_high=0.28, clip_c=None)
    plain = _loss_and_grad(ppo_clip, base, old, adv, mask, clip_low=0.2, clip_high=0.28)
    torch.testing.assert_close(none[0], plain[0], rtol=0, atol=1e-15)


def test_both_flags_off_is_vanilla_dual_clip_ppo_through_the_weights() -> None:
    base, old, adv, mask = _random(5)
    ent = torch.rand(base.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    sel = entropy_advantage(_inp(adv, mask, ent), coef=0.0)
    assert torch.equal(sel.token_weights, mask.to(sel.token_weights.dtype))
    loss, _ = aepo_clip(base, old, adv, mask, stop_gradient_clip=False, **CLIPS)
    ref, _ = ppo_clip(base, old, adv, mask, **CLIPS)
    torch.testing.assert_close(loss * sel.token_weights, ref, rtol=0, atol=0)


def test_masked_tokens_give_zero_loss_and_gradient_and_bad_options_are_refused() -> None:
    base, old, adv, mask = _random(6)
    loss, grad, _ = _loss_and_grad(aepo_clip, base, old, adv, mask, **CLIPS)
    assert torch.all(loss[mask == 0] == 0) and torch.all(grad[mask == 0] == 0)
    with pytest.raises(ValueError, match="clip_c"):
        aepo_clip(base, old, adv, mask, clip_c=1.0)
    with pytest.raises(ValueError, match="advantages"):
        aepo_clip(base, old, adv[:, :2], mask)


# ------------------------------------------------------------------------------- entropy-aware advantage


def _inp(adv: torch.Tensor, mask: torch.Tensor, entropy: torch.Tensor | None) -> SelectionInput:
    n = adv.shape[0]
    return SelectionInput(rewards=torch.zeros(n), group_ids=torch.zeros(n, dtype=torch.long), response_mask=mask,
                          advantages=adv, truncated=torch.zeros(n, dtype=torch.bool), old_logprobs=torch.zeros_like(adv),
                          behaviour_logprobs=torch.zeros_like(adv), entropy=entropy)


def test_worked_example_z_plus_one_scales_by_1_2_and_z_zero_keeps_it() -> None:
    # valid entropies 1, 2, 3 (mean 2, unbiased std 1): z = -1, 0, +1; the padded token is ignored
    ent = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    sel = entropy_advantage(_inp(torch.ones(1, 4), mask, ent))
    torch.testing.assert_close(sel.token_weights, torch.tensor([[0.8, 1.0, 1.2, 0.0]]))
    assert sel.token_mask is None and sel.rows is None
    assert sel.metrics["selection/aepo_entropy_mean"] == pytest.approx(2.0)
    assert sel.metrics["selection/aepo_entropy_std"] == pytest.approx(1.0)
    assert sel.metrics["selection/aepo_weight_mean"] == pytest.approx(1.0)
    assert sel.metrics["selection/aepo_floor_frac"] == 0.0


def test_statistics_run_over_the_whole_batch_of_valid_tokens() -> None:
    g = torch.Generator().manual_seed(7)
    ent = torch.rand(5, 7, generator=g, dtype=F64) * 3
    mask = (torch.rand(5, 7, generator=g) > 0.3).to(F64)
    vals = ent[mask.bool()]
    z = (ent - vals.mean()) / vals.std()  # torch.std: unbiased, as the official code
    torch.testing.assert_close(entropy_zscore(ent, mask)[mask.bool()], z[mask.bool()])
    sel = entropy_advantage(_inp(torch.ones(5, 7, dtype=F64), mask, ent), coef=0.3)
    torch.testing.assert_close(sel.token_weights, torch.where(mask.bool(), 1 + 0.3 * z, torch.zeros_like(z)))


def test_weights_equal_scaling_the_advantage_of_homogeneous_per_token_losses() -> None:
    base, old, adv, mask = _random(8)
    ent = torch.rand(base.shape, generator=torch.Generator().manual_seed(8), dtype=F64) * 2
    w = entropy_advantage(_inp(adv, mask, ent)).token_weights
    assert torch.all(w[mask.bool()] > 0)
    for name in ("ppo_clip", "aepo_clip", "cispo", "reinforce", "sapo", "gspo_token"):
        fn = POLICY_LOSSES.get(name)
        weighted = _loss_and_grad(fn, base, old, adv, mask)
        scaled = _loss_and_grad(fn, base, old, adv * w, mask)
        torch.testing.assert_close(weighted[0] * w, scaled[0], msg=name)
        torch.testing.assert_close(weighted[1] * w, scaled[1], msg=name)  # d(w l)/dlogp = w dl/dlogp


def test_factor_below_zero_is_floored_not_flipped() -> None:
    # one extreme low-entropy outlier set: entropies 10 x 9 and 0 -> z of the 0 is about -2.85;
    # with coef 0.5 the raw factor is 1 - 1.42 < 0, clamped at the floor (the sign of A is kept)
    ent = torch.tensor([[10.0] * 9 + [0.0]])
    mask = torch.ones(1, 10)
    sel = entropy_advantage(_inp(torch.ones(1, 10), mask, ent), coef=0.5)
    assert sel.token_weights[0, -1].item() == pytest.approx(0.01)
    assert sel.metrics["selection/aepo_floor_frac"] == pytest.approx(0.1)
    dropped = entropy_advantage(_inp(torch.ones(1, 10), mask, ent), coef=0.5, floor=0.0)
    assert dropped.token_weights[0, -1].item() == 0.0
    assert torch.all(dropped.token_weights[0, :-1] > 1)


def test_constant_entropy_and_empty_batches_keep_the_advantage() -> None:
    ones = torch.ones(2, 3)
    sel = entropy_advantage(_inp(ones, ones, torch.full((2, 3), 0.7)))
    assert torch.equal(sel.token_weights, ones)  # std 0 counts as 1: z = 0
    one_token = torch.tensor([[1.0, 0, 0], [0, 0, 0]])
    assert torch.equal(entropy_advantage(_inp(ones, one_token, torch.rand(2, 3))).token_weights, one_token)
    empty = entropy_advantage(_inp(ones, torch.zeros(2, 3), torch.rand(2, 3)))
    assert torch.equal(empty.token_weights, torch.zeros(2, 3)) and empty.metrics["selection/aepo_weight_mean"] == 0.0


def test_entropy_is_required_and_must_be_finite() -> None:
    ones = torch.ones(1, 3)
    with pytest.raises(ValueError, match="entropy"):
        entropy_advantage(_inp(ones, ones, None))
    with pytest.raises(ValueError, match="non-finite"):
        entropy_advantage(_inp(ones, ones, torch.tensor([[0.1, float("nan"), 0.2]])))
