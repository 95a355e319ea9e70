"""SkyRL-Gym environments as rlfold environments, unchanged: the shipped gsm8k environments through the
adapter, a small arithmetic environment of SkyRL-Gym's own kind (a ``BaseTextEnv`` registered with
``skyrl_gym.register``) trained for a few steps with the tiny model, and environments that answer
garbage: a counted, logged outcome, and the run goes on."""

from __future__ import annotations

import logging
import math

import pytest
import torch

skyrl_gym = pytest.importorskip("skyrl_gym")
from skyrl_gym.envs.base_text_env import BaseTextEnv, BaseTextEnvStepOutput  # noqa: E402

from rlfold.cli import RECIPES_DIR  # noqa: E402
from rlfold.core.config_loader import load_config  # noqa: E402
from rlfold.core.errors import ConfigError  # noqa: E402
from rlfold.core.types import Prompt  # noqa: E402
from rlfold.envs.skyrl import SkyRLEnvError, SkyRLGymEnv  # noqa: E402
from rlfold.models import load_model_and_tokenizer  # noqa: E402
from rlfold.rewards import REWARDS, score_rewards  # noqa: E402
from rlfold.rewards.base import extras_rows  # noqa: E402
from rlfold.rollout import ENGINES, EngineContext, MultiTurnEngine, SamplingParams, requests_for  # noqa: E402
from rlfold.trainers.loop import build_run  # noqa: E402

FEEDBACK = "wrong, again: "


class ArithRetryEnv(BaseTextEnv):
    """Two-digit addition with one retry: reward 1 for the right sum, feedback and a second turn after a wrong one."""

    def __init__(self, env_config=None, extras=None):
        super().__init__()
        self.ground_truth = str(extras["reward_spec"]["ground_truth"])
        self.max_turns = int((extras or {}).get("max_turns", 2))

    def step(self, action: str) -> BaseTextEnvStepOutput:
        self.turns += 1
        correct = action.strip() == self.ground_truth
        done = correct or self.turns >= self.max_turns
        obs = [] if done else [{"role": "user", "content": FEEDBACK}]
        return BaseTextEnvStepOutput(observations=obs, reward=float(correct), done=done, metadata={})

    def get_metrics(self):
        return {"steps": self.turns}


class GarbageEnv(BaseTextEnv):
    """Answers a step output whose reward is not a number on even ground truths, and raises on odd ones."""

    def __init__(self, env_config=None, extras=None):
        super().__init__()
        self.odd = int(extras["reward_spec"]["ground_truth"]) % 2 == 1

    def step(self, action: str):
        if self.odd:
            raise KeyError("tool backend is down")
        return {"observations": "not a list", "reward": "high", "done": True, "metadata": {}}


for env_id, cls in (("rlfold_test_arith_retry", ArithRetryEnv), ("rlfold_test_garbage", GarbageEnv)):
    if env_id not in skyrl_gym.registry:
        skyrl_gym.register(id=env_id, entry_point=cls)


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model_and_tokenizer("tiny-arith")
    return model.eval(), tok


def _hf(tiny):
    model, tok = tiny
    return ENGINES.get("hf")(EngineContext(model=model, tokenizer=tok, model_path="tiny-arith", dtype=torch.float32))


def test_shipped_gsm8k_envs_get_their_ground_truth_and_give_their_reward():
    env = SkyRLGymEnv(env="gsm8k")
    prompt = Prompt("Tom has 3 apples and buys 4. How many?", "7")
    assert env.extras_for(prompt)["reward_spec"] == {"method": "rule", "ground_truth": "7"}
    state = env.reset(prompt, seed=0)
    out = env.step(state, "3 + 4 = 7\n#### 7", "stop")
    assert out.done and out.info["reward"] == 1.0 and out.observation == ""
    # a SkyRL dataset row carries its own reward_spec column, which wins over the answer
    row = Prompt("q", "ignored", meta={"reward_spec": {"method": "rule", "ground_truth": "9"}, "extra_info": {"i": 1}})
    assert env.extras_for(row) == {"reward_spec": {"method": "rule", "ground_truth": "9"}, "extra_info": {"i": 1}}
    assert env.step(env.reset(row, 0), "#### 7", "stop").info["reward"] == 0.0

    multi = SkyRLGymEnv(env="gsm8k_multi_turn", extras={"max_turns": 2}, message_format="[{role}] {content}")
    state = multi.reset(prompt, seed=0)
    first = multi.step(state, "I think 6", "stop")  # not in the '#### N' format: no reward, a second turn
    assert not first.done and first.info["reward"] == 0.0
    assert first.observation.startswith("[user] Now provide only the final numeric answer")
    last = multi.step(state, "#### 7", "stop")
    assert last.done and last.info["reward"] == 1.0 and last.info["skyrl/steps"] == 2.0


def test_unknown_env_and_bad_message_format_are_config_errors():
    with pytest.raises(ConfigError, match="no SkyRL-Gym environment 'gsm9k'.*gsm8k"):
        SkyRLGymEnv(env="gsm9k")
    with pytest.raises(ConfigError, match="message_format"):
        SkyRLGymEnv(env="gsm8k", message_format="{text}")


def test_multi_turn_rows_through_the_adapter_and_the_env_reward(tiny):
    _, tok = tiny
    env = SkyRLGymEnv(env="rlfold_test_arith_retry")
    engine = MultiTurnEngine(_hf(tiny), tok, env, max_turns=4)
    prompts = [Prompt("58+67=", "125"), Prompt("3+4=", "7"), Prompt("12+34=", "46")]
    roll = engine.generate(requests_for(prompts), SamplingParams(n=4, max_new_tokens=16), seed=3)
    rewards = roll.extras["env/reward"]
    assert set(rewards) <= {0.0, 1.0} and roll.extras["env/errors"] == [0.0] * 12
    feedback = torch.tensor(tok(FEEDBACK, add_special_tokens=False)["input_ids"])
    retried = [i for i, t in enumerate(roll.extras["turns"]) if t == 2]
    assert retried, "some episode got a wrong first answer and a second turn"
    for i in retried:  # the feedback sits between the turns, attended to (1) but not in the loss (0)
        ids, mask = roll.response_ids[i], roll.response_mask[i]
        hidden = (roll.attention[i] == 1) & (mask == 0)
        assert torch.equal(ids[hidden], feedback)
    for i, t in enumerate(roll.extras["turns"]):  # an episode the environment ended reports its metrics
        if roll.finish_reasons[i] == "stop":
            assert roll.extras["skyrl/steps"][i] == t
    res = score_rewards([("env_reward", 1.0)], [prompts[i // 4] for i in range(12)], roll.response_texts,
                        roll.finish_reasons, rollout_extras=extras_rows(roll.extras, roll.size))
    assert res.per_fn["env_reward"].tolist() == rewards


def test_garbage_and_raising_envs_are_counted_logged_and_unscorable(tiny, caplog):
    _, tok = tiny
    env = SkyRLGymEnv(env="rlfold_test_garbage")
    engine = MultiTurnEngine(_hf(tiny), tok, env, max_turns=3)
    prompts = [Prompt("3+4=", "7"), Prompt("2+2=", "4")]
    with caplog.at_level(logging.WARNING, logger="rlfold"):
        roll = engine.generate(requests_for(prompts), SamplingParams(n=2, max_new_tokens=8), seed=0)
    assert roll.extras["env/errors"] == [1.0] * 4
    assert roll.extras["turns"] == [1] * 4  # every episode ended at its first failing step
    text = caplog.text
    assert "rlfold_test_garbage" in text and "KeyError" in text and "tool backend is down" in text
    assert "reward is 'high'" in text and "on row 3" in text
    scores = REWARDS.get("env_reward")(prompts * 2, roll.response_texts, roll.finish_reasons,
                                       rollout_extras=extras_rows(roll.extras, roll.size))
    assert scores == [None] * 4
    with pytest.raises(SkyRLEnvError, match="reward is 'high'"):
        env.step(env.reset(Prompt("2+2=", "4"), 0), "4", "stop")


def test_tiny_model_trains_a_few_steps_through_a_skyrl_env(tmp_path):
    cfg = load_config(RECIPES_DIR / "grpo.yaml", [
        "train.steps=3", "train.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=12",
        "rollout.env={name: skyrl_gym, kwargs: {env: rlfold_test_arith_retry, extras: {max_turns: 2}}}",
        "rollout.max_turns=2", "rewards=[{name: env_reward, weight: 1.0}]",
        "eval.every=0", "task.held_out_size=8", "eval.size=8", "log.progress=false", "checkpoint.every=0"])
    run = build_run(cfg, tmp_path / "run")
    assert isinstance(run.trainer.engine, MultiTurnEngine)
    assert isinstance(run.trainer.engine.env, SkyRLGymEnv)
    rows = [r for r in run.fit() if "actor/pg_loss" in r]  # the training steps (not the first evaluation)
    assert len(rows) == 3
    for row in rows:
        assert math.isfinite(row["actor/pg_loss"]) and math.isfinite(row["actor/grad_norm"])
        assert row["env/errors/mean"] == 0.0
        # the environment's reward is what the trainer optimised
        assert row["reward/env_reward/mean"] == pytest.approx(row["env/reward/mean"])
    assert any(row["reward/env_reward/mean"] > 0 for row in rows)
    assert any(row["turns/mean"] > 1 for row in rows)  # wrong first answers got feedback and a second turn
