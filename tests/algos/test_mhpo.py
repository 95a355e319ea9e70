"""MHPO (arXiv 2603.16929) against policy.md §7: the worked value at r = 1, the bounds of the log-ratio map,
the bounded gradient multiplier, sign preservation, option domains and a 2-step run of the recipe."""

from __future__ import annotations

import math

import pytest
import torch

import rlfold.algos.mhpo  # noqa: F401  (registers the part until algos/__init__ imports it)
from rlfold.algos import POLICY_LOSSES
from rlfold.algos.mhpo import hazard, log_ratio_map
from rlfold.core.config import check_part_options

F64 = torch.float64
mhpo = POLICY_LOSSES.get("mhpo")
DEFAULTS = {"k_pos": 1.5, "lam_pos": 1.0, "k_neg": 2.0, "lam_neg": 0.8}


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _ref_weight(x: float, c: float = 1.5, k_pos: float = 1.5, lam_pos: float = 1.0, k_neg: float = 2.0,
                lam_neg: float = 0.8) -> tuple[float, float, float]:
    """Independent scalar reference: (psi, zeta, d weight / d log r) for log-ratio x."""
    psi = c * math.tanh(x / c)
    zeta = (_softplus(psi) / lam_pos) ** k_pos + (_softplus(-psi) / lam_neg) ** k_neg
    dpsi = 1.0 - math.tanh(x / c) ** 2
    return psi, zeta, math.exp(psi - zeta) * dpsi


def _loss_and_grad(logp0: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, **kw):
    logp = logp0.clone().requires_grad_(True)
    loss, metrics = mhpo(logp, old, adv, mask, **kw)
    loss.sum().backward()
    return loss.detach(), logp.grad, metrics


def test_worked_value_at_ratio_one() -> None:
    # policy.md §7(e): r = 1 => psi = 0, zeta = (ln 2)^1.5 + (ln 2 / 0.8)^2 = 1.32779, weight e^-zeta = 0.26506.
    zeta = hazard(torch.zeros(1, dtype=F64), **DEFAULTS)
    assert zeta.item() == pytest.approx(math.log(2) ** 1.5 + (math.log(2) / 0.8) ** 2, rel=1e-12)
    assert zeta.item() == pytest.approx(1.32779, abs=5e-6)
    zeros, adv = torch.zeros(1, 1, dtype=F64), torch.tensor([[2.0]], dtype=F64)
    loss, grad, m = _loss_and_grad(zeros, zeros, adv, torch.ones(1, 1, dtype=F64))
    assert math.exp(-zeta.item()) == pytest.approx(0.26506, abs=5e-6)
    assert loss.item() == pytest.approx(-2.0 * math.exp(-zeta.item()), rel=1e-12)
    # psi'(0) = 1 and zeta is stop-gradient: d l / d logp = -A e^-zeta (not 1 x -A as PPO: the weight is not 1).
    assert grad.item() == pytest.approx(-2.0 * 0.26506, abs=2e-5)
    assert m["mhpo_weight_mean"].item() == pytest.approx(0.26506, abs=5e-6)
    assert m["mhpo_zeta_mean"].item() == pytest.approx(1.32779, abs=5e-6)
    assert m["ppo_kl"].item() == 0.0 and m["mhpo_saturated_frac"].item() == 0.0


@pytest.mark.parametrize("x", [0.5, -0.5, 1.7, -3.0])
def test_values_and_gradients_match_a_scalar_reference(x: float) -> None:
    logp, old = torch.tensor([[x - 1.0]], dtype=F64), torch.tensor([[-1.0]], dtype=F64)
    adv = torch.tensor([[-0.7]], dtype=F64)
    loss, grad, _ = _loss_and_grad(logp, old, adv, torch.ones(1, 1, dtype=F64))
    psi, zeta, dweight = _ref_weight(x)
    assert loss.item() == pytest.approx(0.7 * math.exp(psi - zeta), rel=1e-12)
    assert grad.item() == pytest.approx(0.7 * dweight, rel=1e-10)  # zeta contributes no gradient


def test_hazard_is_asymmetric_by_its_two_weibull_terms() -> None:
    psi = torch.tensor([0.8, -0.8], dtype=F64)
    z = hazard(psi, **DEFAULTS)
    sp, sm = _softplus(0.8), _softplus(-0.8)
    assert z[0].item() == pytest.approx(sp ** 1.5 + (sm / 0.8) ** 2, rel=1e-12)
    assert z[1].item() == pytest.approx(sm ** 1.5 + (sp / 0.8) ** 2, rel=1e-12)
    assert z[0].item() != pytest.approx(z[1].item(), rel=1e-3)


def test_log_ratio_map_is_bounded_and_close_to_log_r_near_one() -> None:
    x = torch.linspace(-20, 20, 4001, dtype=F64)
    psi = log_ratio_map(x, 1.5)
    assert torch.all(psi.abs() < 1.5)  # strict in float64 up to the |log r| <= 20 clamp
    assert torch.all(log_ratio_map(x.float(), 1.5).abs() <= 1.5)  # float32 rounds tanh to 1 in the tails
    assert torch.all(torch.diff(psi) > 0)  # monotone: the ordering of ratios is kept
    near = torch.linspace(-0.05, 0.05, 101, dtype=F64)
    # c tanh(x / c) = x - x^3 / (3 c^2) + ..., alternating: |psi - x| <= |x|^3 / (3 c^2)
    err = (log_ratio_map(near, 1.5) - near).abs()
    assert torch.all(err <= near.abs() ** 3 / (3 * 1.5**2) + 1e-15)
    assert err.max().item() < 2e-5


@pytest.mark.parametrize("c", [0.5, 1.5, 3.0])
def test_gradient_multiplier_bounded_by_exp_c_and_sign_follows_advantage(c: float) -> None:
    g = torch.Generator().manual_seed(0)
    n, r = 8, 50
    old = torch.randn(n, r, generator=g, dtype=F64) - 2.0
    logp = old + torch.linspace(-25, 25, n * r, dtype=F64).reshape(n, r)  # ratios from e^-25 to e^25 (clamped at 20)
    adv = torch.randn(n, r, generator=g, dtype=F64)
    adv[0, :5] = 0.0
    mask = torch.ones(n, r, dtype=F64)
    loss, grad, _ = _loss_and_grad(logp, old, adv, mask, c=c)
    multiplier = grad / -adv  # d l / d logp = -A * multiplier
    nz = adv != 0
    assert torch.all(multiplier[nz] >= 0) and torch.all(multiplier[nz] <= math.exp(c))
    # strictly positive inside the clamp, where 1 - tanh^2(x / c) has not rounded to 0 (|x| / c < 10)
    inner = (logp - old).abs() < min(20.0, 10 * c)
    assert torch.all(multiplier[nz & inner] > 0)
    # descent raises logp where A > 0 and lowers it where A < 0; no push where A = 0
    assert torch.all(torch.sign(-grad[nz & inner]) == torch.sign(adv[nz & inner]))
    assert torch.all(grad[~nz] == 0)
    assert torch.all(torch.sign(-loss[nz]) == torch.sign(adv[nz]))  # the weight exp(psi - zeta) is > 0
    assert torch.all(loss.abs() <= math.exp(c) * adv.abs())


def test_stop_gradient_on_zeta_changes_the_gradient() -> None:
    # The hazard is detached: the gradient is the weight times psi', not the derivative of exp(psi - zeta(psi)).
    x = torch.tensor([[0.6]], dtype=F64)
    _, grad, _ = _loss_and_grad(x, torch.zeros_like(x), torch.ones_like(x), torch.ones_like(x))
    xx = x.clone().requires_grad_(True)
    psi = log_ratio_map(xx, 1.5)
    full = -torch.exp(psi - hazard(psi, **DEFAULTS))
    full.sum().backward()
    assert grad.item() == pytest.approx(-_ref_weight(0.6)[2], rel=1e-10)
    assert abs(grad.item() - xx.grad.item()) > 1e-3


def test_masked_tokens_get_no_loss_and_no_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    old = torch.randn(3, 6, generator=g, dtype=F64)
    logp = old + 0.3 * torch.randn(3, 6, generator=g, dtype=F64)
    adv = torch.randn(3, 6, generator=g, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=F64)
    loss, grad, m = _loss_and_grad(logp, old, adv, mask)
    assert torch.all(loss[mask == 0] == 0) and torch.all(grad[mask == 0] == 0)
    assert torch.all(loss[mask == 1] != 0)
    psi = 1.5 * torch.tanh((logp - old) / 1.5)
    w = torch.exp(psi - hazard(psi, **DEFAULTS))
    assert m["mhpo_weight_mean"].item() == pytest.approx(float(w[mask == 1].mean()), rel=1e-12)
    assert m["ppo_kl"].item() == pytest.approx(float((old - logp)[mask == 1].mean()), rel=1e-12)


def test_saturated_fraction_counts_flat_tail_tokens() -> None:
    x = torch.tensor([[0.0, 0.5, 3.0, -4.0]], dtype=F64)  # 0.9 c = 1.35: psi(3.0) = 1.446, psi(-4.0) = -1.485
    _, _, m = _loss_and_grad(x, torch.zeros_like(x), torch.ones_like(x), torch.ones_like(x))
    assert m["mhpo_saturated_frac"].item() == pytest.approx(0.5)


def test_bad_shapes_and_options_are_refused() -> None:
    a = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="logprobs must be"):
        mhpo(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="advantages must have the shape"):
        mhpo(a, a, torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="c must be > 0"):
        mhpo(a, a, a, torch.ones(2, 3), c=0.0)
    with pytest.raises(ValueError, match="lam_neg"):
        check_part_options(("algo", "policy_loss_kwargs"), "policy loss", "mhpo", mhpo, {"lam_neg": -1.0},
                           n_positional=4)
    with pytest.raises(ValueError, match="takes no option 'clip_high'"):
        check_part_options(("algo", "policy_loss_kwargs"), "policy loss", "mhpo", mhpo, {"clip_high": 0.2},
                           n_positional=4)
    check_part_options(("algo", "policy_loss_kwargs"), "policy loss", "mhpo", mhpo,
                       {"c": 1.5, **DEFAULTS}, n_positional=4)


def test_recipe_runs_two_steps(train_steps) -> None:
    steps = train_steps("mhpo")
    for r in steps:
        for key in ("actor/pg_loss", "actor/mhpo_weight_mean", "actor/mhpo_zeta_mean", "actor/ppo_kl"):
            assert key in r and math.isfinite(r[key]), key
        assert 0 < r["actor/mhpo_weight_mean"] <= math.exp(1.5)
