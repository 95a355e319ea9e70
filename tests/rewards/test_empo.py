"""EMPO (arXiv 2504.05812) semantic-entropy shaping: policy.md §19(e), label-freeness, equivalence, recipe."""

from __future__ import annotations

import json
import math
from collections import Counter

from pathlib import Path

import pytest
import torch
from shaping_inputs import make_input, run_part

import rlfold

from rlfold.algos import ADVANTAGES
from rlfold.cli import main
from rlfold.core.config import LocatedValueError, check_part_options
from rlfold.core.types import Prompt
from rlfold.rewards.empo import cluster_answers, extract_answers
from rlfold.rewards.shaping import SHAPINGS, ShapingInput

GRPO = ADVANTAGES.get("grpo")


def _reference(answers: list[str | None], zero_all_distinct: bool = True) -> tuple[list[float], float]:
    """Independent reference for one group of already-canonical answers (None: no answer, a singleton)."""
    g = len(answers)
    keys = [("none", i) if a is None else ("ans", a) for i, a in enumerate(answers)]
    counts = Counter(keys)
    h = -sum(c / g * math.log(c / g) for c in counts.values())
    if zero_all_distinct and len(counts) == g:
        return [0.0] * g, h
    return [0.0 if a is None else counts[k] / g for a, k in zip(answers, keys)], h


def _zero_scores(completions, groups=None, **kw) -> ShapingInput:
    n = len(completions)
    return make_input(completions, "gold", [0.0] * n, groups, scores=[0.0] * n, **kw)


def test_worked_example_policy_md_19e() -> None:
    out = run_part("empo", _zero_scores(["a", "a", "a", "b", "b", "c", ""]), answer="exact")
    assert out.scores.tolist() == pytest.approx([3 / 7, 3 / 7, 3 / 7, 2 / 7, 2 / 7, 1 / 7, 0.0])
    ref, h = _reference(["a", "a", "a", "b", "b", "c", None])
    assert out.scores.tolist() == pytest.approx(ref)
    # H over the clusters {a:3, b:2, c:1, '':1}
    assert out.metrics["shaping/empo/entropy"] == pytest.approx(
        -(3 / 7 * math.log(3 / 7) + 2 / 7 * math.log(2 / 7) + 2 * (1 / 7) * math.log(1 / 7)))
    assert out.metrics["shaping/empo/entropy"] == pytest.approx(h)
    assert out.metrics["shaping/empo/entropy_frac"] == pytest.approx(h / math.log(7))
    assert out.metrics["shaping/empo/majority"] == pytest.approx(3 / 7)
    assert out.metrics["shaping/empo/no_answer"] == pytest.approx(1 / 7)
    assert out.metrics["shaping/empo/zeroed"] == 0.0


def test_all_identical_gives_reward_one_and_zero_grpo_advantage() -> None:
    out = run_part("empo", _zero_scores(["12"] * 7))
    assert out.scores.tolist() == [1.0] * 7
    assert out.metrics["shaping/empo/entropy"] == 0.0
    adv, _ = GRPO(out.scores, torch.zeros(7, dtype=torch.long), torch.ones(7, 3))
    assert torch.count_nonzero(adv) == 0


def test_grpo_advantage_favours_the_majority() -> None:
    out = run_part("empo", _zero_scores(["3", "3", "3", "4", "5"]))
    adv, _ = GRPO(out.scores, torch.zeros(5, dtype=torch.long), torch.ones(5, 1))
    a = adv[:, 0].tolist()
    assert a[0] == a[1] == a[2] > 0 > a[3] == a[4]


def test_all_distinct_rule_and_its_switch() -> None:
    cs = ["1", "2", "3", ""]  # the empty answer is its own cluster: 4 clusters for G = 4
    on = run_part("empo", _zero_scores(cs))
    assert on.scores.tolist() == [0.0] * 4 and on.metrics["shaping/empo/zeroed"] == 1.0
    assert on.metrics["shaping/empo/entropy"] == pytest.approx(math.log(4))
    off = run_part("empo", _zero_scores(cs), zero_all_distinct=False)
    assert off.scores.tolist() == pytest.approx([0.25, 0.25, 0.25, 0.0])
    # several empty answers never form a cluster: [7, '', ''] is all-distinct
    assert run_part("empo", _zero_scores(["7", "", ""])).scores.tolist() == [0.0] * 3
    # a group of one response is all-distinct too
    single = run_part("empo", _zero_scores(["7"]))
    assert single.scores.tolist() == [0.0] and single.metrics["shaping/empo/entropy_frac"] == 0.0


def test_groups_are_scored_independently_with_interleaved_ids() -> None:
    cs = ["1", "5", "1", "5", "2", "6"]
    groups = [3, 9, 3, 9, 3, 9]
    out = run_part("empo", _zero_scores(cs, groups))
    r0, h0 = _reference(["1", "1", "2"])
    r1, h1 = _reference(["5", "5", "6"])
    assert out.scores.tolist() == pytest.approx([r0[0], r1[0], r0[1], r1[1], r0[2], r1[2]])
    assert out.metrics["shaping/empo/entropy"] == pytest.approx((h0 + h1) / 2)


def test_final_answer_extraction_compares_the_last_integer_by_value() -> None:
    assert extract_answers(["x = 7", "07", "3 then -2", "none", ""], "final_answer") == [7, 7, -2, None, None]
    out = run_part("empo", _zero_scores(["so 7", "7", "007", "8", "no idea"]))
    assert out.scores.tolist() == pytest.approx([0.6, 0.6, 0.6, 0.2, 0.0])
    assert extract_answers(["  ab ", "", "   "], "exact") == ["ab", None, None]
    with pytest.raises(ValueError, match="answer must be one of"):
        extract_answers(["1"], "nope")


def test_math_verify_equivalence_clusters_equal_values() -> None:
    cs = ["0.5", "1/2", "\\boxed{\\frac{1}{2}}", "The answer is \\boxed{0.25}", "no answer here"]
    mv = run_part("empo", _zero_scores(cs), answer="math_verify")
    assert mv.scores.tolist() == pytest.approx([0.6, 0.6, 0.6, 0.2, 0.0])
    # exact matching keeps "0.5" and "1/2" apart (all five distinct -> all zero)
    assert run_part("empo", _zero_scores(cs), answer="exact").scores.tolist() == [0.0] * 5
    assert cluster_answers([1, 2, 1, None, None, 2]) == [0, 1, 0, 2, 3, 1]


def test_reads_no_gold_answer_and_no_correctness() -> None:
    cs = ["4", "4", "5", "", "4", "9", "9", "1"]
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    honest = make_input(cs, ["4"] * 4 + ["9"] * 4, [1, 1, 0, 0, 0, 1, 1, 0], groups, scores=[0.0] * 8)
    garbage = make_input(cs, "¿garbage not an answer", [0, 1, 1, 1, 1, 0, 0, 1], groups, scores=[0.0] * 8)

    class NoGold:
        """A prompt whose gold answer must never be read."""

        text, meta = "q", {}

        @property
        def answer(self) -> str:
            raise AssertionError("empo read prompt.answer")

    blind = ShapingInput(**{**{f: getattr(honest, f) for f in honest.__dataclass_fields__},
                            "prompts": [NoGold() for _ in cs],
                            "correct": torch.full((8,), float("nan"))})
    for kw in ({}, {"answer": "exact"}, {"answer": "math_verify"}):
        a = run_part("empo", honest, **kw).scores
        assert torch.equal(a, run_part("empo", garbage, **kw).scores)
        assert torch.equal(a, run_part("empo", blind, **kw).scores)
    assert run_part("empo", honest).scores.tolist() == pytest.approx([0.5, 0.5, 0.25, 0.0, 0.25, 0.5, 0.5, 0.25])


def test_scoring_stage_with_the_recipe_rewards_ignores_the_gold() -> None:
    """Through the trainer's Scorer: format at weight 0, then empo; a garbage gold changes acc, not the reward."""
    from rlfold.core.types import RolloutBatch  # noqa: PLC0415
    from rlfold.trainers.scoring import Scorer  # noqa: PLC0415

    texts = ["12", "12", "13", "x", "5", "5", "5", "6"]
    n = len(texts)
    roll = RolloutBatch(prompt_ids=torch.zeros(n, 1, dtype=torch.long), prompt_mask=torch.ones(n, 1),
                        response_ids=torch.ones(n, 2, dtype=torch.long), response_mask=torch.ones(n, 2),
                        sample_logprobs=torch.zeros(n, 2), policy_logprobs=torch.zeros(n, 2),
                        finish_reasons=["stop"] * n, response_texts=texts)
    groups = torch.tensor([0] * 4 + [1] * 4)
    scorer = Scorer([("format", 0.0, {})], "exact_match", "raise", [("empo", {})], max_len=8, tokenizer=None)
    honest = scorer([Prompt("q0", "12")] * 4 + [Prompt("q1", "5")] * 4, roll, groups, step=0)
    garbage = scorer([Prompt("q0", "zzz")] * 4 + [Prompt("q1", "-1")] * 4, roll, groups, step=0)
    assert honest.scores.tolist() == pytest.approx([0.5, 0.5, 0.25, 0.0, 0.75, 0.75, 0.75, 0.25])
    assert torch.equal(honest.scores, garbage.scores)
    assert torch.equal(honest.token_rewards, garbage.token_rewards)
    assert honest.per_fn["exact_match"].sum() == 5 and garbage.per_fn["exact_match"].sum() == 0
    assert honest.metrics["shaping/empo/entropy"] == garbage.metrics["shaping/empo/entropy"] > 0


def test_adds_weighted_reward_to_the_current_score() -> None:
    inp = make_input(["1", "1", "2"], "1", [0, 0, 0], scores=[1.0, -1.0, 0.5])
    out = run_part("empo", inp, weight=3.0)
    assert out.scores.tolist() == pytest.approx([1.0 + 2.0, -1.0 + 2.0, 0.5 + 1.0])
    assert out.scores.dtype == torch.float32


def test_entropy_band_filter_zeroes_groups_outside() -> None:
    cs = ["1"] * 4 + ["1", "1", "1", "2"] + ["1", "1", "2", "2"]
    groups = [0] * 4 + [1] * 4 + [2] * 4
    h1 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # ~0.562; group 2 has log 2 ~ 0.693
    out = run_part("empo", _zero_scores(cs, groups), entropy_low=0.0, entropy_high=0.6)
    assert out.scores.tolist() == pytest.approx([0.0] * 4 + [0.75, 0.75, 0.75, 0.25] + [0.0] * 4)
    assert out.metrics["shaping/empo/zeroed"] == pytest.approx(2 / 3)
    low_only = run_part("empo", _zero_scores(cs, groups), entropy_low=h1)  # strict: H = h1 is dropped
    assert low_only.scores.tolist() == pytest.approx([0.0] * 8 + [0.5] * 4)
    with pytest.raises(ValueError, match="entropy_low"):
        run_part("empo", _zero_scores(cs, groups), entropy_low=0.7, entropy_high=0.6)


def test_shape_mismatch_is_refused() -> None:
    inp = _zero_scores(["1", "2"])
    bad = ShapingInput(**{**{f: getattr(inp, f) for f in inp.__dataclass_fields__}, "scores": torch.zeros(3)})
    with pytest.raises(ValueError, match="one per completion"):
        run_part("empo", bad)


def test_option_domains_are_checked_by_config_validation() -> None:
    fn = SHAPINGS.get("empo")
    check_part_options(("shaping", 0, "kwargs"), "reward-shaping part", "empo", fn,
                       {"answer": "math_verify", "entropy_high": 1.0}, n_positional=1, reserved=("state",))
    for bad in ({"answer": "boxed"}, {"entropy_high": 0.0}, {"entropy_low": -1.0}, {"timeout_seconds": 0}):
        with pytest.raises(LocatedValueError):
            check_part_options(("shaping", 0, "kwargs"), "reward-shaping part", "empo", fn, bad,
                               n_positional=1, reserved=("state",))


def test_recipe_has_no_label_based_training_reward() -> None:
    from rlfold.core.config_loader import load_config  # noqa: PLC0415

    cfg = load_config(Path(rlfold.__file__).parent / "recipes" / "empo.yaml")
    assert [(r.name, r.weight) for r in cfg.rewards] == [("format", 0.0)]
    assert cfg.accuracy_reward == "exact_match" and [s.name for s in cfg.shaping] == ["empo"]
    assert cfg.rollout.n == 7 and cfg.algo.kl_coef == 0.0
    # the format reward is label-free too: a garbage gold changes nothing
    from rlfold.rewards import score_rewards  # noqa: PLC0415

    cs, fin = ["12", "x"], ["stop", "stop"]
    a = score_rewards([("format", 1.0)], [Prompt("q", "12")] * 2, cs, fin).total
    assert torch.equal(a, score_rewards([("format", 1.0)], [Prompt("q", "???")] * 2, cs, fin).total)


def test_recipe_runs_two_steps_through_the_cli(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    rc = main(["train", "empo", f"run_dir={run_dir}", "train.steps=2", "train.prompts_per_step=4", "eval.size=8",
               "eval.every=0", "checkpoint.every=0", "log.progress=false", "threads=1"])
    assert rc == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] > 0 and "shaping/empo/entropy" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert not {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
        assert 0.0 <= r["shaping/empo/entropy"] <= math.log(7) + 1e-9
        assert r["reward/unscorable_frac"] == 0.0 and "acc/mean" in r
    # held-out accuracy is still measured, by the gold-based accuracy_reward, before and after training
    assert any(k.startswith("val/") for k in rows[0]) and any(k.startswith("val/") for k in rows[-1])
