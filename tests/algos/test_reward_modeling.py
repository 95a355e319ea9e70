"""Reward-model objectives against the worked numbers of ``methods/preference.md`` sections 11-13."""

from __future__ import annotations

import math

import pytest
import torch

from rlfold.algos.reward_modeling import (adaptive_margin, bradley_terry_loss, bradley_terry_losses, flip_lowest,
                                          preference_strength, sentence_scores, split_sentences, swap_where)

ONE, ZERO = torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)


def test_bt_worked_numbers():
    assert float(bradley_terry_loss(ONE, ZERO)) == pytest.approx(0.313262, abs=1e-6)
    assert float(bradley_terry_loss(ONE, ZERO, margin=torch.ones(1, dtype=torch.float64))) == pytest.approx(
        math.log(2), abs=1e-9)
    assert float(bradley_terry_loss(ONE, ZERO, center_coef=0.01)) == pytest.approx(0.323262, abs=1e-6)


def test_adaptive_margin_and_smoothing_worked_numbers():
    m = adaptive_margin(torch.tensor([0.5], dtype=torch.float64))
    assert float(bradley_terry_loss(ONE, ZERO, margin=m)) == pytest.approx(0.474077, abs=1e-6)
    assert float(bradley_terry_loss(ONE, ZERO, label_smoothing=0.1)) == pytest.approx(0.413262, abs=1e-6)
    # the scale multiplies the strength, the clip bounds it
    s = torch.tensor([-4.0, 1.0, 4.0])
    assert adaptive_margin(s, scale=0.5).tolist() == [-2.0, 0.5, 2.0]
    assert adaptive_margin(s, scale=0.5, min_margin=-1.0, max_margin=1.0).tolist() == [-1.0, 0.5, 1.0]


def test_bt_is_the_mean_over_pairs_and_matches_softplus():
    rc, rr = torch.tensor([2.0, -1.0, 0.3]), torch.tensor([0.5, 1.0, 0.3])
    per = bradley_terry_losses(rc, rr)
    assert torch.allclose(per, torch.nn.functional.softplus(-(rc - rr)))
    assert float(bradley_terry_loss(rc, rr)) == pytest.approx(float(per.mean()))
    center = float(((rc + rr) ** 2).mean())
    assert float(bradley_terry_loss(rc, rr, center_coef=0.1)) == pytest.approx(float(per.mean()) + 0.1 * center)


def test_smoothing_half_is_symmetric_and_margin_enters_smoothing():
    rc, rr = torch.tensor([3.0, -2.0]), torch.tensor([0.0, 0.0])
    half = bradley_terry_losses(rc, rr, label_smoothing=0.5)
    swapped = bradley_terry_losses(rr, rc, label_smoothing=0.5)
    assert torch.allclose(half, swapped)
    m = torch.tensor([1.0, 1.0])
    a = 0.2
    z = rc - rr - m
    want = -(1 - a) * torch.nn.functional.logsigmoid(z) - a * torch.nn.functional.logsigmoid(-z)
    assert torch.allclose(bradley_terry_losses(rc, rr, margin=m, label_smoothing=a), want)


def test_bt_is_shift_invariant_but_the_centring_term_is_not():
    rc, rr = torch.tensor([1.0, 0.2, -0.7]), torch.tensor([0.0, 0.9, -1.5])
    c = 3.0
    assert float(bradley_terry_loss(rc + c, rr + c)) == pytest.approx(float(bradley_terry_loss(rc, rr)), abs=1e-6)
    assert float(bradley_terry_loss(rc + c, rr + c, center_coef=0.01)) != pytest.approx(
        float(bradley_terry_loss(rc, rr, center_coef=0.01)), abs=1e-3)


def test_bt_gradient_pushes_chosen_up_and_rejected_down():
    rc = torch.tensor([0.0, 1.0], requires_grad=True)
    rr = torch.tensor([0.0, 2.0], requires_grad=True)
    bradley_terry_loss(rc, rr).backward()
    assert (rc.grad < 0).all() and (rr.grad > 0).all()
    # d/d r_c of mean softplus(-(r_c - r_r)) = -sigma(-(d)) / N
    assert rc.grad.tolist() == pytest.approx([-0.5 / 2, -torch.sigmoid(torch.tensor(1.0)).item() / 2])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="label_smoothing"):
        bradley_terry_loss(ONE, ZERO, label_smoothing=0.7)
    with pytest.raises(ValueError, match="center_coef"):
        bradley_terry_loss(ONE, ZERO, center_coef=-1)
    with pytest.raises(ValueError, match="shape"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="margin"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(2), margin=torch.zeros(3))
    with pytest.raises(ValueError, match="fraction"):
        flip_lowest(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match=r"\[M, N\]"):
        preference_strength(torch.zeros(3))


def test_preference_strength_mean_and_std_over_members():
    diffs = torch.tensor([[1.0, -2.0, 0.0], [3.0, -2.0, 1.0]])
    mean, std = preference_strength(diffs)
    assert mean.tolist() == [2.0, -2.0, 0.5]
    assert std.tolist() == pytest.approx([math.sqrt(2.0), 0.0, math.sqrt(0.5)])
    mean1, std1 = preference_strength(diffs[:1])
    assert mean1.tolist() == diffs[0].tolist() and std1.tolist() == [0.0, 0.0, 0.0]


def test_flip_lowest_picks_the_floor_fraction_of_lowest_strength_with_index_ties():
    s = torch.tensor([0.5, -1.0, 2.0, -1.0, 0.1, 3.0, -0.2, 0.0, 1.0, 4.0])
    assert flip_lowest(s, 0.2).nonzero().flatten().tolist() == [1, 3]
    assert flip_lowest(s, 0.3).nonzero().flatten().tolist() == [1, 3, 6]
    assert flip_lowest(s, 0.29).sum() == 2  # floor(2.9)
    assert not flip_lowest(s, 0.0).any()
    assert not flip_lowest(torch.zeros(0), 0.2).any()


def test_flipping_is_an_involution():
    chosen, rejected = torch.arange(6.0), -torch.arange(6.0)
    mask = flip_lowest(torch.tensor([3.0, -1.0, 0.5, -4.0, 2.0, 0.0]), 0.5)
    c1, r1 = swap_where(mask, chosen, rejected)
    assert not torch.equal(c1, chosen)
    assert torch.equal(c1[mask], rejected[mask]) and torch.equal(c1[~mask], chosen[~mask])
    c2, r2 = swap_where(mask, c1, r1)
    assert torch.equal(c2, chosen) and torch.equal(r2, rejected)
    # rows of token ids swap whole
    a, b = torch.zeros(6, 4), torch.ones(6, 4)
    a1, _ = swap_where(mask, a, b)
    assert torch.equal(a1[mask], torch.ones(int(mask.sum()), 4))


def test_flipping_the_labels_negates_the_strength():
    diffs = torch.tensor([[1.0, -3.0], [2.0, -1.0]])
    mean, _ = preference_strength(diffs)
    mask = torch.tensor([False, True])
    mean_after, _ = preference_strength(torch.where(mask, -diffs, diffs))
    assert torch.equal(mean_after, torch.where(mask, -mean, mean))


def test_sentence_weights_sum_to_one_and_the_score_lies_between_sentence_rewards():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 12, generator=g)
    starts = torch.tensor([[2, 5, 8], [3, 6, 0], [1, 0, 0]])
    ends = torch.tensor([[5, 8, 11], [6, 10, 0], [9, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
    logits = torch.randn(3, 3, generator=g)
    score, r, w = sentence_scores(values, starts, ends, logits, mask)
    assert torch.allclose(w.sum(1), torch.ones(3))
    assert (w[~mask] == 0).all()
    expect = values.gather(1, ends) - values.gather(1, starts)
    assert torch.allclose(r[mask], expect[mask])
    for b in range(3):
        rk = r[b][mask[b]]
        assert float(rk.min()) - 1e-6 <= float(score[b]) <= float(rk.max()) + 1e-6
    assert float(score[2]) == pytest.approx(float(values[2, 9] - values[2, 1]))  # one sentence: its reward


def test_sentence_telescoping_with_uniform_sum_weights():
    values = torch.tensor([[0.0, 1.0, 3.0, 6.0, 10.0]])
    starts, ends = torch.tensor([[0, 2, 3]]), torch.tensor([[2, 3, 4]])
    _, r, _ = sentence_scores(values, starts, ends, torch.zeros(1, 3))
    assert float(r.sum()) == pytest.approx(float(values[0, 4] - values[0, 0]))


def test_sentence_gradient_flows_only_through_boundary_positions():
    values = torch.randn(2, 10, requires_grad=True)
    logits = torch.randn(2, 2, requires_grad=True)
    starts, ends = torch.tensor([[1, 4], [2, 6]]), torch.tensor([[4, 7], [6, 9]])
    score, _, _ = sentence_scores(values, starts, ends, logits)
    score.sum().backward()
    boundary = torch.zeros(2, 10, dtype=torch.bool)
    for b in range(2):
        boundary[b, starts[b]] = True
        boundary[b, ends[b]] = True
    assert (values.grad[~boundary] == 0).all()
    assert (values.grad[boundary] != 0).all()
    assert logits.grad.abs().sum() > 0


def test_sentence_rows_need_a_sentence():
    with pytest.raises(ValueError, match="at least one sentence"):
        sentence_scores(torch.zeros(1, 3), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long),
                        torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.bool))


def test_split_sentences_covers_the_text():
    text = "First part. Second one! Third?\nlast"
    spans = split_sentences(text)
    assert "".join(text[a:b] for a, b in spans) == text
    assert [text[a:b] for a, b in spans] == ["First part. ", "Second one! ", "Third?\n", "last"]
    assert split_sentences("42") == [(0, 2)]
    assert split_sentences("") == [(0, 0)]
