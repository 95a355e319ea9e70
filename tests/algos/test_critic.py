"""Critic loss and explained variance against hand-computed numbers (verl's clipped value loss, as in VC-PPO,
arXiv 2503.01491)."""

from __future__ import annotations

import math

import pytest
import torch

from rlfold.algos.critic import clipped_value_loss, explained_variance

F64 = torch.float64


def _example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    values = torch.tensor([[1.0, 1.0, 2.0, 7.0]], dtype=F64, requires_grad=True)
    old = torch.tensor([[0.0, 0.0, 2.0, 0.0]], dtype=F64)
    returns = torch.tensor([[0.0, 2.0, 0.0, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0]])
    return values, old, returns, mask


def test_clipped_value_loss_hand_example() -> None:
    values, old, returns, mask = _example()
    loss, m = clipped_value_loss(values, old, returns, mask, clip=0.5)
    # token 0: v_clip = 0.5; max((1-0)^2, (0.5-0)^2) = 1 -> 0.5 (unclipped active)
    # token 1: v_clip = 0.5; max((1-2)^2, (0.5-2)^2) = 2.25 -> 1.125 (clipped active)
    # token 2: v = old = 2; both terms 4 (not strictly larger) -> 2.0
    # token 3: masked -> 0
    assert torch.allclose(loss, torch.tensor([[0.5, 1.125, 2.0, 0.0]], dtype=F64))
    assert m["vf_clipfrac"].item() == pytest.approx(1 / 3)
    assert m["vf_clipfrac"].dim() == 0 and not m["vf_clipfrac"].requires_grad
    loss.sum().backward()
    # unclipped tokens: d/dv 0.5 (v - R)^2 = v - R; clipped token: v_clip is constant -> 0
    assert torch.allclose(values.grad, torch.tensor([[1.0, 0.0, 2.0, 0.0]], dtype=F64))


def test_unclipped_value_loss() -> None:
    values, old, returns, mask = _example()
    loss, m = clipped_value_loss(values, old, returns, mask, clip=None)
    assert torch.allclose(loss, torch.tensor([[0.5, 0.5, 2.0, 0.0]], dtype=F64))
    assert m["vf_clipfrac"].item() == 0.0
    loss.sum().backward()
    assert torch.allclose(values.grad, torch.tensor([[1.0, -1.0, 2.0, 0.0]], dtype=F64))


def test_default_clip_is_half() -> None:
    values, old, returns, mask = _example()
    assert torch.equal(clipped_value_loss(values, old, returns, mask)[0],
                       clipped_value_loss(values, old, returns, mask, clip=0.5)[0])


def test_value_loss_rejects_bad_input() -> None:
    values, old, returns, mask = _example()
    with pytest.raises(ValueError, match="clip"):
        clipped_value_loss(values, old, returns, mask, clip=-0.1)
    with pytest.raises(ValueError, match="returns"):
        clipped_value_loss(values, old, returns[:, :3], mask)


def test_explained_variance_hand_values() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])  # valid returns 1, 2, 3, 4
    assert explained_variance(returns.clone(), returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(2, 3), returns, mask) == pytest.approx(0.0)
    # residual (0, 0, 0, -1): Var = 0.1875; Var(R) = 1.25 -> 1 - 0.15 = 0.85
    values = torch.tensor([[1.0, 2.0, 3.0], [5.0, -7.0, 9.0]])
    assert explained_variance(values, returns, mask) == pytest.approx(0.85)
    # predicting the mean plus noise can be worse than the mean: negative
    assert explained_variance(torch.full((2, 3), 10.0) - returns, returns, mask) < 0


def test_explained_variance_nan_when_returns_constant() -> None:
    returns = torch.tensor([[2.0, 2.0, 5.0]])
    assert math.isnan(explained_variance(torch.zeros(1, 3), returns, torch.tensor([[1, 1, 0]])))
    assert math.isnan(explained_variance(torch.zeros(1, 3), returns, torch.zeros(1, 3)))
