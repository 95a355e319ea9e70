"""The generic multi-turn engine over the hf engine: token in, token out; observations masked from the
loss but attended; multi-attempt RL (arXiv 2503.04808) as an environment."""

from __future__ import annotations

import pytest
import torch

from rlfold.core.contracts import EnvStep
from rlfold.core.types import FINISH_LENGTH, FINISH_STOP, Prompt
from rlfold.envs.multi_attempt import MultiAttemptEnv
from rlfold.models import load_model_and_tokenizer
from rlfold.models.logprobs import sequence_logprobs
from rlfold.rewards import REWARDS
from rlfold.rewards.multi_attempt import split_attempts
from rlfold.rollout import ENGINES, EngineContext, GenerationRequest, MultiTurnEngine, SamplingParams, requests_for

FB = "Wrong!Try_again:"
PROMPTS = [Prompt("58+67=", "125"), Prompt("3+4=", "7"), Prompt("12+34=", "46")]


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model_and_tokenizer("tiny-arith")
    return model.eval(), tok


def _hf(tiny):
    model, tok = tiny
    return ENGINES.get("hf")(EngineContext(model=model, tokenizer=tok, model_path="tiny-arith", dtype=torch.float32))


class Spy:
    """An engine that records every request it is given and delegates to the real one."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.pad_id, self.shares_weights = inner.pad_id, inner.shares_weights

    def generate(self, requests, params, seed):
        self.calls.append(([list(r.context_ids) if r.context_ids else None for r in requests],
                           [r.max_new_tokens for r in requests], params.n, seed))
        return self.inner.generate(requests, params, seed)


class Scripted:
    """Always answers ``obs`` and never ends the episode itself."""

    stop_strings = ()

    def __init__(self, obs: str):
        self.obs = obs

    def reset(self, prompt, seed):
        return {"turns": 0}

    def step(self, state, text, finish):
        state["turns"] += 1
        return EnvStep(observation=self.obs, done=False, info={"seen": 1.0})


def test_turns_are_appended_as_tokens_and_observations_are_masked_but_attended(tiny):
    model, tok = tiny
    spy = Spy(_hf(tiny))
    eng = MultiTurnEngine(spy, tok, Scripted(FB), max_turns=3, turn_budget="per_turn")
    b = eng.generate(requests_for(PROMPTS), SamplingParams(temperature=1.0, n=2, max_new_tokens=6), seed=5)
    obs = tok(FB, add_special_tokens=False)["input_ids"]
    assert b.size == 6 and b.extras["turns"] == [3] * 6 and b.extras["env/seen"] == [3.0] * 6
    # turn 2 of every row continued after exactly prompt + turn 1 + observation ids (nothing re-tokenised)
    first_ctx, _, _, _ = spy.calls[0]
    assert first_ctx == [None, None, None]
    ctx2, limits2, n2, _ = spy.calls[1]
    assert n2 == 1 and limits2 == [6] * 6
    for r in range(6):
        prompt = b.prompt_ids[r, b.prompt_mask[r].bool()].tolist()
        resp = b.response_ids[r, b.response_attention_mask[r].bool()].tolist()
        assert ctx2[r] == prompt + resp[: len(ctx2[r]) - len(prompt)]
        assert ctx2[r][-len(obs):] == obs
        # the observation tokens: loss mask 0, attention 1, no log-prob or entropy
        loss, att = b.response_mask[r], b.response_attention_mask[r]
        spans = [(j, j + len(obs)) for j in range(att.sum()) if resp[j:j + len(obs)] == obs and loss[j] == 0]
        assert len(spans) == 2
        for s, e in spans:
            assert loss[s:e].sum() == 0 and att[s:e].sum() == e - s
            assert b.policy_logprobs[r, s:e].abs().sum() == 0 and b.entropy[r, s:e].abs().sum() == 0
    # the trainer recomputes the engine's log-probs exactly when it attends to the observations
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask,
                                    response_attention_mask=b.response_attention_mask)
        blind, _ = sequence_logprobs(model, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask)
    m = b.response_mask.bool()
    assert (logp - b.policy_logprobs)[m].abs().max() < 1e-5
    assert (blind - b.policy_logprobs)[m].abs().max() > 1e-3  # ignoring them would be wrong


def test_total_budget_bounds_all_turns(tiny):
    _, tok = tiny
    eng = MultiTurnEngine(_hf(tiny), tok, Scripted(FB), max_turns=10, turn_budget="total")
    b = eng.generate(requests_for(PROMPTS), SamplingParams(temperature=1.0, n=2, max_new_tokens=9, ignore_eos=True),
                     seed=1)
    # ignore_eos: every turn runs to its limit, so the first turn spends the whole budget
    assert b.response_mask.sum(1).tolist() == [9] * 6 and b.finish_reasons == [FINISH_LENGTH] * 6
    assert b.extras["turns"] == [1] * 6


def test_same_seed_same_episodes(tiny):
    _, tok = tiny
    eng = MultiTurnEngine(_hf(tiny), tok, MultiAttemptEnv(attempts=3, feedback=FB, min_attempts=1))
    params = SamplingParams(temperature=1.0, n=3, max_new_tokens=30)
    a = eng.generate(requests_for(PROMPTS), params, seed=3)
    b = eng.generate(requests_for(PROMPTS), params, seed=3)
    c = eng.generate(requests_for(PROMPTS), params, seed=4)
    assert torch.equal(a.response_ids, b.response_ids) and a.extras == b.extras
    assert not torch.equal(a.response_ids, c.response_ids) or a.extras != c.extras


def test_multi_attempt_episodes_follow_the_verifier(tiny):
    _, tok = tiny
    env = MultiAttemptEnv(attempts=3, feedback=FB)
    eng = MultiTurnEngine(_hf(tiny), tok, env)
    b = eng.generate(requests_for(PROMPTS), SamplingParams(temperature=1.0, n=4, max_new_tokens=40), seed=2)
    reward = REWARDS.get("multi_attempt")
    assert max(b.extras["turns"]) > 1 and min(b.extras["turns"]) == 1  # retries happened, and first-try hits
    for r in range(b.size):
        attempts = split_attempts(b.response_texts[r], FB)
        assert len(attempts) == b.extras["turns"][r] == int(b.extras["env/attempts"][r])
        gold = PROMPTS[r // 4].answer
        correct = [a.strip() == gold for a in attempts]
        assert not any(correct[:-1])  # the episode stops at the first correct attempt
        if b.extras["turns"][r] < 3 and b.finish_reasons[r] == FINISH_STOP:
            assert correct[-1]
        assert b.extras["env/correct"][r] == float(correct[-1])
        score = reward([PROMPTS[r // 4]], [b.response_texts[r]], [b.finish_reasons[r]], feedback=FB)[0]
        assert score == (1.0 if any(correct) else -0.5)


def test_min_attempts_allowance_is_per_prompt(tiny):
    env = MultiAttemptEnv(attempts=5, feedback=FB, min_attempts=1)
    allowances = {env.reset(PROMPTS[0], seed).allowance for seed in range(40)}
    assert allowances == {1, 2, 3, 4, 5}
    assert env.reset(PROMPTS[0], 7).allowance == env.reset(PROMPTS[1], 7).allowance  # a function of the seed


def test_an_allowance_of_one_is_single_turn(tiny):
    _, tok = tiny
    eng = MultiTurnEngine(_hf(tiny), tok, MultiAttemptEnv(attempts=1, feedback=FB))
    b = eng.generate(requests_for(PROMPTS), SamplingParams(temperature=1.0, n=2, max_new_tokens=12), seed=0)
    assert b.extras["turns"] == [1] * 6 and FB not in "".join(b.response_texts)
    assert torch.equal(b.response_mask, b.response_attention_mask)


def test_bad_environment_options_are_refused():
    from rlfold.core.errors import ConfigError

    with pytest.raises(ConfigError, match="attempts"):
        MultiAttemptEnv(attempts=0)
    with pytest.raises(ConfigError, match="min_attempts"):
        MultiAttemptEnv(attempts=2, min_attempts=3)
    with pytest.raises(ConfigError, match="feedback"):
        MultiAttemptEnv(feedback="")


def test_the_engine_contract_passes_through(tiny):
    _, tok = tiny
    inner = _hf(tiny)
    eng = MultiTurnEngine(inner, tok, Scripted(FB))
    assert eng.shares_weights is inner.shares_weights and eng.pad_id == inner.pad_id
    eng.sleep(), eng.wake(), eng.update_weights([])  # delegated; no-ops for a shared hf engine
    req = GenerationRequest(prompt=PROMPTS[0], context_ids=tok("58+67=")["input_ids"])
    b = inner.generate([req], SamplingParams(temperature=0.0, n=1, max_new_tokens=4), seed=0)
    c = inner.generate(requests_for(PROMPTS[:1]), SamplingParams(temperature=0.0, n=1, max_new_tokens=4), seed=0)
    assert torch.equal(b.response_ids, c.response_ids)
