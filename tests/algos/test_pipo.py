"""PIPO / PIRL layback replay (arXiv 2604.00860): policy.md section 13 (e) and the part's state."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from rlfold.algos.pipo import Pipo, layback_coef, progress_score, rescale_group_advantages
from rlfold.algos.replay import REPLAYS, Replay


@dataclass
class Batch:
    advantages: torch.Tensor
    loss_mask: torch.Tensor
    old_logprobs: torch.Tensor | None
    group_ids: torch.Tensor | None


def _batch(seq_adv: list[float], groups: list[int], width: int = 3) -> Batch:
    adv = torch.tensor(seq_adv)[:, None].expand(-1, width).clone()
    mask = torch.ones(len(seq_adv), width)
    return Batch(adv, mask, torch.zeros(len(seq_adv), width), torch.tensor(groups))


# ----- (e): the worked numbers ---------------------------------------------------------------------------


def test_xi_of_the_worked_example_is_the_coefficient():
    xi = progress_score([0.4, 0.5, 0.6], 0.6)
    assert xi == pytest.approx(0.1 / math.sqrt(0.02 / 3), abs=1e-12)
    assert xi == pytest.approx(1.2247449, abs=1e-6)
    assert layback_coef(xi, loss_scale_neg=0.1) == xi


def test_negative_xi_is_scaled_by_loss_scale_neg():
    xi = progress_score([0.4, 0.5, 0.6], 0.4)
    assert xi == pytest.approx(-1.2247449, abs=1e-6)
    assert layback_coef(xi, 0.1) == pytest.approx(-0.12247449, abs=1e-6)
    assert layback_coef(xi, 0.0) == 0.0


def test_sigma_below_eps_is_one():
    assert progress_score([0.5, 0.5, 0.5], 0.7) == pytest.approx(0.2, abs=1e-12)
    assert progress_score([0.5], 0.25) == pytest.approx(-0.25, abs=1e-12)


def test_balanced_group_is_unchanged_by_the_rescale():
    b = _batch([1.0, -1.0, 1.0, -1.0], [0, 0, 0, 0])
    out = rescale_group_advantages(b.advantages, b.loss_mask, b.group_ids)
    assert torch.allclose(out, b.advantages, atol=1e-7)


def test_rescale_uses_each_groups_size_and_token_means():
    # group 0: token means 2 and -1 (masked tokens do not count) -> G=2, sum |.| = 3; group 1 all zero -> 0
    adv = torch.tensor([[2.0, 2.0, 9.0], [-1.0, -1.0, -1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    out = rescale_group_advantages(adv, mask, torch.tensor([5, 5, 7, 7]))
    assert torch.allclose(out[0], torch.tensor([4 / 3, 4 / 3, 0.0]), atol=1e-7)
    assert torch.allclose(out[1], torch.full((3,), -2 / 3), atol=1e-7)
    assert torch.equal(out[2:], torch.zeros(2, 3))
    assert torch.equal(torch.sign(out[mask > 0]), torch.sign(adv[mask > 0]))  # signs kept
    assert float(out[:2].abs().amax(dim=1).sum()) == pytest.approx(2.0, abs=1e-6)  # sum_j |A~_j| = G


# ----- the stateful part ---------------------------------------------------------------------------------


def _fed(part: Pipo, means: list[float], batches: list[Batch]) -> list[tuple[Batch | None, dict]]:
    return [part.after_update(b, m, i) for i, (m, b) in enumerate(zip(means, batches))]


def test_registered_and_a_replay():
    assert REPLAYS.get("pipo") is Pipo
    assert isinstance(Pipo(), Replay)


def test_replays_the_previous_batch_times_c():
    first, second = _batch([1.0, -1.0, 3.0, -1.0], [0, 0, 1, 1]), _batch([0.5, -0.5, 0.5, -0.5], [0, 0, 1, 1])
    part = Pipo(min_steps_before_layback=1)
    out = _fed(part, [0.2, 0.5], [first, second])
    assert out[0][0] is None and out[0][1] == {"replay/pipo_active": 0.0}
    batch, metrics = out[1]
    assert metrics == {"replay/pipo_xi": pytest.approx(0.3), "replay/pipo_coef": pytest.approx(0.3),
                       "replay/pipo_active": 1.0}
    assert batch is not None and batch.old_logprobs is first.old_logprobs  # the cached batch, its old log-probs
    expected = 0.3 * torch.tensor([1.0, -1.0, 1.5, -0.5])[:, None].expand(-1, 3)
    assert torch.allclose(batch.advantages, expected, atol=1e-6)
    assert torch.equal(first.advantages[:, 0], torch.tensor([1.0, -1.0, 3.0, -1.0]))  # the cache is not modified


def test_negative_xi_with_zero_loss_scale_neg_replays_nothing():
    part = Pipo(loss_scale_neg=0.0, min_steps_before_layback=1)
    batch, metrics = _fed(part, [0.6, 0.3], [_batch([1.0, -1.0], [0, 0])] * 2)[1]
    assert batch is None and metrics["replay/pipo_coef"] == 0.0 and metrics["replay/pipo_active"] == 0.0
    part = Pipo(loss_scale_neg=0.1, min_steps_before_layback=1)
    batch, metrics = _fed(part, [0.6, 0.3], [_batch([1.0, -1.0], [0, 0])] * 2)[1]
    assert batch is not None and torch.allclose(batch.advantages[:, 0], torch.tensor([-0.03, 0.03]), atol=1e-7)


def test_no_replay_before_min_steps():
    means = [0.1, 0.2, 0.3, 0.4, 0.5]
    out = _fed(Pipo(min_steps_before_layback=3), means, [_batch([1.0, -1.0], [0, 0])] * 5)
    assert [b is not None for b, _ in out] == [False, False, False, True, True]
    assert [m["replay/pipo_active"] for _, m in out] == [0.0, 0.0, 0.0, 1.0, 1.0]
    default = _fed(Pipo(), [0.1 * i for i in range(10)], [_batch([1.0, -1.0], [0, 0])] * 10)
    assert [b is not None for b, _ in default] == [False] * 8 + [True, True]  # from step 8 (the scripts')


def test_history_is_the_last_window_means_before_the_current_one():
    part = Pipo(window=3, min_steps_before_layback=0)
    out = _fed(part, [0.0, 0.4, 0.5, 0.6, 0.6], [_batch([1.0, -1.0], [0, 0])] * 5)
    assert part.history == [0.5, 0.6, 0.6]
    assert out[4][1]["replay/pipo_xi"] == pytest.approx(1.2247449, abs=1e-6)  # against [0.4, 0.5, 0.6]


def test_state_round_trip_keeps_the_history():
    part = Pipo(window=4, min_steps_before_layback=0)
    _fed(part, [0.1, 0.3, 0.2], [_batch([1.0, -1.0], [0, 0])] * 3)
    fresh = Pipo(window=4, min_steps_before_layback=0)
    fresh.load_state_dict(part.state_dict())
    assert fresh.history == part.history == [0.1, 0.3, 0.2]
    assert fresh.previous is part.previous is not None  # the cached batch travels in the state
    b = _batch([3.0, -1.0], [0, 0])
    got, metrics = fresh.after_update(b, 0.4, 3)
    want, expected = part.after_update(b, 0.4, 3)
    assert metrics == expected and torch.equal(got.advantages, want.advantages)
    assert fresh.history == part.history
    state = part.state_dict()
    state["history"].append(9.0)  # a copy: the snapshot of a step never aliases the live history
    assert part.history == [0.1, 0.3, 0.2, 0.4]
