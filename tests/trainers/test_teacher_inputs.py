"""The teacher-context inputs of CEPO (arXiv 2605.19436) on the shipped tiny model: r- per group, Delta = 0 where
r- = r+, shapes and padding, Delta equal to an explicit per-row computation; ``train_step``; and the cepo recipe
running two steps with its metrics."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from rlfold.core.types import FINISH_STOP, Prompt, RolloutBatch
from rlfold.models import load_model_and_tokenizer
from rlfold.trainers.inputs import INPUTS, StepContext, provide
from rlfold.trainers.teacher_inputs import DEFAULT_HINT, make_cepo_delta, read_answer, wrong_answers

from _rollout_batch import hand_batch as _batch  # noqa: E402

RECIPE = Path(__file__).resolve().parents[2] / "src/rlfold/recipes/cepo.yaml"
TINY_RUN = ["train.steps=2", "train.prompts_per_step=2", "rollout.n=4", "task.held_out_size=4", "eval.size=4",
            "log.progress=false", "checkpoint.every=0", "threads=1"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model_and_tokenizer("tiny-arith")


# Group 0: one right, two wrong with the lowest score (r- = "5", the first of them). Group 1: another prompt,
# r- = "1007" (teacher contexts of four lengths in one forward: left padding). Group 2: every score equal (no
# signal): r- = r+. Group 3: the lowest-score answer is the gold one: r- = r+. Group 4: the lowest-score answer is
# empty: r- = r+.
PROMPTS = [Prompt("58+67=", "125")] * 3 + [Prompt("3+4=", "7")] * 2 + [Prompt("12+30=", "42")] * 2 \
    + [Prompt("20+20=", "40")] * 2 + [Prompt("11+11=", "22")] * 2
TEXTS = ["125", "5", "12", "7", "1007", "41", "43", "40", " 40 ", "22", " "]
SCORES = torch.tensor([1.1, 0.0, 0.0, 1.1, 0.0, 0.1, 0.1, 1.1, 1.0, 1.1, 0.0])
GROUPS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
WRONG = ["5", "5", "5", "1007", "1007"]


def _ctx(tiny, prompts=PROMPTS, texts=TEXTS, scores=SCORES, groups=GROUPS, step=0) -> StepContext:
    model, tok = tiny
    roll = _batch(tok, prompts, texts)
    n, r = roll.response_ids.shape
    return StepContext(step=step, prompts=list(prompts), roll=roll, scores=scores, rewards=scores,
                       token_rewards=torch.zeros(n, r), group_ids=groups, tokenizer=tok, model=model,
                       autocast=nullcontext)


def test_wrong_answer_per_group():
    wrong = wrong_answers(PROMPTS, TEXTS, SCORES, GROUPS)
    assert wrong == WRONG + [None] * 6


def test_wrong_answer_ignores_row_order_and_skips_lowest_rows_that_give_the_gold():
    prompts = [Prompt("1+1=", "2")] * 4
    # lowest score 0.0 on rows 1 (gold "2", with a bad format), 2 ("3") and 3 ("4"): r- = "3"
    wrong = wrong_answers(prompts, ["2", "2 ", "3", "4"], torch.tensor([1.1, 0.0, 0.0, 0.0]),
                          torch.tensor([7, 7, 7, 7]))
    assert wrong == ["3"] * 4


@pytest.mark.parametrize("rule, text, answer", [("stripped", " 125 ", "125"), ("last_number", "so 12 then 125.", "125"),
                                                 ("boxed", "x \\boxed{7} y \\boxed{9}", "9"), ("boxed", "none", None)])
def test_answer_rules(rule, text, answer):
    assert read_answer(text, rule) == answer


def test_delta_shapes_padding_and_zero_where_r_minus_is_r_plus(tiny):
    ctx = _ctx(tiny)
    delta = INPUTS.get("cepo_delta")(ctx)
    assert delta.shape == ctx.roll.response_ids.shape and delta.dtype == torch.float32
    assert torch.isfinite(delta).all()
    pad = ctx.roll.response_mask == 0
    assert pad.any() and (delta[pad] == 0).all()
    assert (delta[5:] == 0).all()              # groups 2-4: r- = r+ => Delta = 0 exactly
    assert (delta[:5][ctx.roll.response_mask[:5].bool()] != 0).any()
    assert provide(("cepo_delta",), ctx)["cepo_delta"] is delta  # computed once per step


def _explicit_logprobs(model, tok, context: str, response_ids: list[int]) -> torch.Tensor:
    ids = tok(context, add_special_tokens=True)["input_ids"]
    full = torch.tensor([ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=full).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    pos = torch.arange(len(ids) - 1, len(ids) + len(response_ids) - 1)
    return logp[pos, torch.tensor(response_ids)]


def test_delta_equals_an_explicit_per_row_computation(tiny):
    model, tok = tiny
    model.eval()
    ctx = _ctx(tiny)
    delta = make_cepo_delta(DEFAULT_HINT)(ctx)
    for i in range(5):
        n = int(ctx.roll.response_mask[i].sum())
        resp = ctx.roll.response_ids[i, :n].tolist()
        pos = _explicit_logprobs(model, tok, DEFAULT_HINT.format(prompt=PROMPTS[i].text, answer=PROMPTS[i].answer), resp)
        neg = _explicit_logprobs(model, tok, DEFAULT_HINT.format(prompt=PROMPTS[i].text, answer=WRONG[i]), resp)
        assert torch.allclose(delta[i, :n], pos - neg, atol=1e-5, rtol=0), i


def test_another_hint_template_changes_delta_and_bad_templates_are_refused(tiny):
    ctx = _ctx(tiny)
    base = make_cepo_delta()(ctx)
    other = make_cepo_delta("{answer}|{prompt}")(_ctx(tiny))
    assert not torch.allclose(base[:5], other[:5])
    with pytest.raises(ValueError, match="prompt"):
        make_cepo_delta("{answer} only")
    with pytest.raises(ValueError, match="answer rule"):
        make_cepo_delta(answer="first")


def test_train_step_is_the_step_index_on_every_row(tiny):
    ctx = _ctx(tiny, step=7)
    step = INPUTS.get("train_step")(ctx)
    assert step.dtype == torch.float64 and torch.equal(step, torch.full((len(TEXTS),), 7.0, dtype=torch.float64))


def test_cepo_recipe_runs_two_steps_and_logs_its_metrics(tmp_path):
    from rlfold.core.config_loader import load_config
    from rlfold.trainers.loop import build_run

    cfg = load_config(RECIPE, TINY_RUN)
    rows = build_run(cfg, tmp_path / "run").fit()
    assert [r["step"] for r in rows if "selection/cepo_lambda" in r] == [1, 2]  # logged steps count from 1
    last = [r for r in rows if "selection/cepo_lambda" in r]
    assert [r["selection/cepo_lambda"] for r in last] == pytest.approx([0.5, 0.48], abs=1e-12)
    for r in last:
        assert math.isfinite(r["actor/pg_loss"]) and r["selection/cepo_weight_mean"] > 0
        assert r["selection/cepo_delta_abs_mean"] >= 0
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("selection/cepo_weight_mean" in r for r in logged)
