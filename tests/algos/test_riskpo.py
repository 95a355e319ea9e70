"""RiskPO (arXiv 2510.00911): bundles, paper scores, the Mixed VaR weight, credit rules, the quantile tracker."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

import rlfold.algos.riskpo  # noqa: F401  (registers the part until algos/__init__ imports it)
from rlfold.algos.riskpo import (
    QUANTILE_GRID,
    bundle_papers,
    mvar_weight,
    quantile_tracker_init,
    quantile_tracker_step,
    riskpo,
    tracked_quantiles,
)
from rlfold.core.registry import ADVANTAGES

A, B = 0.2, 0.9  # the paper's math levels


def _ids(*xs: int) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.long)


# ----- an independent reference, plain Python floats, from policy.md §6 --------------------------
def _quantile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    pos = p * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


def _std(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _reference(rewards, ids, *, bundle_size, alpha, beta, w_mix, natural, norm, credit, eps=1e-6):
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(ids):
        groups.setdefault(g, []).append(i)
    order = list(groups.values())
    adv = [0.0] * len(rewards)
    for j in range(0, len(order), bundle_size):
        qs = order[j: j + bundle_size]
        k = min(len(q) for q in qs)
        x = [sum(rewards[q[p]] for q in qs) for p in range(k)]
        if k == 1:
            a = b = x[0]
            sd = 1.0
        else:
            a, b, sd = _quantile(x, alpha), _quantile(x, beta), _std(x)
        for p in range(k):
            gr = (max(x[p] - a, 0) - max(x[p] - b, 0) + ((a - b) if natural else 0.0)) / (beta - alpha)
            gc = -max(a - x[p], 0) / alpha
            g = (w_mix * gc + gr) / (w_mix + 1)
            if norm:
                g /= sd + eps
            ratios = [rewards[q[p]] - sum(rewards[i] for i in q) / len(q) for q in qs]
            total = sum(ratios)
            for q, ratio in zip(qs, ratios):
                r = rewards[q[p]]
                if credit == "uniform":
                    adv[q[p]] = g
                elif credit == "score":
                    adv[q[p]] = (0.5 if r > 0 else 1.5) * g
                elif credit == "std":
                    s = _std([rewards[i] for i in q]) if len(q) > 1 else 0.0
                    adv[q[p]] = g / ((s if s > 1e-3 else 1.0) + eps)
                else:
                    adv[q[p]] = g * ratio / total if abs(total) > 1e-6 else g / len(qs)
    return adv


# ----- policy.md §6(e) and the invariants of the weight ------------------------------------------
def test_policy_md_worked_example():
    # a=1, b=4, alpha=0.2, beta=0.9, X=3, natural baseline: g_R = (2 - 0 - 3)/0.7, g_C = 0, w=1.5
    g, g_r, g_c = mvar_weight(torch.tensor([3.0], dtype=torch.float64), 1.0, 4.0, alpha=A, beta=B, w_mix=1.5,
                              natural_baseline=True)
    assert g_r.item() == pytest.approx(-1.4286, abs=1e-4)
    assert g_r.item() == pytest.approx(-1 / 0.7, rel=1e-12)
    assert g_c.item() == 0.0
    assert g.item() == pytest.approx(-0.5714, abs=1e-4)
    assert g.item() == pytest.approx(-0.4 / 0.7, rel=1e-12)


@pytest.mark.parametrize("a,b", [(1.0, 4.0), (0.0, 0.5), (-2.0, 3.0), (2.0, 2.0)])
def test_weight_invariants_with_natural_baseline(a, b):
    x = torch.cat([torch.linspace(a - 3, b + 3, 61, dtype=torch.float64), torch.tensor([a, b], dtype=torch.float64)])
    _, g_r, g_c = mvar_weight(x, a, b, alpha=A, beta=B, w_mix=1.5, natural_baseline=True)
    lo = -(b - a) / (B - A)
    assert (g_r >= lo - 1e-12).all() and (g_r <= 1e-12).all()
    assert torch.equal(g_r == 0, x >= b) if b > a else (g_r == 0).all()
    assert torch.equal(g_c == 0, x >= a)
    assert (g_c <= 0).all()
    # below a the range VaR weight is its floor -(b - a)/(beta - alpha)
    assert torch.allclose(g_r[x <= a], torch.full_like(g_r[x <= a], lo))


def test_weight_without_natural_baseline_is_the_shifted_range_weight():
    x = torch.linspace(-1, 6, 29, dtype=torch.float64)
    _, with_nb, _ = mvar_weight(x, 1.0, 4.0, alpha=A, beta=B, w_mix=0.0, natural_baseline=True)
    g, without, _ = mvar_weight(x, 1.0, 4.0, alpha=A, beta=B, w_mix=0.0, natural_baseline=False)
    assert torch.allclose(without - with_nb, torch.full_like(x, 3.0 / 0.7))
    assert (without >= 0).all() and (without <= 3.0 / 0.7 + 1e-12).all()
    assert torch.equal(g, without)  # w_mix = 0: the pure range VaR


# ----- the part on hand numbers ------------------------------------------------------------------
# Two questions, four responses each: X = [2, 1, 0, 1]; q_0.2 = 0.6, q_0.9 = 1.7 (linear interpolation);
# g_R = [0, -1, -11/7, -1], g_C = [0, 0, -3, 0], g = (1.5 g_C + g_R)/2.5 = [0, -0.4, -17/7, -0.4].
R4 = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
IDS4 = _ids(0, 0, 0, 0, 1, 1, 1, 1)
G4 = torch.tensor([0.0, -0.4, -17 / 7, -0.4], dtype=torch.float64)


def _run(rewards=R4, ids=IDS4, width=3, **kw):
    kw = {"bundle_size": 2, "part_state": {}, **kw}
    adv, metrics = riskpo(rewards, ids, torch.ones(rewards.shape[0], width), **kw)
    return adv[:, 0], metrics, adv


def test_hand_example_uniform_and_std_normalisation():
    adv, metrics, full = _run(norm_by_std=False, credit="uniform")
    assert torch.allclose(adv, torch.cat([G4, G4]), atol=1e-12)
    assert metrics["riskpo/q_down_mean"] == pytest.approx(0.6)
    assert metrics["riskpo/q_up_mean"] == pytest.approx(1.7)
    assert metrics["riskpo/n_bundles"] == 1.0
    assert (full == full[:, :1]).all()
    adv, _, _ = _run(norm_by_std=True, credit="uniform")
    sd = math.sqrt(2 / 3)  # unbiased std of [2, 1, 0, 1]
    assert torch.allclose(adv, torch.cat([G4, G4]) / (sd + 1e-6), atol=1e-12)


def test_hand_example_std_credit():
    adv, _, _ = _run(norm_by_std=False, credit="std")
    s = math.sqrt(1 / 3)  # each question's rewards [1, 0, 0, 1] / [1, 1, 0, 0]
    assert torch.allclose(adv, torch.cat([G4, G4]) / (s + 1e-6), atol=1e-12)


def test_hand_example_score_credit():
    adv, _, _ = _run(norm_by_std=False, credit="score")
    # x0.5 where R > 0, x1.5 where R = 0
    q0 = torch.tensor([0.0, -0.6, -1.5 * 17 / 7, -0.2], dtype=torch.float64)
    q1 = torch.tensor([0.0, -0.2, -1.5 * 17 / 7, -0.6], dtype=torch.float64)
    assert torch.allclose(adv, torch.cat([q0, q1]), atol=1e-12)


def test_hand_example_sum_mean_credit():
    adv, _, _ = _run(norm_by_std=False, credit="sum-mean")
    # centred rewards q0 [.5, -.5, -.5, .5], q1 [.5, .5, -.5, -.5]; per paper sum [1, 0, -1, 0]:
    # papers 1 and 3 sum to 0 -> equal shares g/2; paper 2: g * (-.5)/(-1) each
    q = torch.tensor([0.0, -0.2, -17 / 14, -0.2], dtype=torch.float64)
    assert torch.allclose(adv, torch.cat([q, q]), atol=1e-12)


def test_sum_mean_shares_add_up_to_the_paper_weight():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0], dtype=torch.float64)  # q0 has mean 1/3, q1 2/3
    ids = _ids(0, 0, 0, 1, 1, 1)
    adv, _, _ = _run(rewards, ids, norm_by_std=False, credit="sum-mean")
    uni, _, _ = _run(rewards, ids, norm_by_std=False, credit="uniform")
    for p in range(3):
        ratio_sum = (rewards[p] - 1 / 3) + (rewards[3 + p] - 2 / 3)
        if abs(ratio_sum) > 1e-6:
            assert (adv[p] + adv[3 + p]).item() == pytest.approx(uni[p].item())


@pytest.mark.parametrize("credit", ["uniform", "std", "score", "sum-mean"])
@pytest.mark.parametrize("natural,norm,w_mix", [(True, True, 1.5), (False, False, 0.0), (True, False, 3.0)])
def test_matches_the_reference_on_random_batches(credit, natural, norm, w_mix):
    rng = random.Random(7)
    for _ in range(5):
        n_groups, n = 6, rng.choice([1, 2, 5])
        rewards = [rng.choice([0.0, 0.1, 1.0, 1.1]) for _ in range(n_groups * n)]
        ids = [g for g in range(n_groups) for _ in range(n)]
        perm = list(range(len(ids)))
        rng.shuffle(perm)  # rows of a group need not be contiguous
        rewards = [rewards[i] for i in perm]
        ids = [ids[i] * 3 + 11 for i in perm]  # ids need not be dense or sorted
        got, _ = riskpo(torch.tensor(rewards, dtype=torch.float64), torch.tensor(ids), torch.ones(len(ids), 2),
                        part_state={}, bundle_size=3, quantile_down=A, quantile_up=B, w_mix=w_mix, natural_baseline=natural,
                        norm_by_std=norm, credit=credit)
        ref = _reference(rewards, ids, bundle_size=3, alpha=A, beta=B, w_mix=w_mix, natural=natural, norm=norm,
                         credit=credit)
        assert torch.allclose(got[:, 0], torch.tensor(ref, dtype=torch.float64), atol=1e-9, rtol=1e-9)


# ----- bundles -----------------------------------------------------------------------------------
def test_bundles_follow_first_appearance_of_the_groups():
    ids = _ids(9, 4, 9, 4, 7, 7, 2, 2)
    papers = bundle_papers(ids, 2)
    assert [p.tolist() for p in papers] == [[[0, 2], [1, 3]], [[4, 5], [6, 7]]]


def test_papers_stop_at_the_smallest_group_and_later_rows_get_zero():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    ids = _ids(0, 0, 0, 1, 1)
    (idx,) = bundle_papers(ids, 2)
    assert idx.tolist() == [[0, 1], [3, 4]]
    adv, _, _ = _run(rewards, ids, credit="uniform")
    assert adv[2].item() == 0.0


def test_bundles_that_do_not_divide_the_batch_are_an_error():
    with pytest.raises(ValueError, match=r"3 prompt groups, not a multiple of bundle_size=2.*prompts_per_step"):
        _run(torch.zeros(6), _ids(0, 0, 1, 1, 2, 2))


def test_bad_options_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="quantile_down=0.9 must be below quantile_up=0.2"):
        _run(quantile_down=0.9, quantile_up=0.2)
    with pytest.raises(ValueError, match="q_track_mode='track' keeps its quantile tracker"):
        _run(q_track_mode="track", part_state=None)
    with pytest.raises(ValueError, match="response_mask"):
        riskpo(torch.ones(4), _ids(0, 0, 1, 1), torch.ones(3, 2), part_state={}, bundle_size=2)
    with pytest.raises(ValueError, match="finite"):
        riskpo(torch.tensor([0.0, float("nan")]), _ids(0, 0), torch.ones(2, 1), part_state={}, bundle_size=1)


def test_config_validation_refuses_bad_option_values():
    from rlfold.cli import RECIPES_DIR
    from rlfold.core.config_loader import load_config
    from rlfold.core.errors import ConfigError

    recipe = RECIPES_DIR / "riskpo.yaml"
    cfg = load_config(recipe, [])
    assert cfg.algo.advantage == "riskpo" and cfg.train.prompts_per_step % cfg.algo.advantage_kwargs["bundle_size"] == 0
    for bad in ("algo.advantage_kwargs.credit=mean", "algo.advantage_kwargs.quantile_up=1.0",
                "algo.advantage_kwargs.bundle_size=0", "algo.advantage_kwargs.q_track_mode=online",
                "algo.advantage_kwargs.lr_q=0", "algo.advantage_kwargs.part_state=1"):
        with pytest.raises(ConfigError):
            load_config(recipe, [bad])


# ----- zero signal -------------------------------------------------------------------------------
@pytest.mark.parametrize("credit", ["uniform", "std", "score", "sum-mean"])
@pytest.mark.parametrize("natural", [True, False])
@pytest.mark.parametrize("norm", [True, False])
def test_equal_rewards_give_exactly_zero(credit, natural, norm):
    for value in (0.0, 1.0, 0.37):
        rewards = torch.full((12,), value)
        adv, _ = riskpo(rewards, _ids(*[g for g in range(4) for _ in range(3)]), torch.ones(12, 2), part_state={}, bundle_size=2,
                        credit=credit, natural_baseline=natural, norm_by_std=norm)
        assert torch.equal(adv, torch.zeros_like(adv))
    # one response per prompt: one paper per bundle, a = b = X
    adv, _ = riskpo(torch.tensor([1.0, 0.0, 1.0, 1.0]), _ids(0, 1, 2, 3), torch.ones(4, 2), part_state={}, bundle_size=2,
                    credit=credit, natural_baseline=natural, norm_by_std=norm)
    assert torch.equal(adv, torch.zeros_like(adv))


def test_a_constant_question_in_a_mixed_bundle_still_takes_its_paper_weight():
    # q1's rewards are all 1 (GRPO would give it 0); here its rows share the papers' weights
    adv, _, _ = _run(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64),
                     credit="uniform", norm_by_std=False)
    assert torch.equal(adv[:4], adv[4:]) and (adv != 0).any()


def test_masked_tokens_are_zero_and_dtype_kept():
    mask = torch.tensor([[1, 1, 0]] * 8)
    adv, _ = riskpo(R4.float(), IDS4, mask, part_state={}, bundle_size=2)
    assert adv.dtype == torch.float32
    assert (adv[:, 2] == 0).all() and (adv[:, 0] == adv[:, 1]).all()


def test_registered_and_declared_group_relative():
    from rlfold.core.options import is_group_relative

    assert ADVANTAGES.get("riskpo") is riskpo
    assert is_group_relative(riskpo)
    assert "arXiv 2510.00911" in riskpo.__doc__.splitlines()[0]


# ----- the online quantile tracker (pure functions) ----------------------------------------------
def test_tracker_grid_and_nearest_levels():
    assert QUANTILE_GRID.shape == (19,)
    assert QUANTILE_GRID[0].item() == pytest.approx(0.05) and QUANTILE_GRID[-1].item() == pytest.approx(0.95)
    q = torch.arange(19, dtype=torch.float64)
    assert tracked_quantiles(q, 0.2, 0.9) == (3.0, 17.0)
    assert tracked_quantiles(q, 0.21, 0.88) == (3.0, 17.0)


def test_tracker_init_is_the_empirical_quantile():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    q = quantile_tracker_init(x, torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64))
    assert torch.allclose(q, torch.tensor([0.8, 2.0, 3.6], dtype=torch.float64))


def test_tracker_step_by_hand_and_pure():
    levels = torch.tensor([0.25, 0.75], dtype=torch.float64)
    q = torch.tensor([0.5, 1.5], dtype=torch.float64)
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])
    new = quantile_tracker_step(q, x, 0.1, levels)
    # q=0.5: 1/4 of x below -> 0.5 + 0.1 (0.25 - 0.25); q=1.5: 2/4 below -> 1.5 + 0.1 (0.75 - 0.5)
    assert torch.allclose(new, torch.tensor([0.5, 1.525], dtype=torch.float64))
    assert torch.equal(q, torch.tensor([0.5, 1.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="levels"):
        quantile_tracker_step(q, x, 0.1, QUANTILE_GRID)


def test_tracker_converges_to_the_stream_quantiles():
    gen = torch.Generator().manual_seed(0)
    q = quantile_tracker_init(torch.zeros(3))  # a bad start: every level at 0
    for t in range(3000):
        x = torch.rand(64, generator=gen, dtype=torch.float64) * 10  # uniform on [0, 10]
        q = quantile_tracker_step(q, x, 0.5 if t < 2000 else 0.05)
    assert torch.allclose(q, QUANTILE_GRID * 10, atol=0.15)
    assert (q[1:] >= q[:-1] - 0.05).all()


# ----- the recipe through the CLI ----------------------------------------------------------------
def test_recipe_runs_two_steps_through_the_cli(tmp_path, capsys):
    from rlfold.cli import main

    run_dir = tmp_path / "run"
    # prompts_per_step must be a multiple of bundle_size=5 (4 is refused, see the next test)
    rc = main(["train", "riskpo", f"run_dir={run_dir}", "train.steps=2", "train.prompts_per_step=5",
               "eval.size=8", "eval.every=0", "checkpoint.every=0", "log.progress=false"])
    assert rc == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert r["nonfinite_steps"] == 0
        for key in ("riskpo/q_down_mean", "riskpo/q_up_mean", "riskpo/paper_score_mean", "actor/pg_loss"):
            assert key in r and math.isfinite(r[key]), key


def test_recipe_with_a_batch_that_is_not_whole_bundles_fails_clearly(tmp_path, capsys):
    from rlfold.cli import main

    rc = main(["train", "riskpo", f"run_dir={tmp_path}/run", "train.steps=1", "train.prompts_per_step=4",
               "eval.size=8", "eval.every=0", "checkpoint.every=0", "log.progress=false"])
    assert rc != 0
    assert "not a multiple of bundle_size=5" in capsys.readouterr().err


def test_tracker_update_initialises_then_steps():
    from rlfold.algos.riskpo import quantile_tracker_update

    x = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    first = quantile_tracker_update(None, x, 0.1)
    assert torch.allclose(first, torch.quantile(x.double(), QUANTILE_GRID))
    assert torch.allclose(quantile_tracker_update(first, x, 0.1), quantile_tracker_step(first, x, 0.1))


def test_quantile_values_by_mode():
    from rlfold.algos.riskpo import quantile_values

    ba, bb = torch.tensor(1.0), torch.tensor(3.0)
    assert quantile_values("batch", ba, bb, (0.0, 5.0)) == (ba, bb)
    for mode in ("track", "mix"):  # the first step has no tracker yet: batch quantiles
        assert quantile_values(mode, ba, bb, None) == (ba, bb)
    assert [v.item() for v in quantile_values("track", ba, bb, (0.0, 5.0))] == [0.0, 5.0]
    assert [v.item() for v in quantile_values("mix", ba, bb, (0.0, 5.0))] == [0.5, 4.0]
    with pytest.raises(ValueError, match="q_track_mode"):
        quantile_values("online", ba, bb, (0.0, 5.0))


def test_tracked_quantiles_reach_the_weight():
    # the worked example through the core with tracked (a, b) = (1, 4): one bundle of 3 questions,
    # paper 0 scores 3 (R = 1, 1, 1), paper 1 scores 0; no std division, uniform credit
    from rlfold.algos.riskpo import mvar_advantage

    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    adv, x, _ = mvar_advantage(rewards, _ids(0, 0, 1, 1, 2, 2), bundle_size=3, quantile_down=A, quantile_up=B,
                               w_mix=1.5, natural_baseline=True, norm_by_std=False, credit="uniform", eps=1e-6,
                               q_track_mode="track", tracked=(1.0, 4.0))
    assert x.tolist() == [3.0, 0.0]
    g0 = -0.4 / 0.7
    g1 = (1.5 * (-1 / 0.2) + (-3 / 0.7)) / 2.5
    assert torch.allclose(adv, torch.tensor([g0, g1] * 3, dtype=torch.float64))


# ----- the online tracker inside the part (q_track_mode track / mix, state in part_state) ---------------
# A second batch with paper scores X' = [2, 2, 1, 0] (bundle of the two questions above, other rewards).
R4B = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
X4, X4B = torch.tensor([2.0, 1.0, 0.0, 1.0], dtype=torch.float64), torch.tensor([2.0, 2.0, 1.0, 0.0], dtype=torch.float64)


def _expected(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    g, _, _ = mvar_weight(x, a, b, alpha=A, beta=B, w_mix=1.5, natural_baseline=True)
    return torch.cat([g, g])  # uniform credit, no std normalisation: both questions take their paper's g


@pytest.mark.parametrize("mode", ["track", "mix"])
def test_tracker_starts_from_the_first_batch_then_sets_the_quantiles(mode):
    from rlfold.algos.riskpo import tracked_quantiles

    state: dict = {}
    kw = {"q_track_mode": mode, "part_state": state, "norm_by_std": False, "credit": "uniform"}
    first, m1, _ = _run(**kw)
    assert torch.allclose(first, torch.cat([G4, G4]), atol=1e-12)  # the first step: the batch quantiles
    q1 = state["riskpo"]["q"]
    assert torch.allclose(q1, quantile_tracker_init(X4))  # started at the first batch's empirical quantiles
    assert tracked_quantiles(q1, A, B) == pytest.approx((0.6, 1.7))  # grid levels 0.20 and 0.90
    assert m1["riskpo/tracked_q_down"] == pytest.approx(0.6)
    second, m2, _ = _run(R4B, **kw)
    ta, tb = 0.6, 1.7  # from the tracker as it was before this batch
    ba, bb = _quantile(X4B.tolist(), A), _quantile(X4B.tolist(), B)  # 0.6 and 2.0
    a, b = (ta, tb) if mode == "track" else ((ta + ba) / 2, (tb + bb) / 2)
    assert torch.allclose(second, _expected(X4B, a, b), atol=1e-12)
    assert not torch.allclose(second, _expected(X4B, ba, bb), atol=1e-6)  # the tracker did change the weights
    assert m2["riskpo/q_down_mean"] == pytest.approx(a) and m2["riskpo/q_up_mean"] == pytest.approx(b)
    assert torch.allclose(state["riskpo"]["q"], quantile_tracker_step(q1, X4B, 0.1))


def test_batch_mode_leaves_the_part_state_alone():
    state: dict = {}
    _run(part_state=state)
    assert state == {}


@pytest.mark.slow
def test_tracked_run_checkpoints_the_tracker_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from rlfold.cli import main

    common = ["train.prompts_per_step=5", "eval.size=8", "eval.every=0", "checkpoint.every=1", "log.progress=false",
              "threads=1", "algo.advantage_kwargs.q_track_mode=track", "rollout.max_new_tokens=6"]
    whole, half = tmp_path / "whole", tmp_path / "half"
    assert main(["train", "riskpo", f"run_dir={whole}", "train.steps=3", *common]) == 0
    assert main(["train", "riskpo", f"run_dir={half}", "train.steps=2", *common]) == 0
    saved = torch.load(half / "checkpoints" / "step_0000002" / "trainer_state.pt", weights_only=True)
    assert saved["part_state"]["riskpo"]["q"].shape == (19,)  # the tracker is in the checkpoint
    assert main(["train", "riskpo", "train.steps=3", *common, "--resume", str(half)]) == 0

    def rows(run):
        return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"riskpo/tracked' in x]

    a, b = rows(whole), rows(half)
    assert [r["step"] for r in a] == [1, 2, 3] and [r["step"] for r in b] == [1, 2, 3]
    assert [r["riskpo/tracked_q_down"] for r in a] == [r["riskpo/tracked_q_down"] for r in b]
    assert [r["riskpo/q_down_mean"] for r in a] == [r["riskpo/q_down_mean"] for r in b]
    wa, wb = load_file(whole / "final" / "model.safetensors"), load_file(half / "final" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
