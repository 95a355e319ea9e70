"""PrimeIntellect ``verifiers`` (v1) environments as rlfold rollouts: the OpenAI-compatible loopback server that
records exactly what the engine produced, the ``verifiers`` engine over a small v1 environment of the library's
own kind (``vf_arith_env``: a ``vf.Taskset``, its ``@vf.reward``, verifiers' chat program as the agent), a few
training steps with the tiny model, and environments that answer garbage: counted, logged, the run goes on."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("verifiers.v1")
openai = pytest.importorskip("openai")
# tests/envs/vf_arith_env and vf_arith_retry_env (on the path: this file's folder)
vf_arith_env = pytest.importorskip("vf_arith_env")
vf_arith_retry_env = pytest.importorskip("vf_arith_retry_env")

from rlfold.cli import RECIPES_DIR  # noqa: E402
from rlfold.core.config_loader import load_config  # noqa: E402
from rlfold.core.errors import ConfigError  # noqa: E402
from rlfold.core.types import Prompt  # noqa: E402
from rlfold.models import load_model_and_tokenizer  # noqa: E402
from rlfold.models.logprobs import sequence_logprobs  # noqa: E402
from rlfold.rewards import score_rewards  # noqa: E402
from rlfold.rewards.base import extras_rows  # noqa: E402
from rlfold.rollout import ENGINES, EngineContext, OpenAIServer, SamplingParams, requests_for  # noqa: E402
from rlfold.rollout.openai_server import assemble_calls  # noqa: E402
from rlfold.trainers.loop import build_run  # noqa: E402

HERE = Path(__file__).resolve().parent
ENV = {"taskset": {"id": "vf_arith_env"}, "agent": {"runtime": {"type": "subprocess"}}}


@pytest.fixture(autouse=True)
def _env_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))  # verifiers imports the taskset by its id


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model_and_tokenizer("tiny-arith")
    return model.eval(), tok


def _ctx(tiny):
    model, tok = tiny
    return EngineContext(model=model, tokenizer=tok, model_path="tiny-arith", dtype=torch.float32)


def test_server_records_exact_ids_and_bridges_a_session(tiny):
    model, tok = tiny
    hf = ENGINES.get("hf")(_ctx(tiny))
    with OpenAIServer(hf, tok, params=SamplingParams(max_new_tokens=8)) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        head = {"X-Session-ID": "s1"}
        first = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "58+67="}],
                                               logprobs=True, extra_headers=head)
        choice = first.choices[0]
        ids = choice.model_extra["token_ids"]
        assert first.model_extra["prompt_token_ids"] == tok("58+67=")["input_ids"]
        assert len(choice.logprobs.content) == len(ids) and choice.finish_reason in ("stop", "length")
        messages = [{"role": "user", "content": "58+67="}, {"role": "assistant", "content": choice.message.content},
                    {"role": "user", "content": "again: 3+4="}]
        second = client.chat.completions.create(model="m", messages=messages, extra_headers=head)
        # streaming answers the same completion as server-sent events
        stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "1+1="}],
                                                stream=True, extra_headers={"X-Session-ID": "s2"})
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        calls = server.take("s1")
        assert [c.bridged for c in calls] == [False, True]
        assert calls[0].completion_ids == ids
        # the second call continues after exactly the first call's ids; only the new message is tokenised
        tail = tok("\nagain: 3+4=", add_special_tokens=False)["input_ids"]
        assert calls[1].prompt_ids == calls[0].prompt_ids + calls[0].completion_ids + tail
        assert second.choices[0].message.content == calls[1].text
        assert server.take("s2")[0].text == streamed
    prompt, cols, breaks = assemble_calls(calls)
    assert breaks == 0 and prompt == calls[0].prompt_ids
    assert cols["ids"] == calls[0].completion_ids + tail + calls[1].completion_ids
    assert cols["loss"] == [1] * len(ids) + [0] * len(tail) + [1] * len(calls[1].completion_ids)
    # the recorded log-probs are the policy's own log-probs of those exact ids (the gap attended to)
    p_ids, r_ids = torch.tensor([prompt]), torch.tensor([cols["ids"]])
    loss = torch.tensor([cols["loss"]])
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, p_ids, torch.ones_like(p_ids), r_ids, loss,
                                  response_attention_mask=torch.ones_like(r_ids))
    mask = loss.bool()
    assert (lp[mask] - torch.tensor([cols["plp"]])[mask]).abs().max() < 1e-4


def test_server_bridges_through_a_chat_template(tiny):
    model, tok = tiny
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = ("{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}{% endfor %}"
                              "{% if add_generation_prompt %}<a>{% endif %}")
    hf = ENGINES.get("hf")(EngineContext(model=model, tokenizer=chat_tok, model_path="tiny-arith", dtype=torch.float32))
    with OpenAIServer(hf, chat_tok, params=SamplingParams(max_new_tokens=6)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        first = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "3+4="}], user="s")
        messages = [{"role": "user", "content": "3+4="}, {"role": "assistant", "content": first.choices[0].message.content},
                    {"role": "user", "content": "5+5="}]
        client.chat.completions.create(model="m", messages=messages, user="s")
        calls = server.take("s")
    assert calls[0].prompt_ids == chat_tok.apply_chat_template(messages[:1], add_generation_prompt=True,
                                                                tokenize=True, return_dict=False)
    # the template's text after the assistant turn, tokenised on its own, follows the sampled ids
    tail = chat_tok("<u>5+5=<a>", add_special_tokens=False)["input_ids"]
    assert calls[1].bridged and calls[1].prompt_ids == calls[0].prompt_ids + calls[0].completion_ids + tail


def test_verifiers_rollouts_carry_the_recorded_tokens_and_the_env_reward(tiny):
    _, tok = tiny
    engine = ENGINES.get("verifiers")(_ctx(tiny), env=ENV)
    try:
        prompts = [Prompt("58+67=", "125"), Prompt("3+4=", "7")]
        roll = engine.generate(requests_for(prompts), SamplingParams(n=3, max_new_tokens=8), seed=0)
    finally:
        engine.close()
    assert roll.size == 6 and roll.extras["env/errors"] == [0.0] * 6 and roll.extras["turns"] == [1] * 6
    for i in range(6):
        prompt = roll.prompt_ids[i, roll.prompt_mask[i].bool()].tolist()
        assert prompt == tok(prompts[i // 3].text)["input_ids"]  # the agent's prompt, tokenised by the server
        n = int(roll.response_mask[i].sum())
        text = tok.decode(roll.response_ids[i, :n].tolist(), skip_special_tokens=True)
        assert text == roll.response_texts[i]
        assert roll.extras["env/reward"][i] == float(text.strip() == prompts[i // 3].answer)
    assert roll.extras["env/reward/correct"] == roll.extras["env/reward"]
    res = score_rewards([("env_reward", 1.0)], [prompts[i // 3] for i in range(6)], roll.response_texts,
                        roll.finish_reasons, rollout_extras=extras_rows(roll.extras, roll.size))
    assert res.per_fn["env_reward"].tolist() == roll.extras["env/reward"]


def test_multi_turn_episodes_mask_the_env_messages_and_keep_the_sampled_ids(tiny):
    model, tok = tiny
    env = {"taskset": {"id": "vf_arith_retry_env"}, "agent": {"runtime": {"type": "subprocess"}}}
    engine = ENGINES.get("verifiers")(_ctx(tiny), env=env)
    try:
        prompts = [Prompt("58+67=", "125"), Prompt("3+4=", "7")]
        roll = engine.generate(requests_for(prompts), SamplingParams(n=3, max_new_tokens=8), seed=0)
    finally:
        engine.close()
    assert type(engine.env).__name__ == "RetryEnv" and roll.extras["env/errors"] == [0.0] * 6
    gap = tok("\n" + vf_arith_retry_env.FEEDBACK, add_special_tokens=False)["input_ids"]
    retried = [i for i, t in enumerate(roll.extras["turns"]) if t == 2]
    assert retried, "some first answer was wrong and got the env's feedback"
    for i in retried:  # the env's message sits between the two answers: attended to, not trained on
        hidden = (roll.attention[i] == 1) & (roll.response_mask[i] == 0)
        assert roll.response_ids[i][hidden].tolist() == gap
    # the trainer's log-probs of the assembled rows (gap attended to) are the engine's, token for token
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask,
                                  response_attention_mask=roll.response_attention_mask)
    m = roll.response_mask.bool()
    assert (lp - roll.policy_logprobs)[m].abs().max() < 1e-4


def test_garbage_rewards_and_a_failing_program_are_counted_logged_and_unscorable(tiny, caplog, monkeypatch):
    engine = ENGINES.get("verifiers")(_ctx(tiny), env=ENV)
    prompts = [Prompt("2+2=", "boom"), Prompt("3+3=", "nan"), Prompt("4+4=", "8")]
    try:
        with caplog.at_level(logging.WARNING, logger="rlfold.rollout.verifiers_engine"):
            roll = engine.generate(requests_for(prompts), SamplingParams(n=1, max_new_tokens=8), seed=1)
        assert roll.extras["env/errors"] == [1.0, 1.0, 0.0]
        assert "vf_arith_env" in caplog.text and "row 0" in caplog.text and "the grader crashed" in caplog.text
        assert "row 1" in caplog.text
        # the agent program dies before any model call: the row is empty and out of the loss
        monkeypatch.setattr(vf_arith_env.LocalChatHarness, "launch", _crashing_launch)
        with caplog.at_level(logging.WARNING, logger="rlfold.rollout.verifiers_engine"):
            dead = engine.generate(requests_for(prompts[2:]), SamplingParams(n=2, max_new_tokens=8), seed=2)
    finally:
        engine.close()
    scores = score_rewards([("env_reward", 1.0)], prompts, roll.response_texts, roll.finish_reasons,
                           rollout_extras=extras_rows(roll.extras, roll.size)).per_fn["env_reward"]
    assert math.isnan(scores[0]) and math.isnan(scores[1]) and not math.isnan(scores[2])
    assert dead.extras["env/errors"] == [1.0, 1.0] and int(dead.response_mask.sum()) == 0
    assert "made no model call" in caplog.text and "the agent program crashed" in caplog.text


async def _crashing_launch(self, *args, **kwargs):
    raise RuntimeError("the agent program crashed")


def test_bad_env_config_is_a_config_error(tiny):
    with pytest.raises(ConfigError, match="cannot load the environment"):
        ENGINES.get("verifiers")(_ctx(tiny), env={"taskset": {"id": "no_such_taskset_xyz"}})


def test_tiny_model_trains_a_few_steps_through_a_verifiers_env(tmp_path):
    cfg = load_config(RECIPES_DIR / "grpo.yaml", [
        "train.steps=2", "train.prompts_per_step=2", "rollout.n=4", "rollout.engine=verifiers",
        "rollout.engine_kwargs={env: {taskset: {id: vf_arith_env}, agent: {runtime: {type: subprocess}}}}",
        "rewards=[{name: env_reward, weight: 1.0}]", "eval.every=0", "task.held_out_size=8", "eval.size=8",
        "log.progress=false", "checkpoint.every=0"])
    run = build_run(cfg, tmp_path / "run")
    assert type(run.trainer.engine).__name__ == "VerifiersEngine"
    rows = [r for r in run.fit() if "actor/pg_loss" in r]  # the training steps (not the first evaluation)
    assert len(rows) == 2
    # on-policy first step: the trainer's log-probs of the recorded ids equal the engine's
    assert abs(rows[0]["actor/ppo_kl"]) < 1e-5
    for row in rows:
        assert math.isfinite(row["actor/pg_loss"]) and row["env/errors/mean"] == 0.0
        assert row["reward/env_reward/mean"] == pytest.approx(row["env/reward/mean"])
