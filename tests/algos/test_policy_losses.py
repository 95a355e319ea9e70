"""PPO clipped surrogate against hand-computed numbers (policy.md section 0, 1.3)."""

from __future__ import annotations

import math

import pytest
import torch

from rlfold.algos import POLICY_LOSSES

ppo_clip = POLICY_LOSSES.get("ppo_clip")


def _single(ratio: float, adv: float, **kw: float | None) -> tuple[float, float, dict]:
    """Loss value and d loss / d logp for one token with old_logp = 0."""
    logp = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    loss, metrics = ppo_clip(
        logp, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[adv]], dtype=torch.float64),
        torch.ones(1, 1), **kw,
    )
    loss.sum().backward()
    return loss.item(), logp.grad.item(), {k: v.item() for k, v in metrics.items()}


def test_clip_higher_keeps_gradient_at_ratio_1_25() -> None:
    # A > 0, r = 1.25: PPO (eps = 0.2) clips to 1.2 -> constant, zero gradient;
    # DAPO eps_high = 0.28 leaves r unclipped -> d(-A r)/dlogp = -A r = -1.25.
    value, grad, metrics = _single(1.25, 1.0, clip_low=0.2, clip_high=0.2)
    assert value == pytest.approx(-1.2)
    assert grad == 0.0
    assert metrics["pg_clipfrac"] == 1.0
    value, grad, metrics = _single(1.25, 1.0, clip_low=0.2, clip_high=0.28)
    assert value == pytest.approx(-1.25)
    assert grad == pytest.approx(-1.25)
    assert metrics["pg_clipfrac"] == 0.0


def test_dual_clip_c3() -> None:
    # A = -1, r = 5: max(5, 1.2) = 5 > -A c = 3 -> loss 3, constant in logp
    value, grad, metrics = _single(5.0, -1.0, clip_c=3.0)
    assert value == pytest.approx(3.0)
    assert grad == 0.0
    assert metrics["pg_clipfrac_lower"] == 1.0
    assert metrics["pg_clipfrac"] == 0.0
    # A = -0.5, r = 4: max(2.0, 0.5 * 1.2 = 0.6) = 2.0 > 0.5 * 3 = 1.5 -> 1.5
    assert _single(4.0, -0.5, clip_c=3.0)[0] == pytest.approx(1.5)
    # A = -1, r = 2: max(2, 1.2) = 2 < 3 -> unbounded branch, gradient -A r = 2
    value, grad, metrics = _single(2.0, -1.0, clip_c=3.0)
    assert (value, grad, metrics["pg_clipfrac_lower"]) == (pytest.approx(2.0), pytest.approx(2.0), 0.0)
    # A = -2, r = 0.5: max(1.0, 2 * 0.8 = 1.6) = 1.6 (lower eps clip), below 6
    value, grad, metrics = _single(0.5, -2.0, clip_c=3.0)
    assert value == pytest.approx(1.6) and grad == 0.0
    assert metrics["pg_clipfrac"] == 1.0 and metrics["pg_clipfrac_lower"] == 0.0
    # dual clip never touches positive advantages
    assert _single(10.0, 1.0, clip_c=3.0)[0] == pytest.approx(-1.2)


def test_clipfrac_and_ppo_kl_hand_example() -> None:
    ratio = torch.tensor([[1.5, 1.0, 0.5], [0.5, 1.5, 2.0]])
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, m = ppo_clip(ratio.log(), torch.zeros(2, 3), adv, mask)
    # row 0 (A=1):  -1.2 (clipped), -1.0, -0.5 ; row 1 (A=-1): 0.8 (clipped), 1.5, masked -> 0
    assert torch.allclose(loss, torch.tensor([[-1.2, -1.0, -0.5], [0.8, 1.5, 0.0]]))
    assert m["pg_clipfrac"].item() == pytest.approx(2 / 5)
    assert m["pg_clipfrac_lower"].item() == 0.0
    # ppo_kl = mean(old - new) = -(2 ln 1.5 + 2 ln 0.5 + 0) / 5
    assert m["ppo_kl"].item() == pytest.approx(-(2 * math.log(1.5) + 2 * math.log(0.5)) / 5, abs=1e-6)
    for v in m.values():
        assert v.dim() == 0 and not v.requires_grad
    # dual clip at c = 1.4: only row 1 token 1 (1.5 > 1.4); the masked token (2.0) does not count
    loss, m = ppo_clip(ratio.log(), torch.zeros(2, 3), adv, mask, clip_c=1.4)
    assert loss[1, 1].item() == pytest.approx(1.4)
    assert m["pg_clipfrac_lower"].item() == pytest.approx(1 / 5)


def test_loss_is_per_token_and_zero_on_mask() -> None:
    g = torch.Generator().manual_seed(0)
    logp, old, adv = (torch.randn(3, 5, generator=g) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    loss, _ = ppo_clip(logp, old, adv, mask, clip_high=0.28, clip_c=3.0)
    assert loss.shape == (3, 5)
    assert torch.equal(loss[mask == 0], torch.zeros(int((mask == 0).sum())))


def test_log_ratio_is_clamped() -> None:
    loss, m = ppo_clip(torch.tensor([[60.0]]), torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1))
    assert loss.item() == pytest.approx(math.exp(20.0), rel=1e-5)
    assert m["ppo_kl"].item() == -20.0


def test_ratio_one_equals_policy_gradient() -> None:
    # on-policy (old = logp.detach()) the gradient is -A, like REINFORCE
    logp = torch.tensor([[-0.7, -1.2]], requires_grad=True)
    adv = torch.tensor([[0.5, -2.0]])
    loss, m = ppo_clip(logp, logp.detach(), adv, torch.ones(1, 2))
    loss.sum().backward()
    assert torch.allclose(logp.grad, -adv)
    assert m["pg_clipfrac"].item() == 0.0 and m["ppo_kl"].item() == 0.0


@pytest.mark.parametrize("c", [1.0, 0.5])
def test_dual_clip_bound_must_exceed_one(c: float) -> None:
    with pytest.raises(ValueError, match="clip_c"):
        ppo_clip(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), clip_c=c)


def test_shape_mismatch_rejected() -> None:
    with pytest.raises(ValueError, match="advantages"):
        ppo_clip(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3))


def test_every_part_cites_a_paper() -> None:
    for name in POLICY_LOSSES.names():
        assert "arXiv" in (POLICY_LOSSES.get(name).__doc__ or "").strip().splitlines()[0], name
