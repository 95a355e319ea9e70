"""Tool output in a multi-turn trajectory is attended but never trained on: its tokens get exactly zero
gradient through every loss term, and the trainer's recomputed log-probs equal the engine's (1e-5)."""

from __future__ import annotations

import json

import pytest
import torch

from rlfold.algos import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
from rlfold.core.types import Prompt
from rlfold.envs import ENVIRONMENTS
from rlfold.models import load_model_and_tokenizer
from rlfold.models.logprobs import sequence_logprobs
from rlfold.rollout import ENGINES, EngineContext, MultiTurnEngine, SamplingParams, requests_for
from rlfold.tasks import TASKS
from rlfold.trainers import update
from rlfold.trainers.update import EntropyTerm, KLTerm, PolicyTerm, PreparedBatch, accumulate_loss


def _arith_episodes(tmp_path_factory):
    """tiny-arith writes sums, not tool calls: each turn is answered with the format's invalid-action text, an
    observation like a tool's."""
    model, tok = load_model_and_tokenizer("tiny-arith")
    corpus = tmp_path_factory.mktemp("c") / "corpus.jsonl"
    corpus.write_text(json.dumps({"title": "Zorvak", "text": "Zorvak lives in Kimoro."}) + "\n")
    env = ENVIRONMENTS.get("tool_agent")(tools={"search": {"name": "bm25", "kwargs": {"corpus": str(corpus)}}},
                                         format_kwargs={"invalid_message": " Zorvak lives in Kimoro."}, max_invalid=3)
    prompts = [Prompt("58+67=", "125"), Prompt("3+4=", "7"), Prompt("12+34=", "46")]
    return model, tok, env, prompts, SamplingParams(temperature=1.0, n=2, max_new_tokens=6), "per_turn"


def _search_episodes(tmp_path_factory):
    """tiny-search on knowledge questions: real <search> calls answered by BM25 over the shipped corpus."""
    model, tok = load_model_and_tokenizer("tiny-search")
    env = ENVIRONMENTS.get("tool_agent")(
        tools={"search": {"name": "bm25", "kwargs": {"corpus": "search-corpus.jsonl", "k": 1}}}, max_invalid=0)
    task = TASKS.get("search_qa")(held_out_size=40)
    prompts = [p for p in task.held_out if p.meta["kind"] == "knowledge"][:12]
    return model, tok, env, prompts, SamplingParams(temperature=1.0, n=8, max_new_tokens=64), "total"


@pytest.fixture(scope="module", params=["arith_invalid_turns", "search_calls"])
def trajectory(request, tmp_path_factory):
    """Multi-turn episodes over the real hf engine with the tool_agent environment."""
    torch.manual_seed(0)
    make = _arith_episodes if request.param == "arith_invalid_turns" else _search_episodes
    model, tok, env, prompts, params, budget = make(tmp_path_factory)
    model.eval()
    hf = ENGINES.get("hf")(EngineContext(model=model, tokenizer=tok, model_path="tiny", dtype=torch.float32))
    eng = MultiTurnEngine(hf, tok, env, max_turns=3, turn_budget=budget)
    roll = eng.generate(requests_for(prompts), params, seed=3)
    if request.param == "search_calls":
        assert sum(roll.extras["tools/calls"]) >= 3  # several real searches among the 96 episodes
    return model, tok, roll


def test_the_trajectory_has_observation_tokens(trajectory):
    _, _, roll = trajectory
    observed = (roll.response_attention_mask.bool() & ~roll.response_mask.bool()).sum()
    assert observed > 20 and max(roll.extras["turns"]) > 1 and roll.extras["env/errors"] == [0.0] * roll.size


def test_recomputed_logprobs_equal_the_engines(trajectory):
    model, _, roll = trajectory
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask,
                                    response_attention_mask=roll.response_attention_mask)
    m = roll.response_mask.bool()
    assert (logp - roll.policy_logprobs)[m].abs().max() < 1e-5


@pytest.mark.parametrize("loss", ["ppo_clip", "gspo", "cispo"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_tool_tokens_get_exactly_zero_gradient(trajectory, monkeypatch, loss, agg):
    model, _, roll = trajectory
    captured = {}

    def spy(*args, **kwargs):  # the trainer's own forward, with the gradient of its outputs kept
        logp, ent = sequence_logprobs(*args, **kwargs)
        logp.retain_grad()
        ent.retain_grad()
        captured["logp"], captured["ent"] = logp, ent
        return logp, ent

    monkeypatch.setattr(update, "sequence_logprobs", spy)
    obs = roll.response_attention_mask.bool() & ~roll.response_mask.bool()
    # advantages, old and reference log-probs are non-zero on the tool tokens too: only the mask may zero them
    adv = torch.randn(roll.response_ids.shape) + 1.0
    old = roll.policy_logprobs + 0.2 * torch.randn(roll.response_ids.shape)
    prep = PreparedBatch(roll=roll, advantages=adv, old_logprobs=old, loss_mask=roll.response_mask.float(),
                         prompts=[], ref_logprobs=old - 0.1)
    fn = POLICY_LOSSES.get(loss)
    terms = [PolicyTerm(fn, {}), KLTerm(KL_ESTIMATORS.get("k3"), 0.1), EntropyTerm(0.01)]
    model.zero_grad(set_to_none=True)
    _, ok = accumulate_loss(model, prep, torch.arange(roll.size), 0, terms, AGGREGATIONS.get(agg), max_len=20)
    assert ok
    width = captured["logp"].shape[1]
    g_logp, g_ent = captured["logp"].grad, captured["ent"].grad
    o = obs[:, :width]
    assert g_logp[o].abs().max() == 0 and g_ent[o].abs().max() == 0
    m = roll.response_mask[:, :width].bool()
    assert (g_logp[m] != 0).float().mean() > 0.9  # model tokens are trained
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
