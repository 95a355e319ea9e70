"""HDPO (arXiv 2604.08545): accuracy advantage over the group, tool-efficiency advantage over its correct rollouts."""

from __future__ import annotations

import pytest
import torch

from rlfold.algos import ADVANTAGES
from rlfold.core.registry import needed_inputs

HDPO = ADVANTAGES.get("hdpo")


def _grpo(r):
    r = torch.tensor(r, dtype=torch.float64)
    return (r - r.mean()) / (r.std() + 1e-6)


def test_the_methods_worked_example():
    # tools [2, 0, 1, 1], correct [1, 1, 0, 1]: r_tool = [1/3, 1, 0, 1/2]; over Q the GRPO of [1/3, 1, 1/2]
    tools, correct = [2, 0, 1, 1], [1, 1, 0, 1]
    r_ans, r_fmt = torch.tensor(correct, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    r_acc = 0.9 * r_ans + 0.1 * r_fmt
    r_tool = torch.tensor([1 / (t + 1) if c else 0.0 for t, c in zip(tools, correct)], dtype=torch.float64)
    assert r_tool.tolist() == pytest.approx([1 / 3, 1.0, 0.0, 0.5])
    cols = torch.stack([r_acc, r_tool], 1)
    adv, m = HDPO(r_acc, torch.zeros(4, dtype=torch.long), torch.ones(4, 3), reward_columns=cols, w_tool=0.15)
    a_tool = torch.zeros(4, dtype=torch.float64)
    a_tool[[0, 1, 3]] = _grpo([1 / 3, 1.0, 0.5])
    expected = _grpo(r_acc.tolist()) + 0.15 * a_tool
    assert torch.allclose(adv[:, 0].double(), expected, atol=1e-6) and (adv[:, 1] == adv[:, 0]).all()
    assert adv[2, 0].item() == pytest.approx(float(_grpo(r_acc.tolist())[2]), abs=1e-6)  # incorrect: A_tool = 0
    assert m["hdpo/frac_groups_tool_signal"] == 1.0


def test_w_tool_zero_is_grpo_and_fewer_than_two_correct_give_no_tool_signal():
    gen = torch.Generator().manual_seed(0)
    r_acc = torch.rand(12, generator=gen, dtype=torch.float64)
    r_tool = torch.rand(12, generator=gen, dtype=torch.float64) * (torch.rand(12, generator=gen) > 0.4)
    ids = torch.arange(3).repeat_interleave(4)
    mask = torch.ones(12, 2)
    cols = torch.stack([r_acc, r_tool], 1)
    adv, _ = HDPO(r_acc, ids, mask, reward_columns=cols, w_tool=0.0)
    ref, _ = ADVANTAGES.get("grpo")(r_acc, ids, mask)
    assert torch.allclose(adv, ref.float(), atol=1e-6)
    one_correct = torch.tensor([0.5, 0, 0, 0], dtype=torch.float64)
    r = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    a1, m1 = HDPO(r, torch.zeros(4, dtype=torch.long), torch.ones(4, 1), reward_columns=torch.stack([r, one_correct], 1))
    a0, _ = HDPO(r, torch.zeros(4, dtype=torch.long), torch.ones(4, 1), reward_columns=torch.stack([r, one_correct], 1),
                 w_tool=0.0)
    assert torch.equal(a1, a0) and m1["hdpo/frac_groups_tool_signal"] == 0.0


def test_equal_rewards_give_zero_advantage_and_masked_tokens_stay_zero():
    r = torch.full((4,), 0.9, dtype=torch.float64)
    tool = torch.full((4,), 0.5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]])
    adv, _ = HDPO(r, torch.zeros(4, dtype=torch.long), mask, reward_columns=torch.stack([r, tool], 1))
    assert (adv == 0).all()


def test_columns_are_checked():
    r = torch.ones(2)
    with pytest.raises(ValueError, match="tool_column=3"):
        HDPO(r, torch.zeros(2, dtype=torch.long), torch.ones(2, 1), reward_columns=torch.ones(2, 2), tool_column=3)
    with pytest.raises(ValueError, match=r"\[N, F\]"):
        HDPO(r, torch.zeros(2, dtype=torch.long), torch.ones(2, 1), reward_columns=torch.ones(3, 2))
    assert needed_inputs(HDPO) == ("reward_columns",)
