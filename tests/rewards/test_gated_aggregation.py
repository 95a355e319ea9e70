"""Reward aggregators: the gated (hierarchical) reward, hand-computed; invariants; config errors; in the trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlfold.cli import RECIPES_DIR
from rlfold.core.config_loader import load_config
from rlfold.core.errors import ConfigError
from rlfold.core.types import Prompt
from rlfold.rewards import REWARDS, score_rewards
from rlfold.rewards.aggregation import REWARD_AGGREGATORS, AggregationInput, gated, weighted_sum

NAN = float("nan")
GRPO = RECIPES_DIR / "grpo.yaml"


def _inp(per_fn: dict[str, list[float]], weights: dict[str, float]) -> AggregationInput:
    t = {k: torch.tensor(v, dtype=torch.float32) for k, v in per_fn.items()}
    total = torch.zeros(len(next(iter(per_fn.values()))), dtype=torch.float64)
    any_ = torch.zeros_like(total, dtype=torch.bool)
    for k, v in t.items():
        total += weights[k] * torch.nan_to_num(v.double())
        any_ |= ~torch.isnan(v)
    return AggregationInput(per_fn=t, weights=weights, weighted_sum=torch.where(any_, total, NAN).float())


def _close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), equal_nan=True)


def test_registered():
    assert REWARD_AGGREGATORS.get("gated") is gated and REWARD_AGGREGATORS.get("weighted_sum") is weighted_sum


# ----- hand-computed numbers ------------------------------------------------------------------------

FLAT = {"fmt": [1.0, 0.0, 1.0, NAN], "em": [1.0, 1.0, 0.0, 1.0], "len": [0.5, 1.0, 1.0, 0.0]}
FLAT_W = {"fmt": 1.0, "em": 1.0, "len": 0.5}


def test_flat_gate_with_floor():
    # objectives default to every non-gate reward: em + 0.5*len
    # row 0: fmt 1 >= 1 passes -> 1 + 0.25 = 1.25; row 1: fails -> floor -1; row 2: passes -> 0 + 0.5;
    # row 3: the gate returned None -> unknown (NaN, unscorable)
    out = gated(_inp(FLAT, FLAT_W), gates={"fmt": 1.0}, floor=-1.0)
    _close(out.scores, [1.25, -1.0, 0.5, NAN])
    assert out.token_scores is None
    assert out.metrics["reward/gate/fmt_pass"] == pytest.approx(2 / 3)   # 2 of the 3 rows it scored
    assert out.metrics["reward/gate/gated_out_frac"] == pytest.approx(1 / 4)
    assert not any(k.startswith("reward/gate/level") for k in out.metrics)


def test_flat_gate_without_floor_is_the_product_form():
    out = gated(_inp(FLAT, FLAT_W), gates={"fmt": 1.0})
    _close(out.scores, [1.25, 0.0, 0.5, NAN])


def test_explicit_objectives_and_a_gate_that_is_also_an_objective():
    # objectives [fmt, em]: row 0: 1 + 1 = 2; row 1: gated -> 0; row 2: 1 + 0 = 1
    out = gated(_inp(FLAT, FLAT_W), gates={"fmt": 1.0}, objectives=["fmt", "em"])
    _close(out.scores, [2.0, 0.0, 1.0, NAN])


def test_threshold_is_inclusive():
    per_fn = {"judge": [0.4, 0.5, 0.6], "em": [1.0, 1.0, 1.0]}
    out = gated(_inp(per_fn, {"judge": 1.0, "em": 2.0}), gates={"judge": 0.5}, floor=-0.5)
    _close(out.scores, [-0.5, 2.0, 2.0])
    assert out.metrics["reward/gate/judge_pass"] == pytest.approx(2 / 3)


def test_two_gates_all_must_pass():
    per_fn = {"a": [1.0, 1.0, 0.0, 0.0], "b": [0.9, 0.1, 0.9, 0.1], "em": [1.0, 1.0, 1.0, 1.0]}
    out = gated(_inp(per_fn, {"a": 1.0, "b": 1.0, "em": 3.0}), gates={"a": 1.0, "b": 0.5})
    _close(out.scores, [3.0, 0.0, 0.0, 0.0])
    assert out.metrics["reward/gate/a_pass"] == 0.5 and out.metrics["reward/gate/b_pass"] == 0.5
    assert out.metrics["reward/gate/gated_out_frac"] == 0.75


def test_hierarchical_levels():
    # level 1: gate fmt >= 1, objective em (w 1); level 2: gate em >= 1, objective persuade (w 2); floor -1
    per_fn = {"fmt": [1.0, 1.0, 0.0, 1.0, 0.0], "em": [1.0, 0.0, 1.0, NAN, NAN],
              "persuade": [0.5, 0.5, 1.0, 1.0, 1.0]}
    levels = [{"gates": {"fmt": 1.0}, "objectives": ["em"]}, {"gates": {"em": 1.0}, "objectives": ["persuade"]}]
    out = gated(_inp(per_fn, {"fmt": 1.0, "em": 1.0, "persuade": 2.0}), levels=levels, floor=-1.0)
    # row 0: both levels open: 1 + 2*0.5 = 2; row 1: level 1 open (em 0 counts 0), level 2 closed: 0;
    # row 2: fmt fails: floor -1; row 3: level-2 gate em is None with nothing failed: unknown (NaN);
    # row 4: fmt failed below it, so em's None does not matter: floor -1
    _close(out.scores, [2.0, 0.0, -1.0, NAN, -1.0])
    m = out.metrics
    assert m["reward/gate/fmt_pass"] == pytest.approx(3 / 5)
    assert m["reward/gate/em_pass"] == pytest.approx(2 / 3)  # rows 0, 1, 2 scored it; 0 and 2 pass
    assert m["reward/gate/level1_open"] == pytest.approx(3 / 5)  # rows 0, 1, 3
    assert m["reward/gate/level2_open"] == pytest.approx(1 / 5)  # row 0
    assert m["reward/gate/gated_out_frac"] == pytest.approx(3 / 5)  # rows 1, 2, 4


def test_an_objective_that_returned_none_adds_nothing_and_a_row_no_function_scored_is_unscorable():
    per_fn = {"fmt": [1.0, NAN], "em": [NAN, NAN], "len": [0.5, NAN]}
    out = gated(_inp(per_fn, {"fmt": 1.0, "em": 1.0, "len": 1.0}), gates={"fmt": 1.0})
    _close(out.scores, [0.5, NAN])


# ----- invariants -----------------------------------------------------------------------------------


def _random(n: int = 64, seed: int = 0) -> tuple[dict[str, list[float]], dict[str, float]]:
    g = torch.Generator().manual_seed(seed)
    per_fn = {}
    for k in ("a", "b", "c"):
        v = (torch.randint(0, 9, (n,), generator=g) / 8).tolist()  # dyadic: sums are exact in float32
        per_fn[k] = [NAN if torch.rand(1, generator=g).item() < 0.2 else x for x in v]
    return per_fn, {"a": 1.0, "b": 0.5, "c": -2.0}


def test_no_gates_is_exactly_the_weighted_sum():
    per_fn, w = _random()
    inp = _inp(per_fn, w)
    assert torch.equal(gated(inp).scores.isnan(), weighted_sum(inp).scores.isnan())
    torch.testing.assert_close(gated(inp).scores, weighted_sum(inp).scores, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(gated(inp, levels=[{"objectives": ["a", "b", "c"]}]).scores, weighted_sum(inp).scores,
                               rtol=0, atol=0, equal_nan=True)


def test_no_gates_matches_score_rewards_total():
    """Against the scorer's own weighted sum, through registered reward functions (None included)."""
    rows = [[1.0, 0.0, None, 0.5], [0.25, None, None, 1.0]]

    @REWARDS.register("t_agg_a")
    def a(prompts, completions, finishes):
        """Fixed scores (test)."""
        return rows[0]

    @REWARDS.register("t_agg_b")
    def b(prompts, completions, finishes):
        """Fixed scores (test)."""
        return rows[1]

    try:
        prompts = [Prompt(text="1+1=", answer="2")] * 4
        res = score_rewards([("t_agg_a", 1.0), ("t_agg_b", 0.5)], prompts, ["2"] * 4, ["stop"] * 4)
        inp = AggregationInput(per_fn=res.per_fn, weights={"t_agg_a": 1.0, "t_agg_b": 0.5}, weighted_sum=res.total)
        _close(res.total, [1.125, 0.0, NAN, 1.0])
        torch.testing.assert_close(gated(inp).scores, res.total, rtol=0, atol=0, equal_nan=True)
        assert weighted_sum(inp).scores is res.total
    finally:
        REWARDS.unregister("t_agg_a")
        REWARDS.unregister("t_agg_b")


def test_all_gates_pass_is_the_weighted_sum_of_the_objectives():
    per_fn, w = _random(seed=1)
    per_fn["a"] = [1.0] * len(per_fn["a"])
    out = gated(_inp(per_fn, w), gates={"a": 0.5}, floor=-7.0)
    expected = [sum(w[k] * (0.0 if math.isnan(per_fn[k][i]) else per_fn[k][i]) for k in ("b", "c"))
                for i in range(len(per_fn["a"]))]
    torch.testing.assert_close(out.scores, torch.tensor(expected, dtype=torch.float32), rtol=0, atol=0)
    assert out.metrics["reward/gate/a_pass"] == 1.0 and out.metrics["reward/gate/gated_out_frac"] == 0.0


def test_one_level_equals_the_flat_form():
    per_fn, w = _random(seed=2)
    inp = _inp(per_fn, w)
    flat = gated(inp, gates={"a": 0.5}, objectives=["b", "c"], floor=-1.0)
    level = gated(inp, levels=[{"gates": {"a": 0.5}, "objectives": ["b", "c"]}], floor=-1.0)
    torch.testing.assert_close(flat.scores, level.scores, rtol=0, atol=0, equal_nan=True)


def test_floor_zero_is_the_product_of_indicators_times_the_sum():
    per_fn, w = _random(seed=3)
    inp = _inp(per_fn, w)
    out = gated(inp, gates={"a": 0.5, "b": 0.25}, objectives=["c"])
    a, b, c = (torch.tensor(per_fn[k]) for k in ("a", "b", "c"))
    prod = ((a >= 0.5) & (b >= 0.25)).float()
    expected = prod * w["c"] * torch.nan_to_num(c)
    # rows where a gate is None and the other did not fail are unknown
    unknown = (a.isnan() & ~(b < 0.25)) | (b.isnan() & ~(a < 0.5))
    expected = torch.where(unknown, NAN, expected)
    torch.testing.assert_close(out.scores, expected, rtol=0, atol=0, equal_nan=True)


# ----- configuration --------------------------------------------------------------------------------

ARITH = ["rewards=[{name: exact_match, weight: 1.0}, {name: format, weight: 0.1}]"]


def _error(*over: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(GRPO, [*ARITH, *over])
    return str(e.value)


def test_default_is_the_weighted_sum_and_gated_loads():
    assert load_config(GRPO, []).reward_aggregation.name == "weighted_sum"
    cfg = load_config(GRPO, ["reward_aggregation={name: gated, kwargs: {gates: {format: 1.0}}}"])
    assert cfg.reward_aggregation.kwargs == {"gates": {"format": 1.0}}


@pytest.mark.parametrize("agg, mention", [
    ("{name: gated, kwargs: {gates: {formt: 1.0}}}", ["reward_aggregation.kwargs.gates.formt", "did you mean 'format'"]),
    ("{name: gated, kwargs: {gates: {format: 1.0}, objectives: [exact_mach]}}",
     ["reward_aggregation.kwargs.objectives[0]", "did you mean 'exact_match'"]),
    ("{name: gated, kwargs: {levels: [{gates: {format: 1.0}}, {objectives: [exact_matc]}]}}",
     ["reward_aggregation.kwargs.levels[1].objectives[0]", "did you mean 'exact_match'"]),
    ("{name: gated, kwargs: {levels: [{gates: {format: 1.0}, objective: [exact_match]}]}}",
     ["levels[0].objective", "did you mean 'objectives'"]),
    ("{name: gated, kwargs: {gates: {format: 1.0}, levels: [{objectives: [exact_match]}]}}", ["not both"]),
    ("{name: gated, kwargs: {levels: []}}", ["levels is empty"]),
    ("{name: gated, kwargs: {gates: {format: 1.0}, objectives: []}}", ["rewards[0]", "'exact_match'", "would not count"]),
    ("{name: gated, kwargs: {levels: [{gates: {format: 1.0}}, {gates: {format: 0.5}, objectives: [exact_match]}]}}",
     ["levels[1].gates.format", "gate twice"]),
    ("{name: gated, kwargs: {gates: {format: 1.0}, objectives: [exact_match, exact_match]}}",
     ["objectives[1]", "counted twice"]),
    ("{name: gated, kwargs: {gates: {format: high}}}", ["reward_aggregation.kwargs.gates", "high"]),
    ("{name: gated, kwargs: {gates: {format: 1.0}, flor: -1}}", ["flor", "did you mean 'floor'"]),
    ("{name: gatd}", ["reward_aggregation.name", "did you mean 'gated'"]),
])
def test_config_errors(agg, mention):
    msg = _error(f"reward_aggregation={agg}")
    for m in mention:
        assert m in msg, msg


def test_a_duplicated_reward_name_is_refused():
    msg = _error("rewards=[{name: exact_match}, {name: format}, {name: format, weight: 0.5}]",
                 "reward_aggregation={name: gated, kwargs: {gates: {format: 1.0}}}")
    assert "rewards[1] and rewards[2] are both 'format'" in msg


# ----- in the trainer -------------------------------------------------------------------------------


def test_gated_grpo_two_steps_logs_the_gate_metrics(tmp_path):
    """grpo on tiny-arith with the format reward gating exact_match; 3 new tokens cut some three-digit
    answers before their stop token, so a right but unterminated answer scores the floor."""
    from rlfold.trainers.loop import build_run

    run = tmp_path / "run"
    over = ["train.steps=2", "train.prompts_per_step=4", "rollout.n=4", "task.held_out_size=8", "eval.size=8",
            "eval.every=0", "log.progress=false", "threads=1", f"run_dir={run}", "rollout.max_new_tokens=3",
            "reward_aggregation={name: gated, kwargs: {gates: {format: 1.0}, floor: -1.0}}"]
    job = build_run(load_config(GRPO, over), run)
    s = job.trainer.collector.collect(0)
    fmt, em = s.per_fn["format"], s.per_fn["exact_match"]
    torch.testing.assert_close(s.scores, torch.where(fmt >= 1.0, em, torch.full_like(em, -1.0)))
    job.fit()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/gate/format_pass" in r]
    assert len(steps) == 2
    for r in steps:
        # the gate is the format reward (0/1, never None): its pass rate is its mean, the gated-out rows the rest
        assert r["reward/gate/format_pass"] == pytest.approx(r["reward/format/mean"])
        assert r["reward/gate/gated_out_frac"] == pytest.approx(1 - r["reward/format/mean"])
        assert r["reward/unscorable_frac"] == 0.0


def test_a_gate_that_returned_none_makes_the_row_unscorable_in_the_scorer(tmp_path):
    """As for a row no reward function scored: counted in reward/unscorable_frac, given its group's mean."""
    from rlfold.trainers.loop import build_run

    @REWARDS.register("t_gate_none_first")
    def none_first(prompts, completions, finishes):
        """None on the first row of the batch, 1 elsewhere (test)."""
        return [None] + [1.0] * (len(completions) - 1)

    try:
        over = ["train.prompts_per_step=2", "rollout.n=4", "task.held_out_size=8", "eval.size=8", "threads=1",
                "log.progress=false", f"run_dir={tmp_path / 'u'}", "train.steps=1",
                "rewards=[{name: exact_match}, {name: t_gate_none_first, weight: 0}]",
                "reward_aggregation={name: gated, kwargs: {gates: {t_gate_none_first: 1.0}, floor: -1.0}}"]
        s = build_run(load_config(GRPO, over), tmp_path / "u").trainer.collector.collect(0)
        assert s.unscorable[0] and not s.unscorable[1:].any()
        em = s.per_fn["exact_match"]
        torch.testing.assert_close(s.scores[1:], em[1:])  # the gate passes: the objective exact_match
        torch.testing.assert_close(s.scores[0], em[1:4].mean())  # its group's mean of the scorable rows
        assert s.metrics["reward/unscorable_frac"] == pytest.approx(1 / 8)
        assert s.metrics["reward/gate/t_gate_none_first_pass"] == 1.0
    finally:
        REWARDS.unregister("t_gate_none_first")


def test_the_yaml_examples_of_the_doc_load(tmp_path):
    """The two ``reward_aggregation`` examples of docs/rewards.md load over the search_r1 recipe."""
    import re
    from pathlib import Path

    import yaml

    doc = (Path(__file__).resolve().parents[2] / "docs" / "rewards.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Combining the functions"):doc.index("## Shaping parts")]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2
    base = yaml.safe_load((RECIPES_DIR / "search_r1.yaml").read_text(encoding="utf-8"))
    for i, block in enumerate(blocks):
        recipe = tmp_path / f"r{i}.yaml"
        recipe.write_text(yaml.safe_dump({**base, **yaml.safe_load(block)}))
        cfg = load_config(recipe, [])
        assert cfg.reward_aggregation.name == "gated"
