"""ADORA (Gui & Ren 2025, Notion blog) against policy.md §12: the worked numbers, the edge cases of the verl (LLM)
and OpenRLHF (VLM) code, reduction to GRPO at lam = 1, an independent re-statement of the official group rule,
option domains and a 2-step run of the recipe."""

from __future__ import annotations

import math

import pytest
import torch

import rlfold.algos.adora  # noqa: F401  (registers the part until algos/__init__ imports it)
from rlfold.algos import ADVANTAGES
from rlfold.core.config import check_part_options

adora = ADVANTAGES.get("adora")
grpo = ADVANTAGES.get("grpo")
SQRT3 = math.sqrt(3.0)


def _mask(lengths: list[int], width: int | None = None) -> torch.Tensor:
    width = width or max(lengths)
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()


def _row_adv(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The per-row advantage (every valid token carries the same value)."""
    return (adv * mask).sum(1) / mask.sum(1).clamp(min=1)


def test_worked_example_downweights_by_lam() -> None:
    # policy.md §12(e): correct lengths [300, 500], incorrect [600, 900] => max 500 < mean 750 => x 0.1.
    rewards = torch.tensor([1.1, 1.0, 0.1, 0.0])
    lengths = [300, 500, 600, 900]
    mask = _mask(lengths)
    adv, m = adora(rewards, torch.zeros(4, dtype=torch.long), mask, length_threshold=4054)
    # GRPO by hand: mean 0.55, unbiased std = sqrt(((0.55)^2 + (0.45)^2 + (0.45)^2 + (0.55)^2) / 3)
    std = math.sqrt((2 * 0.55**2 + 2 * 0.45**2) / 3)
    expected = torch.tensor([0.55, 0.45, -0.45, -0.55]) / (std + 1e-6) * 0.1
    torch.testing.assert_close(_row_adv(adv, mask), expected, rtol=1e-5, atol=1e-7)
    assert torch.all(adv[mask == 0] == 0)
    assert m["adora/frac_groups_downweighted"] == 1.0
    assert m["adora/frac_signal_groups_downweighted"] == 1.0


def test_longer_correct_answer_keeps_weight_one() -> None:
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    mask = _mask([200, 800, 600, 900])  # max correct 800 > mean incorrect 750
    adv, m = adora(rewards, torch.zeros(4, dtype=torch.long), mask, length_threshold=4054)
    torch.testing.assert_close(_row_adv(adv, mask), torch.tensor([1, 1, -1, -1]) * 0.5 / (1 / SQRT3 + 1e-6))
    assert m["adora/frac_groups_downweighted"] == 0.0


def test_length_threshold_drops_capped_incorrect_answers_from_the_mean() -> None:
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    ids = torch.zeros(4, dtype=torch.long)
    mask = _mask([300, 500, 400, 5000])  # incorrect 5000 is cut at the cap
    base, _ = grpo(rewards, ids, mask)
    kept, _ = adora(rewards, ids, mask, length_threshold=4054)   # mean short incorrect = 400 < 500 => 1
    down, _ = adora(rewards, ids, mask, length_threshold=10000)  # mean = 2700 > 500 => lam
    assert torch.equal(kept, base)
    torch.testing.assert_close(down, base * 0.1)


def test_lam_one_is_grpo_exactly_and_equal_rewards_give_zero() -> None:
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 3, (24,), generator=g).float() * 0.55
    ids = torch.arange(6).repeat_interleave(4)
    mask = _mask(torch.randint(1, 9, (24,), generator=g).tolist(), 8)
    ref, ref_m = grpo(rewards, ids, mask)
    for variant in ("llm", "vlm"):
        adv, m = adora(rewards, ids, mask, lam=1.0, variant=variant)
        assert torch.equal(adv, ref)
        assert m["frac_reward_zero_std"] == ref_m["frac_reward_zero_std"]
    equal = torch.full((8,), 1.1)
    for variant in ("llm", "vlm"):
        adv, _ = adora(equal, torch.zeros(8, dtype=torch.long), _mask([1, 2, 3, 4, 5, 6, 7, 8]), variant=variant)
        assert torch.equal(adv, torch.zeros(8, 8))


# (rewards, lengths, expected weight llm, expected weight vlm), length_threshold 8
EDGE_CASES = {
    "no correct answer": ([0.0, 0.1, 0.0, 0.1], [2, 3, 4, 5], 0.1, 1.0),
    "all correct (no incorrect)": ([1.0, 1.1, 1.0, 1.1], [2, 3, 4, 5], 1.0, 0.1),
    "incorrect all capped": ([1.0, 1.1, 0.0, 0.1], [2, 3, 8, 8], 1.0, 0.1),
    "no correct, incorrect all capped": ([0.0, 0.1, 0.0, 0.1], [8, 8, 8, 8], 0.1, 1.0),
    "correct longer": ([1.0, 1.1, 0.0, 0.1], [2, 6, 3, 4], 1.0, 1.0),
    "correct not longer (tie)": ([1.0, 1.1, 0.0, 0.1], [2, 4, 4, 4], 0.1, 0.1),
}


@pytest.mark.parametrize("case", list(EDGE_CASES))
@pytest.mark.parametrize("variant", ["llm", "vlm"])
def test_edge_cases_of_both_variants(case: str, variant: str) -> None:
    rewards, lengths, w_llm, w_vlm = EDGE_CASES[case]
    r, ids, mask = torch.tensor(rewards), torch.zeros(4, dtype=torch.long), _mask(lengths, 8)
    base, _ = grpo(r, ids, mask)
    assert base.abs().sum() > 0  # rewards differ, so the weight is visible
    adv, m = adora(r, ids, mask, variant=variant)
    w = w_llm if variant == "llm" else w_vlm
    torch.testing.assert_close(adv, base * w)
    assert m["adora/frac_groups_downweighted"] == (1.0 if w != 1.0 else 0.0)


def test_correct_threshold_is_inclusive_and_configurable() -> None:
    # Default 1.0: exact_match 1.0 without the 0.1 format bonus is correct; 0.1 (format only) is not.
    r, ids = torch.tensor([1.0, 0.1, 0.1]), torch.zeros(3, dtype=torch.long)
    mask = _mask([5, 2, 3], 8)  # correct 5 > mean incorrect 2.5 => weight 1 at threshold 1.0
    base, _ = grpo(r, ids, mask)
    assert torch.equal(adora(r, ids, mask)[0], base)
    # threshold 0.05: all three count as correct => no incorrect answer => llm keeps 1, vlm applies lam
    assert torch.equal(adora(r, ids, mask, correct_threshold=0.05)[0], base)
    torch.testing.assert_close(adora(r, ids, mask, correct_threshold=0.05, variant="vlm")[0], base * 0.1)
    # threshold 1.05: nothing correct => llm applies lam
    torch.testing.assert_close(adora(r, ids, mask, correct_threshold=1.05)[0], base * 0.1)


def _official_rule(scores: list[float], lengths: list[float], *, correct_score: float, lam: float, l_thr: float,
                   vlm: bool) -> float:
    """The group weight, re-stated independently from the two official codes (strict '>' on the score)."""
    pos = [n for s, n in zip(scores, lengths) if s > correct_score]
    neg = [n for s, n in zip(scores, lengths) if s <= correct_score and n < l_thr]
    max_pos = max(pos) if pos else -math.inf
    if vlm:
        mean_neg = sum(neg) / len(neg) if neg else math.inf
        return 1.0 if (max_pos > mean_neg or not pos) else lam
    mean_neg = sum(neg) / len(neg) if neg else -math.inf
    return 1.0 if max_pos > mean_neg else lam


@pytest.mark.parametrize("variant", ["llm", "vlm"])
def test_matches_the_official_group_rule_on_random_batches(variant: str) -> None:
    # Logic-RL-like reward levels and the verl default correct_score 1.01 (no reward equals it, so >= and > agree).
    levels = torch.tensor([-1.0, 0.5, 1.0, 3.0])
    n_groups, size, cap = 12, 6, 40
    outcomes: set[float] = set()
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        rewards = levels[torch.randint(0, 4, (n_groups * size,), generator=g)]
        lengths = torch.randint(1, cap + 1, (n_groups * size,), generator=g)
        perm = torch.randperm(n_groups * size, generator=g)
        ids = torch.arange(n_groups).repeat_interleave(size)[perm] * 7 + 3  # shuffled, non-contiguous ids
        mask = _mask(lengths.tolist(), cap)
        adv, m = adora(rewards, ids, mask, lam=0.25, correct_threshold=1.01, length_threshold=36, variant=variant)
        base, _ = grpo(rewards, ids, mask)
        n_down = 0
        for gid in ids.unique().tolist():
            rows = (ids == gid).nonzero().flatten()
            w = _official_rule(rewards[rows].tolist(), lengths[rows].tolist(), correct_score=1.01, lam=0.25,
                               l_thr=36, vlm=variant == "vlm")
            outcomes.add(w)
            n_down += w != 1.0
            torch.testing.assert_close(adv[rows], base[rows] * w)
        assert m["adora/frac_groups_downweighted"] == pytest.approx(n_down / n_groups)
    assert outcomes == {1.0, 0.25}  # both outcomes are exercised


def test_rows_order_does_not_matter() -> None:
    # Statistics are per group: a batch and any permutation of it give the same per-row advantages.
    g = torch.Generator().manual_seed(5)
    rewards = torch.tensor([0.0, 1.0, 1.1, 0.1] * 4)
    ids = torch.arange(4).repeat_interleave(4)
    mask = _mask(torch.randint(1, 9, (16,), generator=g).tolist(), 8)
    adv, _ = adora(rewards, ids, mask)
    perm = torch.randperm(16, generator=g)
    adv_p, _ = adora(rewards[perm], ids[perm], mask[perm])
    torch.testing.assert_close(adv_p, adv[perm])  # equal up to GRPO's summation order


def test_metrics_count_groups() -> None:
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # groups: down, kept, equal rewards (no correct: down)
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    mask = _mask([2, 5, 6, 3, 4, 4], 8)
    _, m = adora(rewards, ids, mask)
    assert m["adora/frac_groups_downweighted"] == pytest.approx(2 / 3)
    assert m["adora/frac_signal_groups_downweighted"] == pytest.approx(1 / 2)
    assert m["frac_reward_zero_std"] == pytest.approx(1 / 3)


def test_bad_inputs_and_options_are_refused() -> None:
    with pytest.raises(ValueError, match="rewards must be 1-D"):
        adora(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), torch.ones(2, 3))
    with pytest.raises(ValueError, match="response_mask must be"):
        adora(torch.zeros(2), torch.zeros(2, dtype=torch.long), torch.ones(3, 3))
    with pytest.raises(ValueError, match="variant"):
        adora(torch.zeros(2), torch.zeros(2, dtype=torch.long), torch.ones(2, 3), variant="x")
    loc = ("algo", "advantage_kwargs")
    for bad in ({"lam": -0.1}, {"variant": "vl"}, {"length_threshold": 0}, {"correct_threshold": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            check_part_options(loc, "advantage estimator", "adora", adora, bad, n_positional=3)
    check_part_options(loc, "advantage estimator", "adora", adora,
                       {"lam": 0.1, "correct_threshold": 1.0, "length_threshold": 8, "variant": "vlm"}, n_positional=3)


def test_empty_batch() -> None:
    adv, m = adora(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.ones(0, 4))
    assert adv.shape == (0, 4) and m["adora/frac_groups_downweighted"] == 0.0


def test_recipe_runs_two_steps(train_steps) -> None:
    steps = train_steps("adora")
    for r in steps:
        for key in ("actor/pg_loss", "adora/frac_groups_downweighted", "adora/frac_signal_groups_downweighted"):
            assert key in r and math.isfinite(r[key]), key
        assert 0.0 <= r["adora/frac_groups_downweighted"] <= 1.0
