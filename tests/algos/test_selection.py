"""Selection parts against hand-computed numbers: DAPO's overlong filtering and dynamic sampling (arXiv 2503.14476),
top-entropy tokens (2506.01939), PF-PPO (2409.06957), truncated importance sampling (1802.01561)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from rlfold.algos import SELECTIONS, selection
from rlfold.core.registry import needed_inputs
from rlfold.algos.selection import (
    Selection,
    SelectionInput,
    pf_ppo_weights,
)

LN = math.log


def _ids(*ids: int) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long)


def _inp(
    n: int = 4,
    r: int = 3,
    *,
    rewards: torch.Tensor | None = None,
    group_ids: torch.Tensor | None = None,
    response_mask: torch.Tensor | None = None,
    truncated: torch.Tensor | None = None,
    old_logprobs: torch.Tensor | None = None,
    behaviour_logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> SelectionInput:
    gen = torch.Generator().manual_seed(0)
    beh = -torch.rand(n, r, generator=gen) * 3
    return SelectionInput(
        rewards=torch.zeros(n) if rewards is None else rewards,
        group_ids=torch.zeros(n, dtype=torch.long) if group_ids is None else group_ids,
        response_mask=torch.ones(n, r) if response_mask is None else response_mask,
        advantages=torch.zeros(n, r),
        truncated=torch.zeros(n, dtype=torch.bool) if truncated is None else truncated,
        old_logprobs=beh.clone() if old_logprobs is None else old_logprobs,
        behaviour_logprobs=beh if behaviour_logprobs is None else behaviour_logprobs,
        entropy=entropy,
    )


# ---------------------------------------------------------------- registry contract


def test_every_selection_cites_a_paper_and_has_the_part_signature() -> None:
    names = SELECTIONS.names()
    assert {"mask_truncated", "top_entropy", "pf_ppo", "tis"} <= set(names)
    for name in names:
        fn = SELECTIONS.get(name)
        first = (fn.__doc__ or "").strip().splitlines()[0]
        assert "arXiv" in first, name
        params = list(inspect.signature(fn).parameters.values())
        assert params[0].name == "inp"
        assert "generator" in inspect.signature(fn).parameters, name
        for p in params[1:]:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, (name, p.name)
            # trainer inputs (@needs) and options a recipe must set (after_marker's marker) have no default
            if p.name not in needed_inputs(fn) and (name, p.name) != ("after_marker", "marker"):
                assert p.default is not inspect.Parameter.empty, (name, p.name)
    doc = selection.tis.__doc__ or ""
    assert "1802.01561" in doc and "Yao et al. 2025" in doc


def test_selection_input_checks_shapes() -> None:
    with pytest.raises(ValueError, match="group_ids"):
        _inp(group_ids=_ids(0, 0, 0))
    with pytest.raises(ValueError, match="group_ids must be an integer"):
        _inp(group_ids=torch.zeros(4))
    with pytest.raises(ValueError, match="response_mask"):
        _inp(response_mask=torch.ones(3, 3))
    with pytest.raises(ValueError, match="entropy"):
        _inp(entropy=torch.ones(4, 2))
    with pytest.raises(ValueError, match="truncated"):
        _inp(truncated=torch.zeros(4))


# ---------------------------------------------------------------- mask_truncated


def test_mask_truncated_zeroes_truncated_rows_only() -> None:
    mask = torch.tensor([[1.0, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    inp = _inp(response_mask=mask, truncated=torch.tensor([False, True, False, True]))
    sel = SELECTIONS.get("mask_truncated")(inp)
    assert sel.rows is None and sel.token_weights is None
    assert torch.equal(sel.token_mask[1], torch.zeros(3))
    assert torch.equal(sel.token_mask[3], torch.zeros(3))
    new_mask = mask * sel.token_mask
    assert torch.equal(new_mask[[0, 2]], mask[[0, 2]])  # finished rows untouched
    assert new_mask[[1, 3]].sum() == 0
    assert sel.token_mask.dtype == mask.dtype
    assert sel.metrics == {"selection/truncated_frac": 0.5}
    assert torch.equal(inp.response_mask, mask)  # input not modified


def test_mask_truncated_no_truncation_is_identity() -> None:
    sel = SELECTIONS.get("mask_truncated")(_inp())
    assert torch.equal(sel.token_mask, torch.ones(4, 3))
    assert sel.metrics["selection/truncated_frac"] == 0.0


# ---------------------------------------------------------------- top_entropy


def _entropy_example() -> SelectionInput:
    # Valid entropies sorted: 0.1 0.3 0.5 0.7 0.9; the padded 5.0 must be ignored.
    entropy = torch.tensor([[0.1, 0.5, 0.9], [0.3, 0.7, 5.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    return _inp(2, 3, response_mask=mask, entropy=entropy)


def test_top_entropy_hand_example() -> None:
    inp = _entropy_example()
    part = SELECTIONS.get("top_entropy")
    # rho = 0.4: 0.6-quantile, position 0.6 * 4 = 2.4 -> 0.5 + 0.4 * (0.7 - 0.5) = 0.58.
    sel = part(inp, quantile=0.4)
    assert sel.metrics["selection/top_entropy_threshold"] == pytest.approx(0.58, abs=1e-6)
    assert sel.metrics["selection/kept_token_frac"] == pytest.approx(2 / 5)
    assert torch.equal(sel.token_mask, torch.tensor([[0.0, 0, 1], [0, 1, 0]]))
    # default rho = 0.2: 0.8-quantile, position 3.2 -> 0.7 + 0.2 * 0.2 = 0.74.
    sel = part(inp)
    assert sel.metrics["selection/top_entropy_threshold"] == pytest.approx(0.74, abs=1e-6)
    assert torch.equal(sel.token_mask, torch.tensor([[0.0, 0, 1], [0, 0, 0]]))
    assert sel.metrics["selection/kept_token_frac"] == pytest.approx(1 / 5)


def test_top_entropy_quantile_one_keeps_every_valid_token() -> None:
    gen = torch.Generator().manual_seed(3)
    mask = (torch.rand(6, 7, generator=gen) > 0.3).float()
    entropy = torch.rand(6, 7, generator=gen) * 4
    sel = SELECTIONS.get("top_entropy")(_inp(6, 7, response_mask=mask, entropy=entropy), quantile=1.0)
    assert torch.equal(sel.token_mask, mask)
    assert sel.metrics["selection/kept_token_frac"] == 1.0
    assert sel.metrics["selection/top_entropy_threshold"] == pytest.approx(
        float(entropy[mask.bool()].min())
    )


def test_top_entropy_errors_and_empty() -> None:
    part = SELECTIONS.get("top_entropy")
    with pytest.raises(ValueError, match="entropy is None"):
        part(_inp())
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="quantile"):
            part(_entropy_example(), quantile=bad)
    empty = _inp(2, 3, response_mask=torch.zeros(2, 3), entropy=torch.ones(2, 3))
    sel = part(empty)
    assert torch.equal(sel.token_mask, torch.zeros(2, 3))
    assert sel.metrics["selection/kept_token_frac"] == 0.0


def test_large_batch_quantile_matches_torch_quantile(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(101, generator=torch.Generator().manual_seed(1))
    expected = {q: torch.quantile(x, q) for q in (0.0, 0.2, 0.5, 0.8, 0.999, 1.0)}
    monkeypatch.setattr(selection, "_QUANTILE_MAX_NUMEL", 0)  # force the kthvalue path
    for q, value in expected.items():
        assert torch.allclose(selection._linear_quantile(x, q), value, atol=1e-6), q


# ---------------------------------------------------------------- pf_ppo


def test_pf_ppo_weights_hand_example() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0, 2.0, -3.0])
    ids = _ids(0, 0, 0, 1, 1, 1)
    eps = 1e-8
    w = pf_ppo_weights(rewards, ids, mode="best_worst", scope="group")
    assert torch.allclose(w, torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.float64) + eps, rtol=0, atol=1e-12)
    w = pf_ppo_weights(rewards, ids, mode="best_worst", scope="batch")  # max 2, min -3
    assert torch.allclose(w, torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.float64) + eps, rtol=0, atol=1e-12)
    w = pf_ppo_weights(rewards, ids, mode="best_random", scope="group")
    expected = torch.tensor([0.4, 0.1, 0.1, 0.4, 0.4, 0.1], dtype=torch.float64) + eps
    assert torch.allclose(w, expected, rtol=0, atol=1e-12)
    w = pf_ppo_weights(rewards, ids, mode="best_random", scope="batch")
    expected = torch.tensor([0.1, 0.1, 0.1, 0.4, 0.4, 0.1], dtype=torch.float64) + eps
    assert torch.allclose(w, expected, rtol=0, atol=1e-12)
    w = pf_ppo_weights(rewards, ids, mode="pow", power=2.0)
    expected = torch.tensor([1.0, 0.0, 0.25, 4.0, 4.0, 9.0], dtype=torch.float64) + eps
    assert torch.allclose(w, expected, rtol=0, atol=1e-12)
    w = pf_ppo_weights(rewards, ids, mode="pow", power=1.0)
    assert torch.allclose(w, rewards.abs().double() + eps, rtol=0, atol=1e-12)


def test_pf_ppo_best_worst_group_returns_only_group_max_or_min() -> None:
    rewards = torch.tensor([0.2, 0.9, 0.5, 0.1, 3.0, 1.0, 2.0, 0.0])
    ids = _ids(4, 4, 4, 4, 7, 7, 7, 7)
    inp = _inp(8, 2, rewards=rewards, group_ids=ids)
    allowed = {1, 3, 4, 7}  # group 4: max row 1, min row 3; group 7: max row 4, min row 7
    gen = torch.Generator().manual_seed(0)
    seen: set[int] = set()
    for _ in range(200):
        sel = SELECTIONS.get("pf_ppo")(inp, generator=gen)
        assert sel.token_mask is None and sel.token_weights is None
        rows = sel.rows.tolist()
        assert len(rows) == 8
        seen |= set(rows)
        # group scope keeps each group's count and position: row i is drawn from i's group.
        assert torch.equal(ids[sel.rows], ids)
        assert sel.metrics["selection/unique_rows_frac"] == len(set(rows)) / 8
    assert seen == allowed


def test_pf_ppo_group_scope_keeps_counts_with_interleaved_groups() -> None:
    ids = _ids(2, 0, 2, 1, 0, 2, 1)
    rewards = torch.tensor([1.0, 0.0, 2.0, 5.0, 1.0, 0.5, 5.0])
    inp = _inp(7, 1, rewards=rewards, group_ids=ids)
    for mode in ("best_worst", "best_random", "pow"):
        sel = SELECTIONS.get("pf_ppo")(inp, mode=mode, generator=torch.Generator().manual_seed(5))
        assert torch.equal(ids[sel.rows], ids), mode
        assert torch.equal(torch.bincount(ids[sel.rows]), torch.bincount(ids))


def test_pf_ppo_pow_never_draws_zero_reward() -> None:
    inp = _inp(3, 1, rewards=torch.tensor([0.0, 1.0, 2.0]))
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(3)
    for scope in ("group", "batch"):
        for _ in range(500):
            rows = SELECTIONS.get("pf_ppo")(inp, mode="pow", scope=scope, generator=gen).rows
            counts += torch.bincount(rows, minlength=3)
    assert counts[0] == 0  # probability 1e-8 / (5 + 3e-8) per draw
    assert counts[2] / (counts[1] + counts[2]) == pytest.approx(0.8, abs=0.03)


def test_pf_ppo_best_random_frequencies_and_batch_scope() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    inp = _inp(4, 1, rewards=rewards)
    gen = torch.Generator().manual_seed(1)
    counts = torch.zeros(4)
    for _ in range(1000):
        rows = SELECTIONS.get("pf_ppo")(inp, mode="best_random", scope="batch", generator=gen).rows
        assert rows.shape == (4,)
        counts += torch.bincount(rows, minlength=4)
    assert counts[0] / counts.sum() == pytest.approx(0.4 / 0.7, abs=0.03)
    # batch scope best_worst: max / min over the whole batch, not per group.
    inp = _inp(5, 1, rewards=torch.tensor([1.0, 0.0, 0.5, 2.0, 2.0]), group_ids=_ids(0, 0, 0, 1, 1))
    seen: set[int] = set()
    for _ in range(100):
        seen |= set(SELECTIONS.get("pf_ppo")(inp, scope="batch", generator=gen).rows.tolist())
    assert seen == {1, 3, 4}


def test_pf_ppo_is_reproducible_and_validates() -> None:
    inp = _inp(6, 1, rewards=torch.arange(6.0), group_ids=_ids(0, 0, 0, 1, 1, 1))
    part = SELECTIONS.get("pf_ppo")
    a = part(inp, mode="pow", generator=torch.Generator().manual_seed(9)).rows
    b = part(inp, mode="pow", generator=torch.Generator().manual_seed(9)).rows
    assert torch.equal(a, b) and a.dtype == torch.long
    with pytest.raises(ValueError, match="mode"):
        part(inp, mode="max_min")
    with pytest.raises(ValueError, match="scope"):
        part(inp, scope="prompt")
    with pytest.raises(ValueError, match="finite"):
        part(_inp(2, 1, rewards=torch.tensor([1.0, float("nan")])))


# ---------------------------------------------------------------- tis


def _tis_example() -> SelectionInput:
    # Row 0 ratios 3, 0.25, 1.5; row 1 ratios 1, 1.6 and a padded token with a huge gap.
    log_r = torch.tensor([[LN(3.0), LN(0.25), LN(1.5)], [0.0, LN(1.6), 50.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    beh = torch.tensor([[-1.0, -0.5, -2.0], [-0.7, -1.2, -3.0]])
    return _inp(2, 3, response_mask=mask, old_logprobs=beh + log_r, behaviour_logprobs=beh)


def test_tis_equal_logprobs_give_weight_one() -> None:
    mask = torch.tensor([[1.0, 1, 0], [1, 0, 0], [1, 1, 1]])
    inp = _inp(3, 3, response_mask=mask)
    for level in ("token", "sequence"):
        for mode in ("truncate", "mask"):
            sel = SELECTIONS.get("tis")(inp, level=level, mode=mode)
            assert sel.rows is None and sel.token_mask is None
            assert torch.equal(sel.token_weights, mask), (level, mode)
            m = sel.metrics
            assert m["sampling/sampling_logp_difference/mean"] == 0.0
            assert m["sampling/sampling_logp_difference/max"] == 0.0
            for stat in ("min", "mean", "max"):
                assert m[f"sampling/importance_sampling_ratio/{stat}"] == 1.0
            assert m["selection/tis_outside_frac"] == 0.0


def test_tis_token_truncate_hand_example() -> None:
    sel = SELECTIONS.get("tis")(_tis_example())
    expected = torch.tensor([[2.0, 0.25, 1.5], [1.0, 1.6, 0.0]])
    assert torch.allclose(sel.token_weights, expected, atol=1e-5)
    m = sel.metrics
    assert m["sampling/importance_sampling_ratio/min"] == pytest.approx(0.25, abs=1e-5)
    assert m["sampling/importance_sampling_ratio/max"] == pytest.approx(3.0, abs=1e-5)
    assert m["sampling/importance_sampling_ratio/mean"] == pytest.approx(7.35 / 5, abs=1e-5)
    diff_mean = (LN(3) + LN(4) + LN(1.5) + 0 + LN(1.6)) / 5
    assert m["sampling/sampling_logp_difference/mean"] == pytest.approx(diff_mean, abs=1e-5)
    assert m["sampling/sampling_logp_difference/max"] == pytest.approx(LN(4), abs=1e-5)
    assert m["selection/tis_outside_frac"] == pytest.approx(1 / 5)
    # an explicit lower bound also clamps from below (TRL's [C_min, C_max])
    sel = SELECTIONS.get("tis")(_tis_example(), lower=0.5)
    expected = torch.tensor([[2.0, 0.5, 1.5], [1.0, 1.6, 0.0]])
    assert torch.allclose(sel.token_weights, expected, atol=1e-5)
    assert sel.metrics["selection/tis_outside_frac"] == pytest.approx(2 / 5)


def test_tis_token_mask_hand_example() -> None:
    # default lower = 1 / threshold = 0.5: ratios 3 and 0.25 fall outside [0.5, 2].
    sel = SELECTIONS.get("tis")(_tis_example(), mode="mask")
    expected = torch.tensor([[0.0, 0.0, 1.5], [1.0, 1.6, 0.0]])
    assert torch.allclose(sel.token_weights, expected, atol=1e-5)
    assert sel.metrics["selection/tis_outside_frac"] == pytest.approx(2 / 5)
    assert sel.metrics["sampling/importance_sampling_ratio/max"] == pytest.approx(3.0, abs=1e-5)
    sel = SELECTIONS.get("tis")(_tis_example(), mode="mask", lower=0.2, threshold=3.5)
    expected = torch.tensor([[3.0, 0.25, 1.5], [1.0, 1.6, 0.0]])
    assert torch.allclose(sel.token_weights, expected, atol=1e-5)


def test_tis_sequence_level_hand_example() -> None:
    # row 0: 3 * 0.25 * 1.5 = 1.125; row 1: 1 * 1.6 = 1.6 (padding ignored).
    part = SELECTIONS.get("tis")
    sel = part(_tis_example(), level="sequence")
    expected = torch.tensor([[1.125, 1.125, 1.125], [1.6, 1.6, 0.0]])
    assert torch.allclose(sel.token_weights, expected, atol=1e-5)
    m = sel.metrics
    assert m["sampling/importance_sampling_ratio/min"] == pytest.approx(1.125, abs=1e-5)
    assert m["sampling/importance_sampling_ratio/mean"] == pytest.approx(1.3625, abs=1e-5)
    assert m["sampling/importance_sampling_ratio/max"] == pytest.approx(1.6, abs=1e-5)
    sel = part(_tis_example(), level="sequence", threshold=1.5)
    expected = torch.tensor([[1.125, 1.125, 1.125], [1.5, 1.5, 0.0]])
    assert torch.allclose(sel.token_weights, expected, atol=1e-5)
    assert sel.metrics["selection/tis_outside_frac"] == pytest.approx(0.5)
    # mask band [1/1.5, 1.5]: row 1 (1.6) is zeroed.
    sel = part(_tis_example(), level="sequence", mode="mask", threshold=1.5)
    expected = torch.tensor([[1.125, 1.125, 1.125], [0.0, 0.0, 0.0]])
    assert torch.allclose(sel.token_weights, expected, atol=1e-5)


def test_tis_clamps_log_ratio_and_skips_empty_rows() -> None:
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    beh = torch.full((2, 2), -30.0)
    old = torch.tensor([[-15.0, -15.0], [0.0, 0.0]])  # row 0 sums to log r = 30 -> clamp 20
    inp = _inp(2, 2, response_mask=mask, old_logprobs=old, behaviour_logprobs=beh)
    sel = SELECTIONS.get("tis")(inp, level="sequence")
    assert torch.allclose(sel.token_weights, torch.tensor([[2.0, 2.0], [0.0, 0.0]]))
    assert sel.metrics["sampling/importance_sampling_ratio/max"] == pytest.approx(math.exp(20), rel=1e-5)
    assert sel.metrics["sampling/importance_sampling_ratio/min"] == pytest.approx(math.exp(20), rel=1e-5)
    sel = SELECTIONS.get("tis")(inp, level="token")
    assert sel.metrics["sampling/importance_sampling_ratio/max"] == pytest.approx(math.exp(15), rel=1e-5)


def test_tis_errors() -> None:
    part = SELECTIONS.get("tis")
    with pytest.raises(ValueError, match="level"):
        part(_tis_example(), level="seq")
    with pytest.raises(ValueError, match="mode"):
        part(_tis_example(), mode="clip")
    with pytest.raises(ValueError, match="threshold"):
        part(_tis_example(), threshold=0.0)
    with pytest.raises(ValueError, match="lower"):
        part(_tis_example(), lower=3.0)
    with pytest.raises(ValueError, match="empty"):
        part(_tis_example(), mode="mask", threshold=0.5)
    bad = _tis_example()
    beh = bad.behaviour_logprobs.clone()
    beh[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        part(_inp(2, 3, response_mask=bad.response_mask, old_logprobs=bad.old_logprobs, behaviour_logprobs=beh))
    beh = bad.behaviour_logprobs.clone()
    beh[1, 2] = float("nan")  # NaN on padding is ignored
    sel = part(_inp(2, 3, response_mask=bad.response_mask, old_logprobs=bad.old_logprobs, behaviour_logprobs=beh))
    assert sel.token_weights[1, 2] == 0.0


def test_selection_defaults() -> None:
    sel = Selection()
    assert sel.rows is None and sel.token_mask is None and sel.token_weights is None
    assert sel.metrics == {}
