"""KL estimators against hand-computed numbers (policy.md 1.1, peers.md 1.4)."""

from __future__ import annotations

import math

import pytest
import torch

from rlfold.algos import KL_ESTIMATORS


def test_k3_hand_values() -> None:
    k3 = KL_ESTIMATORS.get("k3")
    # l = ref - logp = 0.1: e^0.1 - 0.1 - 1 = 0.0051709
    assert k3(torch.tensor([0.0]), torch.tensor([0.1])).item() == pytest.approx(0.0051709, abs=1e-7)
    assert k3(torch.tensor([-1.3]), torch.tensor([-1.3])).item() == 0.0
    assert KL_ESTIMATORS.get("low_var_kl") is k3
    assert math.isclose(math.exp(0.1) - 0.1 - 1, 0.0051709, abs_tol=1e-7)  # the hand number


def test_k3_gradient_is_one_minus_exp_l() -> None:
    ref = torch.tensor([0.1, -0.4, 0.0, 2.0], dtype=torch.float64)
    logp = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    KL_ESTIMATORS.get("k3")(logp, ref).sum().backward()
    assert torch.allclose(logp.grad, 1 - torch.exp(ref - 0.0))
    assert logp.grad[2].item() == 0.0


def test_k3_nonnegative_and_clamped() -> None:
    g = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(1000, generator=g) * 3, torch.randn(1000, generator=g) * 3
    k3 = KL_ESTIMATORS.get("k3")(logp, ref)
    assert (k3 >= 0).all()
    assert k3.max() <= 10.0
    big = KL_ESTIMATORS.get("k3")(torch.tensor([-50.0]), torch.tensor([0.0]))
    assert big.item() == 10.0


def test_k1_abs_k2_values() -> None:
    logp, ref = torch.tensor([-0.5, -2.0]), torch.tensor([-1.0, -1.0])
    assert torch.allclose(KL_ESTIMATORS.get("k1")(logp, ref), torch.tensor([0.5, -1.0]))
    assert torch.allclose(KL_ESTIMATORS.get("abs")(logp, ref), torch.tensor([0.5, 1.0]))
    assert torch.allclose(KL_ESTIMATORS.get("k2")(logp, ref), torch.tensor([0.125, 0.5]))


@pytest.mark.parametrize("name", ["k1", "k3", "abs"])
def test_straight_through_value_of_estimator_gradient_of_k2(name: str) -> None:
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(6, generator=g, dtype=torch.float64)
    base = torch.randn(6, generator=g, dtype=torch.float64)
    logp = base.clone().requires_grad_(True)
    st = KL_ESTIMATORS.get(name + "+")(logp, ref)
    assert torch.allclose(st, KL_ESTIMATORS.get(name)(base, ref))
    st.sum().backward()
    logp2 = base.clone().requires_grad_(True)
    KL_ESTIMATORS.get("k2")(logp2, ref).sum().backward()
    assert torch.allclose(logp.grad, logp2.grad)
    assert torch.allclose(logp.grad, base - ref)  # d/dlogp of (logp - ref)^2 / 2


def test_shape_mismatch_rejected() -> None:
    with pytest.raises(ValueError, match="same shape"):
        KL_ESTIMATORS.get("k3")(torch.zeros(2, 3), torch.zeros(2, 4))


def test_every_part_cites_a_source() -> None:
    for name in KL_ESTIMATORS.names():
        doc = (KL_ESTIMATORS.get(name).__doc__ or "").strip().splitlines()[0]
        assert "Schulman 2020" in doc or "arXiv" in doc, name
