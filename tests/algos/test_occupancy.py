"""χ² occupancy regularisation (Correlated Proxies, arXiv 2403.03185): methods/rewards.md §14 worked numbers."""

import math

import pytest
import torch

from rlfold.algos import REGULARIZERS
from rlfold.algos.occupancy import (
    Chi2Occupancy, chi2_penalty, chi2_terms, expm1_linear, kl_terms, sequence_log_ratio, sqrt_slope,
)


def test_per_sample_term_at_plus_minus_half():
    s = torch.tensor([0.5, -0.5], dtype=torch.float64)
    torch.testing.assert_close(chi2_terms(s), torch.tensor([0.255252, 0.255252], dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_batch_estimate_and_penalty():
    chi2 = chi2_terms(torch.tensor([0.5, -0.5], dtype=torch.float64)).mean()
    assert float(chi2) == pytest.approx(0.255252, abs=1e-6)
    coef = 0.0008
    assert float(chi2_penalty(chi2, coef)) == pytest.approx(coef * 0.505225, rel=1e-5)


def test_zero_log_ratio_gives_zero_and_the_floor():
    s = torch.zeros(3, dtype=torch.float64)
    assert float(chi2_terms(s).abs().max()) == 0.0
    assert float(kl_terms(s).abs().max()) == 0.0
    assert float(chi2_penalty(chi2_terms(s).mean(), 2.0)) == pytest.approx(2.0 * 0.01)  # √1e-4


def test_kl_estimate():
    s = torch.tensor([0.5, -0.5], dtype=torch.float64)
    expected = (0.5 + math.expm1(-0.5) - 0.5 + math.expm1(0.5)) / 2
    assert float(kl_terms(s).mean()) == pytest.approx(expected, abs=1e-12)


def test_linear_extension_is_continuous_with_the_tangent_slope_at_the_clip():
    e = math.exp(10.0)
    x = torch.tensor([10.0 - 1e-9, 10.0, 10.0 + 1e-9, 12.0], dtype=torch.float64, requires_grad=True)
    y = expm1_linear(x)
    v = y.detach()
    assert float(v[0]) == pytest.approx(math.expm1(10.0 - 1e-9), rel=1e-12)
    assert float(v[1]) == pytest.approx(e - 1.0, rel=1e-12)
    assert float(v[2]) == pytest.approx(e * (1 + 1e-9) - 1.0, rel=1e-12)
    assert float(v[3]) == pytest.approx(e * (1 + 12.0 - 10.0) - 1.0, rel=1e-12)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([math.exp(10.0 - 1e-9), e, e, e], dtype=torch.float64))
    # symmetric for s <= -10: the 1/r - 1 term is extended, the χ² term stays continuous
    s = torch.tensor([-10.0 - 1e-9, -10.0, -10.0 + 1e-9, -30.0, 30.0], dtype=torch.float64)
    t = chi2_terms(s)
    assert float(t[0]) == pytest.approx(float(t[1]), rel=1e-8) and float(t[2]) == pytest.approx(float(t[1]), rel=1e-8)
    assert float(t[3]) == pytest.approx(float(t[4]))
    assert float(t[3]) == pytest.approx(e * 21 - 1 + math.expm1(-30.0), rel=1e-12)
    assert torch.isfinite(chi2_terms(torch.tensor([1e4, -1e4]))).all()


def test_sequence_log_ratio_is_masked():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.0], [-1.0, -1.0, -0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    torch.testing.assert_close(sequence_log_ratio(lp, ref, mask), torch.tensor([-0.5, 1.0]))
    with pytest.raises(ValueError, match="same shape"):
        sequence_log_ratio(lp, ref[:, :2], mask)


def test_gradient_matches_the_analytic_formula():
    torch.manual_seed(0)
    lp = (torch.randn(5, 4, dtype=torch.float64) - 2.0).requires_grad_()
    ref = torch.randn(5, 4, dtype=torch.float64) - 2.0
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.float64)
    coef = 0.3
    part = Chi2Occupancy()
    chi2 = part.sample_terms(lp, mask, ref_logprobs=ref).mean()
    (coef * part.penalty(chi2)).backward()
    s = ((lp.detach() - ref) * mask).sum(-1)
    # d/d logp_{i,t} of coef √(mean_i (e^s_i + e^-s_i - 2)) = coef / (2 √χ²) · (e^s_i - e^-s_i) / N · m_{i,t}
    chi2 = chi2.detach()
    analytic = coef / (2 * math.sqrt(float(chi2))) * ((s.exp() - (-s).exp()) / 5)[:, None] * mask
    torch.testing.assert_close(lp.grad, analytic)
    assert float(part.slope(chi2)) == pytest.approx(0.5 / math.sqrt(float(chi2)))


def test_slope_is_zero_below_the_floor_like_autograd():
    chi2 = torch.tensor(5e-5, dtype=torch.float64, requires_grad=True)
    chi2_penalty(chi2, 1.0).backward()
    assert float(chi2.grad) == 0.0 == float(sqrt_slope(chi2.detach()))
    chi2 = torch.tensor(4e-4, dtype=torch.float64)
    assert float(sqrt_slope(chi2)) == pytest.approx(0.5 / 0.02)


def test_registered_with_reference_input_and_metrics():
    part = REGULARIZERS.get("chi2_occupancy")(clip=5.0)
    assert part.needs == ("ref_logprobs",) and part.clip == 5.0
    lp = torch.tensor([[0.0, -1.0]])
    m = part.sample_metrics(lp, torch.ones(1, 2), ref_logprobs=torch.tensor([[-0.5, -1.0]]))
    assert float(m["chi2"][0]) == pytest.approx(0.255252, abs=1e-6)
    assert float(m["chi2_kl"][0]) == pytest.approx(0.5 + math.expm1(-0.5), abs=1e-7)
