"""Clip-Cov and KL-Cov (arXiv 2505.22617) against policy.md §4: the worked covariance example, the
invariants of §4(e), and an independent reference of verl's compute_policy_loss_clip_cov /
compute_policy_loss_kl_cov (core_algos.py, 2026-01-29) written here from their definitions."""

from __future__ import annotations

import math

import pytest
import torch

import rlfold.algos.entropy_cov  # noqa: F401  (registers clip_cov / kl_cov until algos/__init__ imports it)
from rlfold.algos.entropy_cov import resolve_kl_cov_ratio, token_covariance
from rlfold.core.registry import POLICY_LOSSES

F64 = torch.float64
clip_cov = POLICY_LOSSES.get("clip_cov")
kl_cov = POLICY_LOSSES.get("kl_cov")


def _batch(seed: int, n: int = 8, r: int = 12, dtype: torch.dtype = F64) -> tuple[torch.Tensor, ...]:
    """A batch with a wide covariance spread (many tokens in (1, 5)) and ratios on both sides of the clip."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, r, generator=g, dtype=F64) * 4.0
    old = logp + 0.3 * torch.randn(n, r, generator=g, dtype=F64)
    adv = (2.0 * torch.randn(n, 1, generator=g, dtype=F64)).expand(n, r).clone()
    adv = adv + 0.3 * torch.randn(n, r, generator=g, dtype=F64)
    mask = (torch.rand(n, r, generator=g) > 0.25).to(F64)
    mask[0] = 0.0  # a fully masked row
    return logp.to(dtype), old.to(dtype), adv.to(dtype), mask.to(dtype)


def _token_mean(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (loss * mask).sum() / mask.sum()


# ---------------------------------------------------------------- independent references (verl semantics)

def _ref_masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (torch.where(mask.bool(), x, 0.0) * mask).sum() / (mask.sum() + 1e-8)


def _ref_clip_cov(old, logp, adv, mask, clip_low, clip_high, ratio_frac, lb, ub):
    """verl's Clip-Cov: scalar token-mean loss and the 0/1 correction matrix (draws from the global CPU RNG)."""
    rho = torch.exp(logp - old)
    l1, l2 = -adv * rho, -adv * torch.clamp(rho, 1 - clip_low, 1 + clip_high)
    already = (l2 > l1) & (mask > 0)
    cov = (adv - _ref_masked_mean(adv, mask)) * (logp - _ref_masked_mean(logp.detach(), mask))
    cov = cov.detach().clone()
    cov[mask == 0] = -math.inf
    cov[already] = -math.inf
    n_clip = max(int(ratio_frac * mask.sum().item()), 1)
    idx = torch.nonzero((cov < ub) & (cov > lb) & (mask > 0))
    corr = torch.ones_like(adv)
    if len(idx) > 0:
        idx = idx[torch.randperm(len(idx))[: min(n_clip, len(idx))]]
        corr[idx[:, 0], idx[:, 1]] = 0
    per_token = torch.maximum(l1, l2) * corr
    return _token_mean(per_token, mask), corr


def _ref_kl_cov(old, logp, adv, mask, frac, coef):
    """verl's KL-Cov: scalar token-mean loss and the selected flat indices."""
    delta = logp - old
    rho = torch.exp(delta)
    per_token = (-adv * rho).clone()
    with_kl = -adv * rho + coef * delta.abs()
    valid = mask > 0
    flat = torch.nonzero(valid.reshape(-1), as_tuple=True)[0]
    a, lp = adv[valid].detach().reshape(-1), logp[valid].detach().reshape(-1)
    chosen = torch.empty(0, dtype=torch.long)
    if len(a) > 0:
        cov = (a - a.mean()) * (lp - lp.mean())
        chosen = flat[torch.topk(cov, max(1, int(len(cov) * frac)), largest=True).indices]
        rows, cols = chosen // adv.shape[1], chosen % adv.shape[1]
        per_token[rows, cols] = with_kl[rows, cols]
    return _token_mean(per_token, mask), chosen


# ---------------------------------------------------------------- worked example (policy.md §4(e))

def test_worked_example_covariance_is_one_one() -> None:
    adv = torch.tensor([[1.0], [-1.0]], dtype=F64)
    logp = torch.tensor([[-0.1], [-2.1]], dtype=F64)
    mask = torch.ones_like(adv)
    torch.testing.assert_close(token_covariance(logp, adv, mask), torch.tensor([[1.0], [1.0]], dtype=F64))
    torch.testing.assert_close(token_covariance(logp, adv, mask, eps=1e-8), torch.tensor([[1.0], [1.0]], dtype=F64))
    # through the part (on-policy, nothing PPO-clipped): a band around 1 holds both tokens, ratio 1 detaches both
    loss, m = clip_cov(logp, logp, adv, mask, clip_cov_ratio=1.0, clip_cov_lb=0.99, clip_cov_ub=1.01)
    assert torch.equal(loss, torch.zeros_like(loss)) and float(m["clip_cov_frac"]) == 1.0
    # a band that excludes Cov = 1 detaches none: loss = -A r = -A
    loss, m = clip_cov(logp, logp, adv, mask, clip_cov_ratio=1.0, clip_cov_lb=1.01, clip_cov_ub=5.0)
    torch.testing.assert_close(loss, -adv)
    assert float(m["clip_cov_frac"]) == 0.0
    # default ratio: max(floor(2e-4 * 2), 1) = 1 token detached
    _, m = clip_cov(logp, logp, adv, mask, clip_cov_lb=0.99, clip_cov_ub=1.01)
    assert float(m["clip_cov_frac"]) == 0.5
    # masked tokens do not enter the means: padding a column of junk changes nothing
    pad_adv = torch.cat([adv, torch.full_like(adv, 7.0)], dim=1)
    pad_logp = torch.cat([logp, torch.full_like(logp, -9.0)], dim=1)
    pad_mask = torch.cat([mask, torch.zeros_like(mask)], dim=1)
    torch.testing.assert_close(token_covariance(pad_logp, pad_adv, pad_mask)[:, :1], torch.ones_like(adv))


# ---------------------------------------------------------------- invariants (policy.md §4(e))

@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("frac", [2e-4, 0.05, 0.3])
def test_clip_cov_zeroes_only_band_tokens_not_already_clipped_and_at_most_the_budget(seed: int, frac: float) -> None:
    logp, old, adv, mask = _batch(seed)
    torch.manual_seed(1000 + seed)
    loss, m = clip_cov(logp, old, adv, mask, clip_low=0.2, clip_high=0.2, clip_cov_ratio=frac)
    rho = torch.exp(logp - old)
    l1, l2 = -adv * rho, -adv * rho.clamp(0.8, 1.2)
    ppo = torch.maximum(l1, l2)
    valid = mask.bool()
    zeroed = valid & (loss == 0) & (ppo != 0)
    cov = token_covariance(logp, adv, mask, eps=1e-8)
    band = valid & (cov > 1.0) & (cov < 5.0) & ~(l2 > l1)
    n = int(mask.sum())
    budget = max(math.floor(frac * n), 1)
    assert band.sum() >= 3  # the batch exercises the band
    assert not (zeroed & ~band).any()  # outside (1, 5), or already clipped: never zeroed
    assert int(zeroed.sum()) == min(budget, int(band.sum())) <= budget
    # every other valid token keeps the clipped PPO loss exactly; masked tokens are 0
    torch.testing.assert_close(loss[valid & ~zeroed], ppo[valid & ~zeroed], rtol=0, atol=0)
    assert torch.all(loss[~valid] == 0)
    torch.testing.assert_close(m["clip_cov_frac"], zeroed.sum() / mask.sum())
    torch.testing.assert_close(m["pg_clipfrac"], ((l2 > l1) & valid).sum() / mask.sum())


@pytest.mark.parametrize("seed", range(4))
def test_kl_cov_with_zero_beta_is_the_unclipped_policy_gradient(seed: int) -> None:
    logp, old, adv, mask = _batch(seed)
    x = logp.clone().requires_grad_(True)
    loss, _ = kl_cov(x, old, adv, mask, kl_cov_ratio=0.3, ppo_kl_coef=0.0)
    expected = -adv * torch.exp(logp - old) * mask
    torch.testing.assert_close(loss.detach(), expected, rtol=0, atol=1e-15)
    loss.sum().backward()
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=1e-15)  # d(-A e^{x - old})/dx = -A r


@pytest.mark.parametrize("seed", range(4))
def test_kl_cov_penalises_exactly_the_top_covariance_tokens(seed: int) -> None:
    logp, old, adv, mask = _batch(seed)
    loss, m = kl_cov(logp, old, adv, mask, kl_cov_ratio=0.1, ppo_kl_coef=0.5)
    pg = -adv * torch.exp(logp - old)
    extra = (loss - pg) * mask
    chosen = extra.abs() > 0
    n = int(mask.sum())
    k = max(1, math.floor(0.1 * n))
    assert int(chosen.sum()) == k
    torch.testing.assert_close(extra[chosen], 0.5 * (logp - old).abs()[chosen])
    cov = token_covariance(logp, adv, mask)
    assert cov[chosen].min() >= cov[mask.bool() & ~chosen].max()
    torch.testing.assert_close(m["kl_cov_frac"], torch.tensor(k / n, dtype=F64))
    torch.testing.assert_close(m["ppo_kl_abs"], ((logp - old).abs() * mask).sum() / mask.sum())


# ---------------------------------------------------------------- equality with verl's formulas

@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("clips,frac", [((0.2, 0.2), 0.05), ((1.0, 1.0), 2e-4), ((0.2, 0.28), 0.2)])
def test_clip_cov_equals_verl_reference_under_the_same_torch_seed(dtype, seed, clips, frac) -> None:
    logp, old, adv, mask = _batch(seed, dtype=dtype)
    torch.manual_seed(seed)
    loss, _ = clip_cov(logp, old, adv, mask, clip_low=clips[0], clip_high=clips[1], clip_cov_ratio=frac)
    torch.manual_seed(seed)
    ref, corr = _ref_clip_cov(old, logp, adv, mask, clips[0], clips[1], frac, 1.0, 5.0)
    torch.testing.assert_close(_token_mean(loss, mask), ref, rtol=0, atol=1e-6)
    rho = torch.exp(logp - old)
    ppo = torch.maximum(-adv * rho, -adv * rho.clamp(1 - clips[0], 1 + clips[1]))
    zeroed = mask.bool() & (loss == 0) & (ppo != 0)
    assert torch.equal(zeroed, mask.bool() & (corr == 0))  # the same tokens, not only the same mean
    assert bool((corr == 0).any())


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("frac,coef", [(2e-4, 1.0), (0.05, 0.1), (0.3, 1.0)])
def test_kl_cov_equals_verl_reference(dtype, seed, frac, coef) -> None:
    logp, old, adv, mask = _batch(seed, dtype=dtype)
    loss, _ = kl_cov(logp, old, adv, mask, kl_cov_ratio=frac, ppo_kl_coef=coef)
    ref, _ = _ref_kl_cov(old, logp, adv, mask, frac, coef)
    torch.testing.assert_close(_token_mean(loss, mask), ref, rtol=0, atol=1e-6)
    # the official code's percentage reaches the same fraction
    by_percent, _ = kl_cov(logp, old, adv, mask, k_percent=frac * 100, ppo_kl_coef=coef)
    torch.testing.assert_close(_token_mean(by_percent, mask), ref, rtol=0, atol=1e-6)


def test_k_percent_is_a_percentage_and_defaults_are_verls() -> None:
    assert resolve_kl_cov_ratio(None, None) == 2e-4
    assert resolve_kl_cov_ratio(0.002, None) == 0.002
    assert resolve_kl_cov_ratio(None, 0.2) == pytest.approx(2e-3)
    logp, old, adv, mask = _batch(3)
    a, _ = kl_cov(logp, old, adv, mask, k_percent=20.0)
    b, _ = kl_cov(logp, old, adv, mask, kl_cov_ratio=0.2)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not both"):
        kl_cov(logp, old, adv, mask, kl_cov_ratio=0.2, k_percent=20.0)


# ---------------------------------------------------------------- gradients and randomness

@pytest.mark.parametrize("seed", range(4))
def test_zeroed_tokens_get_no_gradient_and_the_others_get_ppos(seed: int) -> None:
    logp, old, adv, mask = _batch(seed)
    x = logp.clone().requires_grad_(True)
    torch.manual_seed(seed)
    loss, _ = clip_cov(x, old, adv, mask, clip_cov_ratio=0.3)
    loss.sum().backward()
    rho = torch.exp(logp - old)
    l1, l2 = -adv * rho, -adv * rho.clamp(0.8, 1.2)
    valid = mask.bool()
    zeroed = valid & (loss.detach() == 0) & (torch.maximum(l1, l2) != 0)
    assert zeroed.sum() >= 2
    assert torch.all(x.grad[zeroed] == 0)
    live = valid & ~zeroed & ~(l2 > l1)  # unclipped, kept: d(-A r)/dlogp = -A r
    torch.testing.assert_close(x.grad[live], (-adv * rho)[live])
    assert torch.all(x.grad[valid & (l2 > l1)] == 0) and torch.all(x.grad[~valid] == 0)


def test_kl_cov_gradient_of_penalised_tokens() -> None:
    logp, old, adv, mask = _batch(7)
    x = logp.clone().requires_grad_(True)
    loss, _ = kl_cov(x, old, adv, mask, kl_cov_ratio=0.1, ppo_kl_coef=0.5)
    loss.sum().backward()
    pg = -adv * torch.exp(logp - old) * mask
    chosen = ((loss.detach() - pg).abs() > 0) & mask.bool()
    expected = pg + torch.where(chosen, 0.5 * torch.sign(logp - old), torch.zeros_like(pg))
    torch.testing.assert_close(x.grad, expected)


def test_clip_cov_draw_is_deterministic_under_a_fixed_torch_seed_and_varies_with_it() -> None:
    logp, old, adv, mask = _batch(11)

    def zeroed(s: int) -> torch.Tensor:
        torch.manual_seed(s)
        loss, _ = clip_cov(logp, old, adv, mask, clip_cov_ratio=0.05)
        return loss == 0

    assert torch.equal(zeroed(5), zeroed(5))
    assert any(not torch.equal(zeroed(5), zeroed(s)) for s in (6, 7, 8))


def test_no_candidate_no_draw_and_empty_batches() -> None:
    logp, old, adv, mask = _batch(2)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    loss, m = clip_cov(logp, old, adv, mask, clip_cov_lb=1e6, clip_cov_ub=2e6)
    assert torch.equal(torch.get_rng_state(), before)  # like verl: randperm only when there are candidates
    assert float(m["clip_cov_frac"]) == 0.0
    zero_mask = torch.zeros_like(mask)
    for fn in (clip_cov, kl_cov):
        out, _ = fn(logp, old, adv, zero_mask)
        assert torch.equal(out, torch.zeros_like(out))


def test_bad_inputs_and_options_are_refused() -> None:
    logp, old, adv, mask = _batch(1)
    with pytest.raises(ValueError, match="shape"):
        clip_cov(logp, old[:, :3], adv, mask)
    with pytest.raises(ValueError, match=r"\[N, R\]"):
        kl_cov(logp[0], old[0], adv[0], mask[0])
    with pytest.raises(ValueError, match="clip_cov_lb must be < clip_cov_ub"):
        clip_cov(logp, old, adv, mask, clip_cov_lb=5.0, clip_cov_ub=1.0)
    with pytest.raises(ValueError, match="clip_cov_ratio"):
        clip_cov(logp, old, adv, mask, clip_cov_ratio=0.0)
    with pytest.raises(ValueError, match="kl_cov_ratio"):
        kl_cov(logp, old, adv, mask, kl_cov_ratio=-1.0)
    with pytest.raises(ValueError, match="ppo_kl_coef"):
        kl_cov(logp, old, adv, mask, ppo_kl_coef=-1.0)


def test_config_validation_refuses_bad_option_values() -> None:
    from rlfold.core.config import LocatedValueError, check_part_options

    with pytest.raises(LocatedValueError):
        check_part_options(("algo", "policy_loss_kwargs"), "policy loss", "kl_cov", kl_cov, {"k_percent": 150.0},
                           n_positional=4)
    with pytest.raises(LocatedValueError):
        check_part_options(("algo", "policy_loss_kwargs"), "policy loss", "clip_cov", clip_cov,
                           {"clip_cov_ratio": 0.0}, n_positional=4)
    with pytest.raises(LocatedValueError):  # no dual clip in Clip-Cov
        check_part_options(("algo",), "policy loss", "clip_cov", clip_cov, {"clip_c": 3.0}, n_positional=4)
    with pytest.raises(LocatedValueError):  # no ratio clipping in KL-Cov
        check_part_options(("algo",), "policy loss", "kl_cov", kl_cov, {"clip_low": 0.2}, n_positional=4)
    check_part_options(("algo",), "policy loss", "clip_cov", clip_cov, {"clip_low": 1.0}, n_positional=4)


# ---------------------------------------------------------------- recipes through the CLI

@pytest.mark.parametrize("recipe,metric", [("clip_cov", "actor/clip_cov_frac"), ("kl_cov", "actor/kl_cov_frac")])
def test_recipe_runs_two_steps(train_steps, recipe: str, metric: str) -> None:
    steps = train_steps(recipe)
    for r in steps:
        assert metric in r and 0.0 < r[metric] <= 1.0, r.get(metric)
        for key in ("actor/pg_loss", "actor/ppo_kl", metric):
            assert math.isfinite(r[key]), key
