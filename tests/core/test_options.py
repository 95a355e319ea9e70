"""Honest options: a part's defaults come from its signature, and an option it does not take is refused."""

from __future__ import annotations

import inspect

import pytest

from rlfold.core.config_loader import load_config
from rlfold.core.errors import ConfigError
from rlfold.core.registry import POLICY_LOSSES
from rlfold.trainers.online import OnlineStep

SMALL = ["train.steps=1", "train.prompts_per_step=2", "rollout.n=2", "task.held_out_size=4", "eval.size=4"]


def _loss_defaults(name: str) -> dict:
    params = inspect.signature(POLICY_LOSSES.get(name)).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def test_gspo_on_the_grpo_recipe_uses_gspos_own_eps(tmp_path) -> None:
    cfg = load_config("src/rlfold/recipes/grpo.yaml", ["algo.policy_loss=gspo", *SMALL])
    assert cfg.algo.clip_low is None and cfg.algo.clip_high is None
    assert cfg.algo.policy_loss_options() == {}
    step = OnlineStep(cfg)
    assert step.policy_term.fn is POLICY_LOSSES.get("gspo")
    assert step.policy_term.kwargs == {}  # so the loss runs with its signature defaults ...
    assert (_loss_defaults("gspo")["clip_low"], _loss_defaults("gspo")["clip_high"]) == (3e-4, 4e-4)  # ... GSPO's


def test_explicit_clip_reaches_the_loss() -> None:
    cfg = load_config("src/rlfold/recipes/grpo.yaml", ["algo.clip_high=0.28", *SMALL])
    assert cfg.algo.policy_loss_options() == {"clip_high": 0.28}


@pytest.mark.parametrize("key,value", [("clip_high", "0.3"), ("clip_low", "0.1"), ("clip_c", "3.0")])
def test_clip_on_a_loss_without_it_is_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("src/rlfold/recipes/grpo.yaml", ["algo.policy_loss=reinforce", f"algo.{key}={value}"])
    msg = str(err.value)
    assert f"algo.{key}" in msg and "'reinforce'" in msg and f"no option {key!r}" in msg


def test_clip_c_on_gspo_is_refused_and_names_what_it_takes() -> None:
    with pytest.raises(ConfigError, match=r"policy loss 'gspo' takes no option 'clip_c'.*clip_low, clip_high"):
        load_config("src/rlfold/recipes/dapo.yaml", ["algo.policy_loss=gspo"])  # dapo sets clip_c: 10


def test_one_option_set_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="set it once"):
        load_config("src/rlfold/recipes/grpo.yaml", ["algo.clip_high=0.3", "algo.policy_loss_kwargs={clip_high: 0.3}"])


@pytest.mark.parametrize("override,where", [
    ("algo.group_filters=[{name: dynamic_sampling, kwargs: {metrc: acc}}]", "algo.group_filters[0].kwargs.metrc"),
    ("train.sampler={name: uniform, kwargs: {weights: {}}}", "train.sampler.kwargs.weights"),
    ("rollout.engine_kwargs={weight: copy}", "rollout.engine_kwargs.weight"),
    ("rollout.env={name: multi_attempt, kwargs: {tries: 2}}", "rollout.env.kwargs.tries"),
    ("critic.lam=1.5", "critic.lam"),
])
def test_part_options_are_checked_against_the_part(override: str, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("src/rlfold/recipes/grpo.yaml", [override])
    assert where in str(err.value)


@pytest.mark.parametrize("key,registry_kind", [
    ("trainer=offline", "trainer"), ("rollout.eval_engine=hff", "rollout engine"),
    ("algo.group_filters=[{name: dynamic_sampler}]", "group filter"), ("train.sampler={name: unifrom}", "prompt sampler"),
    ("rollout.env={name: multi_atempt}", "environment"),
])
def test_unknown_part_names_are_located_and_suggested(key: str, registry_kind: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown {registry_kind}.*did you mean"):
        load_config("src/rlfold/recipes/grpo.yaml", [key])


def test_the_critic_has_its_own_options() -> None:
    cfg = load_config("src/rlfold/recipes/ppo.yaml", ["critic.gamma=0.99", "critic.lam=0.9", "critic.egae=true"])
    assert (cfg.critic.gamma, cfg.critic.lam, cfg.critic.egae) == (0.99, 0.9, True)
    assert "egae" not in cfg.algo.advantage_kwargs
