"""Advantage estimators against hand-computed numbers (policy.md 1.1, 1.2)."""

from __future__ import annotations

import math

import pytest
import torch

from rlfold.algos import ADVANTAGES


def _ids(*ids: int) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long)


def test_grpo_hand_example() -> None:
    # mean 0.5, unbiased std sqrt(1/3) = 0.57735 -> +-0.5 / 0.57735 = +-0.8660
    adv, metrics = ADVANTAGES.get("grpo")(
        torch.tensor([1.0, 0.0, 0.0, 1.0]), _ids(0, 0, 0, 0), torch.ones(4, 3)
    )
    expected = torch.tensor([0.8660, -0.8660, -0.8660, 0.8660])[:, None].expand(4, 3)
    assert torch.allclose(adv, expected, atol=1e-4)
    assert metrics == {"frac_reward_zero_std": 0.0}


def test_dr_grpo_hand_example() -> None:
    adv, _ = ADVANTAGES.get("dr_grpo")(
        torch.tensor([1.0, 0.0, 0.0, 1.0]), _ids(0, 0, 0, 0), torch.ones(4, 2)
    )
    assert torch.allclose(adv[:, 0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    none, _ = ADVANTAGES.get("grpo")(
        torch.tensor([1.0, 0.0, 0.0, 1.0]), _ids(0, 0, 0, 0), torch.ones(4, 2), scale="none"
    )
    assert torch.equal(adv, none)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo"])
def test_equal_rewards_give_exact_zero(name: str) -> None:
    # 0.1 * 3 / 3 != 0.1 in floating point: the zero must not depend on the mean being exact.
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 1.0, 0.0])
    adv, metrics = ADVANTAGES.get(name)(rewards, _ids(5, 5, 5, 2, 2, 9, 9), torch.ones(7, 4))
    assert torch.equal(adv[:5], torch.zeros(5, 4))
    assert (adv[5:] != 0).all()
    assert metrics["frac_reward_zero_std"] == pytest.approx(2 / 3)


def test_groups_need_not_be_contiguous() -> None:
    rewards = torch.tensor([1.0, 3.0, 0.0, 5.0])
    adv, _ = ADVANTAGES.get("dr_grpo")(rewards, _ids(7, 3, 7, 3), torch.ones(4, 1))
    assert torch.allclose(adv[:, 0], torch.tensor([0.5, -1.0, -0.5, 1.0]))


def test_singleton_group_has_mean_zero_std_one() -> None:
    rewards = torch.tensor([0.3, 1.0, 0.0])
    adv, _ = ADVANTAGES.get("grpo")(rewards, _ids(0, 1, 1), torch.ones(3, 2))
    assert torch.allclose(adv[0], torch.full((2,), 0.3 / (1 + 1e-6)))
    adv, _ = ADVANTAGES.get("dr_grpo")(rewards, _ids(0, 1, 1), torch.ones(3, 2))
    assert torch.allclose(adv[0], torch.full((2,), 0.3))


def test_batch_scale() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    # batch mean 2/3; squared deviations 4 * 1/9 + 2 * 4/9 = 4/3; unbiased var = 4/15
    batch_std = math.sqrt(4 / 15)
    adv, _ = ADVANTAGES.get("grpo")(
        rewards, _ids(0, 0, 0, 0, 1, 1), torch.ones(6, 1), scale="batch"
    )
    a = 0.5 / (batch_std + 1e-6)
    assert torch.allclose(adv[:, 0], torch.tensor([a, -a, -a, a, 0.0, 0.0]), atol=1e-6)
    assert torch.equal(adv[4:], torch.zeros(2, 1))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo"])
def test_zero_on_masked_tokens(name: str) -> None:
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    adv, _ = ADVANTAGES.get(name)(torch.tensor([2.0, -1.0, 0.5, 3.0]), _ids(0, 0, 0, 0), mask)
    assert adv.shape == (4, 4)
    assert torch.equal(adv[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert (adv[mask == 1] != 0).all()
    # every valid token of a sequence carries the same advantage
    assert torch.equal(adv[2], adv[2, :1].expand(4))


def test_bad_inputs_are_rejected() -> None:
    grpo = ADVANTAGES.get("grpo")
    with pytest.raises(ValueError, match="scale"):
        grpo(torch.ones(2), _ids(0, 0), torch.ones(2, 1), scale="prompt")
    with pytest.raises(ValueError, match="response_mask"):
        grpo(torch.ones(2), _ids(0, 0), torch.ones(3, 1))
    with pytest.raises(ValueError, match="group_ids"):
        grpo(torch.ones(2), torch.zeros(2), torch.ones(2, 1))
    with pytest.raises(ValueError, match="finite"):
        grpo(torch.tensor([1.0, float("nan")]), _ids(0, 0), torch.ones(2, 1))


def test_every_part_cites_a_paper() -> None:
    for name in ADVANTAGES.names():
        doc = (ADVANTAGES.get(name).__doc__ or "").strip().splitlines()[0]
        assert "arXiv" in doc, name
