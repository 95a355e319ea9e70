"""Outcome advantage estimators against hand numbers: GRPO (arXiv 2402.03300), Dr. GRPO (2503.20783),
RLOO (2402.14740), OPO (2505.23585), REINFORCE++-baseline (2501.03262)."""

from __future__ import annotations

import math
import statistics

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


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "opo"])
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


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "opo", "reinforce_pp_baseline"])
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


# Parts whose source has no arXiv id, and the kind of source their docstring cites instead.
NO_ARXIV = {"adora": "blog"}


def test_every_part_cites_a_paper() -> None:
    for name in ADVANTAGES.names():
        doc = (ADVANTAGES.get(name).__doc__ or "").strip().splitlines()[0]
        assert "arXiv" in doc or NO_ARXIV.get(name, "arXiv") in doc, name


# --- RLOO (arXiv 2402.14740) ----------------------------------------------------------------------


def test_rloo_hand_example() -> None:
    # k = 4: 1 - (0 + 0 + 1)/3 = 2/3 and 0 - (1 + 0 + 1)/3 = -2/3
    adv, metrics = ADVANTAGES.get("rloo")(
        torch.tensor([1.0, 0.0, 0.0, 1.0]), _ids(0, 0, 0, 0), torch.ones(4, 2)
    )
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3])[:, None].expand(4, 2)
    assert torch.allclose(adv, expected, atol=1e-6)
    assert metrics == {"frac_reward_zero_std": 0.0}


def test_rloo_sums_to_zero_per_group_and_matches_leave_one_out() -> None:
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(9, generator=gen, dtype=torch.float64)
    ids = _ids(4, 1, 4, 9, 1, 4, 9, 1, 4)
    adv, _ = ADVANTAGES.get("rloo")(rewards, ids, torch.ones(9, 1))
    for g in (1, 4, 9):
        rows = (ids == g).nonzero().flatten().tolist()
        assert abs(adv[rows, 0].sum().item()) < 1e-12
        for i in rows:
            others = [rewards[j].item() for j in rows if j != i]
            assert adv[i, 0].item() == pytest.approx(rewards[i].item() - sum(others) / len(others))


def test_rloo_singleton_keeps_reward() -> None:
    adv, _ = ADVANTAGES.get("rloo")(torch.tensor([0.3, 1.0, 0.0]), _ids(0, 1, 1), torch.ones(3, 2))
    assert torch.allclose(adv, torch.tensor([[0.3, 0.3], [1.0, 1.0], [-1.0, -1.0]]))


# --- OPO (arXiv 2505.23585) -----------------------------------------------------------------------


def test_opo_hand_example_unequal_lengths() -> None:
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 2.0, 0.5, 0.7])
    ids = _ids(3, 3, 3, 3, 8, 8, 5)
    lengths = [1, 3, 2, 4, 3, 1, 2]
    mask = torch.tensor([[1] * n + [0] * (4 - n) for n in lengths])
    adv, metrics = ADVANTAGES.get("opo")(rewards, ids, mask)
    # group 3: b = (1*1 + 3*0 + 2*1 + 4*0) / 10 = 0.3; group 8: b = (3*2 + 1*0.5) / 4 = 1.625;
    # singleton group 5: baseline 0.
    seq = torch.tensor([0.7, -0.3, 0.7, -0.3, 0.375, -1.125, 0.7])
    expected = torch.where(mask.bool(), seq[:, None].expand(7, 4), torch.zeros(7, 4))
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.equal(adv[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert metrics == {"frac_reward_zero_std": 0.0}


def test_opo_equal_lengths_is_dr_grpo() -> None:
    gen = torch.Generator().manual_seed(1)
    rewards = torch.rand(8, generator=gen)
    ids = _ids(2, 0, 2, 0, 2, 7, 7, 0)
    mask = torch.ones(8, 5)
    mask[:, 3:] = 0
    opo, _ = ADVANTAGES.get("opo")(rewards, ids, mask)
    dr, _ = ADVANTAGES.get("dr_grpo")(rewards, ids, mask)
    assert torch.allclose(opo, dr, atol=1e-6)
    assert (opo[:, :3] != 0).all()


# --- REINFORCE++-baseline (arXiv 2501.03262) ------------------------------------------------------


def test_reinforce_pp_baseline_hand_example() -> None:
    # centred [0.5, -0.5]; valid tokens [0.5, 0.5, -0.5]: mean 1/6, unbiased var (6/9)/2 = 1/3
    adv, _ = ADVANTAGES.get("reinforce_pp_baseline")(
        torch.tensor([1.0, 0.0]), _ids(0, 0), torch.tensor([[1, 1], [1, 0]])
    )
    s = math.sqrt(1 / 3 + 1e-8)
    expected = torch.tensor([[(1 / 3) / s, (1 / 3) / s], [(-2 / 3) / s, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert adv[1, 1].item() == 0.0


def test_reinforce_pp_baseline_is_whitened_over_the_batch() -> None:
    gen = torch.Generator().manual_seed(2)
    rewards = torch.rand(6, generator=gen)
    lengths = [5, 2, 4, 1, 3, 5]
    mask = torch.tensor([[1] * n + [0] * (5 - n) for n in lengths])
    adv, _ = ADVANTAGES.get("reinforce_pp_baseline")(rewards, _ids(0, 0, 0, 1, 1, 1), mask)
    valid = adv[mask.bool()].tolist()
    assert abs(statistics.mean(valid)) < 1e-5
    assert statistics.variance(valid) == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(adv[mask == 0], torch.zeros(int((mask == 0).sum())))


def test_reinforce_pp_baseline_equal_rewards_all_zero() -> None:
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [0, 0, 0]])
    adv, metrics = ADVANTAGES.get("reinforce_pp_baseline")(rewards, _ids(4, 4, 4, 6, 6), mask)
    assert torch.equal(adv, torch.zeros(5, 3))
    assert metrics == {"frac_reward_zero_std": 1.0}


def test_grpo_passk_credits_only_the_best_response_of_each_group():
    from rlfold.algos.advantages import grpo_passk

    rewards = torch.tensor([0.0, 1.0, 0.5, 0.0, 2.0, 2.0, 1.0, 3.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 7])  # group 7 is a singleton
    mask = torch.ones(8, 3)
    adv, _ = grpo_passk(rewards, groups, mask, norm_by_std=False)
    # group 0: best 1.0, second 0.5 -> 0.5 on row 1 only; group 1: tie at 2.0 -> gap 0; singleton -> 0
    assert adv[:, 0].tolist() == [0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    adv, _ = grpo_passk(rewards, groups, mask)
    std0 = torch.tensor([0.0, 1.0, 0.5, 0.0]).std()  # unbiased: sqrt(0.6875/3) = 0.47871
    assert adv[1, 0].item() == pytest.approx(0.5 / (0.47871 + 1e-6), rel=1e-4)
    assert adv[1, 0].item() == pytest.approx(0.5 / (std0.item() + 1e-6), rel=1e-6)
    assert (adv[torch.arange(8) != 1] == 0).all()
    eq, _ = grpo_passk(torch.ones(4), torch.zeros(4, dtype=torch.long), torch.ones(4, 2))
    assert (eq == 0).all()
