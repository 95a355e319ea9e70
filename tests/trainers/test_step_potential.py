"""The step-potential inputs of SPAE (arXiv 2601.03823) on the shipped tiny-verbose-arith model: the step map of a
hand-made response, probe contexts, Acc of the gold answer above a wrong one, Phi equal to an explicit per-row,
per-step computation, and the spae recipe running two steps with its metrics."""

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
from rlfold.trainers.step_potential import ANSWER_CUE, STEP_DELIMITER, make_step_potential, probe_ends, step_maps

from _rollout_batch import hand_batch as _batch  # noqa: E402

RECIPE = Path(__file__).resolve().parents[2] / "src/rlfold/recipes/spae.yaml"
TINY_RUN = ["train.steps=2", "train.prompts_per_step=2", "rollout.n=4", "task.held_out_size=4", "eval.size=4",
            "log.progress=false", "checkpoint.every=0", "threads=1"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model_and_tokenizer("tiny-verbose-arith")


TEXT = "125. check 125. 125"
# Row 0: the gold answer; row 1: the same response scored against a wrong answer; row 2: another problem, one step.
PROMPTS = [Prompt("58+67=", "125"), Prompt("58+67=", "124"), Prompt("30+12=", "42")]
TEXTS = [TEXT, TEXT, "42"]


def _ctx(tiny) -> StepContext:
    model, tok = tiny
    roll = _batch(tok, PROMPTS, TEXTS)
    n, r = roll.response_ids.shape
    return StepContext(step=0, prompts=list(PROMPTS), roll=roll, scores=torch.zeros(n), rewards=torch.zeros(n),
                       token_rewards=torch.zeros(n, r), group_ids=torch.tensor([0, 0, 1]), tokenizer=tok,
                       model=model, autocast=nullcontext)


def test_step_map_and_probe_ends_of_a_hand_made_response(tiny):
    ctx = _ctx(tiny)
    steps = INPUTS.get("spae_steps")(ctx)
    width = ctx.roll.response_ids.shape[1]
    # "125. " (5 tokens) | "check 125. " (11) | "125" + eos (4) | padding
    want0 = [0] * 5 + [1] * 11 + [2] * 4
    assert steps[0].tolist() == want0 + [-1] * (width - 20)
    assert steps[2].tolist() == [0, 0, 0] + [-1] * (width - 3)
    ends = probe_ends(steps, INPUTS.get("response_char_ends")(ctx))
    assert ends[0] == [5, 16, 19] and ends[2] == [2]  # the eos (no text) is left out of the last probe


def test_step_maps_of_plain_strings_with_a_repeated_delimiter():
    texts = ["a. . b", "no delimiter"]
    ends = torch.tensor([[1, 2, 3, 4, 5, 6, 6], [1, 2, 3, 4, 5, 6, 7]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]])
    steps = step_maps(texts, ends, mask, ". ")
    assert steps[0].tolist() == [0, 0, 0, 1, 1, 2, -1]
    assert steps[1].tolist() == [0] * 7
    with pytest.raises(ValueError, match="delimiter"):
        step_maps(texts, ends, mask, "")


def _explicit_phi(model, tok, prompt: str, context: str, answer: str) -> float:
    p = tok(prompt, add_special_tokens=True)["input_ids"]
    c = tok(context, add_special_tokens=False)["input_ids"]
    a = tok(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + c + a])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    pos = torch.arange(len(p) + len(c) - 1, len(p) + len(c) + len(a) - 1)
    lp = logp[pos, torch.tensor(a)]
    ent = -(logp[pos].exp() * logp[pos]).sum(-1)
    acc, conf = float(lp.exp().mean()), math.exp(-float(ent.mean()))
    return 1.5 * acc * conf + 0.5 * acc - conf


def test_potential_equals_an_explicit_per_row_per_step_computation(tiny):
    model, tok = tiny
    model.eval()
    ctx = _ctx(tiny)
    steps, pot = provide(("spae_steps", "spae_potential"), ctx).values()
    assert pot.dtype == torch.float64 and (pot[steps < 0] == 0).all()
    prefixes = {0: ["125. ", "125. check 125. ", "125. check 125. 125. "], 2: ["42. "]}
    prefixes[1] = prefixes[0]
    for i, ctxs in prefixes.items():
        for k, prefix in enumerate(ctxs):
            want = _explicit_phi(model, tok, PROMPTS[i].text, prefix + ANSWER_CUE, PROMPTS[i].answer)
            got = pot[i][steps[i] == k]
            assert got.numel() > 0 and torch.allclose(got, torch.full_like(got, want), atol=1e-5, rtol=0), (i, k)
    assert provide(("spae_potential",), ctx)["spae_potential"] is pot  # computed once per step


def test_the_gold_answer_gets_a_higher_potential_than_a_wrong_one(tiny):
    ctx = _ctx(tiny)
    steps, pot = INPUTS.get("spae_steps")(ctx), INPUTS.get("spae_potential")(ctx)
    for k in range(3):
        gold, wrong = pot[0][steps[0] == k][0], pot[1][steps[1] == k][0]
        assert gold > 0.5 and gold > wrong + 0.5, k
    geo = make_step_potential(acc="geometric")(_ctx(tiny))[1]
    assert geo[0, 0] > geo[1, 0] and not torch.equal(geo, pot)


def test_bad_settings_are_refused(tiny):
    with pytest.raises(ValueError, match="delimiter"):
        make_step_potential(delimiter="")
    with pytest.raises(ValueError, match="acc"):
        make_step_potential(acc="sum")
    ctx = _ctx(tiny)
    ctx.prompts[2] = Prompt("30+12=", " ")
    with pytest.raises(ValueError, match="empty gold answer"):
        make_step_potential(STEP_DELIMITER)(ctx)


def test_spae_recipe_runs_two_steps_and_logs_its_metrics(tmp_path):
    from rlfold.core.config_loader import load_config
    from rlfold.trainers.loop import build_run

    cfg = load_config(RECIPE, TINY_RUN)
    rows = build_run(cfg, tmp_path / "run").fit()
    steps = [r for r in rows if "spae/phi_mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert -1 <= r["spae/phi_mean"] <= 1 and r["spae/c_sat_mean"] >= 0 and 0.5 <= r["spae/f_mean"] <= 1
        assert r["spae/steps_mean"] >= 1 and math.isfinite(r["actor/pg_loss"])
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(k in r for r in logged if r["step"] > 0 and "spae/phi_mean" in r
               for k in ("spae/phi_mean", "spae/c_sat_mean", "spae/f_mean"))
    assert sum("spae/f_mean" in r for r in logged) == 2
