"""Fission-GRPO's error-recovery episodes (arXiv 2601.15625) with the rule-based error simulator:
seeded injection at the configured rate, the diagnostic in the observation, the episode going on and
the recovery call answered by the real tool, in the environment alone and in the multi-turn engine."""

from __future__ import annotations

import json

import pytest
import torch

from rlfold.core.config_loader import load_config
from rlfold.core.errors import ConfigError
from rlfold.core.types import FINISH_LENGTH, FINISH_STOP, Prompt, RolloutBatch
from rlfold.envs import ENVIRONMENTS
from rlfold.envs.fission import DEFAULT_DIAGNOSTIC, SIMULATED_ERRORS, FissionToolAgentEnv
from rlfold.envs.tool_formats import Doc, SearchR1Format
from rlfold.models.tiny import build_char_tokenizer
from rlfold.rollout import MultiTurnEngine, SamplingParams, requests_for

DOCS = [{"id": 0, "title": "Zorvak", "text": "Zorvak lives in Kimoro."},
        {"id": 1, "title": "Mibeto", "text": "Mibeto lives in Talune."}]
Q = "Where does Zorvak live?\n"


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return str(path)


def _env(corpus: str, **kw) -> FissionToolAgentEnv:
    tools = {"search": {"name": "bm25", "kwargs": {"corpus": corpus, "k": 1}}}
    return ENVIRONMENTS.get("fission_tool_agent")(tools=tools, **kw)


def _error_obs(diagnostic: str = DEFAULT_DIAGNOSTIC) -> str:
    return SearchR1Format().failure("search", diagnostic)


def test_first_call_gets_the_diagnostic_the_episode_goes_on_and_the_retry_is_answered(corpus):
    env = _env(corpus, error_rate=1.0)
    st = env.reset(Prompt(Q, "Kimoro"), 0)
    out = env.step(st, "<search> who is Zorvak and where </search>", FINISH_STOP)
    assert not out.done
    assert out.observation == _error_obs() == (
        "\n\n<information>error: the search service rejected the query; retry with the entity name only"
        "</information>\n\n")
    assert "Kimoro" not in out.observation  # the diagnostic does not leak the answer
    assert out.info[SIMULATED_ERRORS] == 1 and out.info["tools/calls"] == 1 and out.info["tools/errors"] == 0
    retry = env.step(st, "<search> Zorvak </search>", FINISH_STOP)
    assert not retry.done and retry.info[SIMULATED_ERRORS] == 0 and retry.info["tools/calls"] == 1
    assert retry.observation == SearchR1Format().observation("search", [Doc("Zorvak", "Zorvak lives in Kimoro.")])
    end = env.step(st, "<answer> Kimoro </answer>", FINISH_STOP)
    assert end.done and end.info[SIMULATED_ERRORS] == 0


def test_invalid_turns_and_answers_do_not_use_up_the_error(corpus):
    env = _env(corpus, error_rate=1.0)
    st = env.reset(Prompt(Q, "Kimoro"), 1)
    bad = env.step(st, "no tags", FINISH_STOP)
    assert bad.info["tools/invalid"] == 1 and bad.info[SIMULATED_ERRORS] == 0
    assert env.step(st, "<search> Zorvak </search>", FINISH_STOP).info[SIMULATED_ERRORS] == 1
    # an episode that answers at once never sees an error; a turn cut at the limit ends as in tool_agent
    assert env.step(env.reset(Prompt(Q, "Kimoro"), 2), "<answer> x </answer>", FINISH_STOP).done
    cut = env.step(env.reset(Prompt(Q, "Kimoro"), 3), "<search> Zorvak </search>", FINISH_LENGTH)
    assert cut.done and cut.info[SIMULATED_ERRORS] == 0


def test_rate_zero_is_the_tool_agent_environment(corpus):
    env, plain = _env(corpus, error_rate=0.0), ENVIRONMENTS.get("tool_agent")(
        tools={"search": {"name": "bm25", "kwargs": {"corpus": corpus, "k": 1}}})
    for seed in range(20):
        a = env.step(env.reset(Prompt(Q, "Kimoro"), seed), "<search> Zorvak </search>", FINISH_STOP)
        b = plain.step(plain.reset(Prompt(Q, "Kimoro"), seed), "<search> Zorvak </search>", FINISH_STOP)
        assert a.observation == b.observation and a.info[SIMULATED_ERRORS] == 0


def test_injection_is_seeded_and_happens_at_the_rate(corpus):
    env = _env(corpus, error_rate=0.3)
    draws = [env.reset(Prompt(Q, "Kimoro"), seed).inject for seed in range(2000)]
    assert draws == [env.reset(Prompt("another prompt", "x"), seed).inject for seed in range(2000)]  # seed only
    assert draws == [_env(corpus, error_rate=0.3).reset(Prompt(Q, "Kimoro"), s).inject for s in range(2000)]
    assert abs(sum(draws) / 2000 - 0.3) < 0.035  # 3.4 binomial standard deviations
    # a higher rate injects in a superset of the episodes (one uniform draw per seed)
    more = [_env(corpus, error_rate=0.6).reset(Prompt(Q, "Kimoro"), s).inject for s in range(2000)]
    assert all(m or not d for d, m in zip(draws, more)) and sum(more) > sum(draws)


def test_diagnostic_template_and_bad_options(corpus):
    env = _env(corpus, error_rate=1.0, diagnostic="{tool} refused '{argument}'; use one name")
    out = env.step(env.reset(Prompt(Q, "Kimoro"), 0), "<search> Zorvak city </search>", FINISH_STOP)
    assert out.observation == _error_obs("search refused 'Zorvak city'; use one name")
    with pytest.raises(ConfigError, match="placeholder"):
        _env(corpus, diagnostic="the answer is {answer}")
    with pytest.raises(ConfigError, match="empty"):
        _env(corpus, diagnostic="  ")
    with pytest.raises(ConfigError, match="error_rate"):
        _env(corpus, error_rate=1.5)
    with pytest.raises(ConfigError, match="at least one tool"):
        FissionToolAgentEnv(tools={})


def test_config_takes_the_tool_agent_options_plus_the_fission_ones(corpus):
    env = {"name": "fission_tool_agent", "kwargs": {"tools": {"search": {"name": "bm25", "kwargs": {"corpus": corpus}}},
                                                      "max_invalid": 2, "error_rate": 0.25, "diagnostic": "retry"}}
    cfg = load_config(None, [f"rollout.env={json.dumps(env)}"])
    assert cfg.rollout.env.kwargs["error_rate"] == 0.25
    with pytest.raises(ConfigError, match="error_rate"):
        load_config(None, [f"rollout.env={json.dumps({**env, 'kwargs': {**env['kwargs'], 'error_rate': 2}})}"])
    with pytest.raises(ConfigError, match="error_rat"):
        load_config(None, [f"rollout.env={json.dumps({**env, 'kwargs': {**env['kwargs'], 'error_rat': 0.1}})}"])


# ----- through the multi-turn engine -----------------------------------------------------------------------
class _Script:
    """Writes turn k of an episode as ``script[k]`` (char-level ids, eos-terminated; k = eos tokens in context)."""

    pad_id, shares_weights = 0, True

    def __init__(self, tok, script: list[str]):
        self.tok, self.script = tok, script

    def generate(self, requests, params, seed):
        eos = self.tok.eos_token_id
        prompts, ids, texts = [], [], []
        for r in requests:
            for _ in range(params.n):
                ctx = list(r.context_ids) if r.context_ids is not None else self.tok(r.prompt.text)["input_ids"]
                texts.append(self.script[ctx.count(eos)])
                prompts.append(ctx)
                ids.append(self.tok(texts[-1], add_special_tokens=False)["input_ids"] + [eos])
        p_w, r_w = max(map(len, prompts)), max(map(len, ids))
        pad = [[1] * len(x) + [0] * (r_w - len(x)) for x in ids]
        return RolloutBatch(
            prompt_ids=torch.tensor([[0] * (p_w - len(p)) + p for p in prompts]),
            prompt_mask=torch.tensor([[0] * (p_w - len(p)) + [1] * len(p) for p in prompts]),
            response_ids=torch.tensor([x + [0] * (r_w - len(x)) for x in ids]), response_mask=torch.tensor(pad),
            sample_logprobs=-torch.tensor(pad, dtype=torch.float32),
            policy_logprobs=-torch.tensor(pad, dtype=torch.float32),
            finish_reasons=[FINISH_STOP] * len(ids), response_texts=texts)


def test_recovery_episodes_in_the_multi_turn_engine(corpus):
    tok = build_char_tokenizer()
    script = ["<search> Zorvak? </search>", "<search> Zorvak </search>", "<answer> Kimoro </answer>"]
    eng = MultiTurnEngine(_Script(tok, script), tok, _env(corpus, error_rate=1.0), max_turns=4,
                          turn_budget="per_turn", workers=2)
    b = eng.generate(requests_for([Prompt(Q, "Kimoro")]), SamplingParams(n=2, max_new_tokens=40), 0)
    docs = SearchR1Format().observation("search", [Doc("Zorvak", "Zorvak lives in Kimoro.")])
    assert b.response_texts[0] == script[0] + _error_obs() + script[1] + docs + script[2]
    assert b.response_texts[1] == b.response_texts[0]  # the G samples of a prompt share the episode seed
    assert b.extras[SIMULATED_ERRORS] == [1.0, 1.0] and b.extras["tools/calls"] == [2.0, 2.0]
    assert b.extras["turns"] == [3, 3]
    # the diagnostic is an observation: attention 1, loss mask 0
    ids = b.response_ids[0, b.response_attention_mask[0].bool()].tolist()
    err_ids = tok(_error_obs(), add_special_tokens=False)["input_ids"]
    start = len(tok(script[0], add_special_tokens=False)["input_ids"]) + 1
    assert ids[start:start + len(err_ids)] == err_ids
    assert b.response_mask[0, start:start + len(err_ids)].sum() == 0
