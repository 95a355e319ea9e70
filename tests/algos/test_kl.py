"""KL estimators against hand-computed numbers (Schulman's k1/k2/k3; GRPO, arXiv 2402.03300; verl's variants)."""

from __future__ import annotations

import math

import pytest
import torch

from rlfold.algos import KL_ESTIMATORS
from rlfold.algos.kl import adaptive_kl_coef, kl_in_reward


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


# ---------------------------------------------------------------------------------------------
# KL in the reward and the adaptive coefficient (Ziegler et al., arXiv 1909.08593)


def test_kl_in_reward_hand_example() -> None:
    scores = torch.tensor([1.0, -0.5, 2.0, 3.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    kl = torch.tensor([[0.2, -0.4, 1.0, 9.0], [0.5, 9.0, 0.0, 9.0], [9.0, 9.0, 9.0, 9.0], [0.0, 0.0, 0.0, 0.3]])
    rewards = kl_in_reward(scores, mask, kl, 0.1)
    expected = torch.tensor([
        [-0.02, 0.04, 1.0 - 0.1, 0.0],   # score on the last valid token (index 2)
        [-0.05, 0.0, -0.5, 0.0],         # gap in the mask: the last valid token is still index 2
        [0.0, 0.0, 0.0, 0.0],            # no valid token: score dropped
        [0.0, 0.0, 0.0, 3.0 - 0.03],     # full row: last column
    ])
    assert torch.allclose(rewards, expected)
    assert rewards.shape == mask.shape
    # coef 0: the plain outcome reward on the last token
    assert torch.equal(kl_in_reward(scores, mask, kl, 0.0).sum(-1), torch.tensor([1.0, -0.5, 0.0, 3.0]))


def test_kl_in_reward_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="scores"):
        kl_in_reward(torch.zeros(3), torch.ones(2, 4), torch.zeros(2, 4), 0.1)
    with pytest.raises(ValueError, match="same shape"):
        kl_in_reward(torch.zeros(2), torch.ones(2, 4), torch.zeros(2, 3), 0.1)


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        (0.15, 0.1 * (1 + 0.2 * 256 / 10000)),    # e = 0.5 clipped to 0.2 -> 0.100512
        (0.09, 0.1 * (1 - 0.1 * 256 / 10000)),    # e = -0.1 -> 0.099744
        (0.0, 0.1 * (1 - 0.2 * 256 / 10000)),     # e = -1 clipped to -0.2 -> 0.099488
        (0.1, 0.1),                               # on target: unchanged
    ],
)
def test_adaptive_kl_coef_hand_values(observed: float, expected: float) -> None:
    new = adaptive_kl_coef(0.1, observed, target=0.1, horizon=10000, n_steps=256)
    assert isinstance(new, float)
    assert new == pytest.approx(expected, rel=1e-12)


def test_adaptive_kl_coef_numbers_and_tensor_input() -> None:
    assert 0.1 * (1 + 0.2 * 256 / 10000) == pytest.approx(0.100512)
    assert adaptive_kl_coef(0.05, torch.tensor(0.11), target=0.1, horizon=1000, n_steps=100) == pytest.approx(
        0.05 * (1 + 0.1 * 0.1)  # e = 0.1 -> 0.0505
    )
    with pytest.raises(ValueError, match="target"):
        adaptive_kl_coef(0.1, 0.1, target=0.0, horizon=10000, n_steps=1)


def test_straight_through_value_is_bitwise_the_estimator() -> None:
    # an outside check against verl found k3+ 3.8e-6 off k3 when the terms were summed left to right
    import torch as _t

    from rlfold.algos import KL_ESTIMATORS as _kl

    g = _t.Generator().manual_seed(0)
    logp = -_t.rand(64, 32, generator=g) * 6
    ref = -_t.rand(64, 32, generator=g) * 6
    for name, base in (("k3+", "k3"), ("k1+", "k1"), ("abs+", "abs")):
        assert _t.equal(_kl.get(name)(logp, ref), _kl.get(base)(logp, ref)), name
