"""Part option values are checked at config load against the part's own signature, and config-level
nonsense (betas, clips, no learning signal) is refused, naming the key and the value, before anything runs."""

from __future__ import annotations

import inspect

import pytest

import rlfold  # noqa: F401  (registers the built-in parts)
from rlfold.cli import main
from rlfold.core import registry as R
from rlfold.core.config import _adapter, _option_hints, _value_problem
from rlfold.core.config_loader import load_config
from rlfold.core.errors import ConfigError
from rlfold.core.options import is_group_relative

GRPO = "src/rlfold/recipes/grpo.yaml"
SMALL = ["train.steps=2", "train.prompts_per_step=2", "rollout.n=2", "task.held_out_size=4", "eval.size=4",
         "log.progress=false"]

# (overrides, the key the error must name, the value it must quote, a phrase of the reason)
BAD = [
    # advantages
    (["algo.advantage_kwargs.scale=grop"], "algo.advantage_kwargs.scale",
     "'grop'", "is not one of 'group', 'batch', 'none'"),
    (["algo.advantage_kwargs.eps=-1"], "algo.advantage_kwargs.eps", "-1", "greater than or equal to 0"),
    (["algo.advantage_kwargs.eps='1e-6'"], "algo.advantage_kwargs.eps", "'1e-6'", "valid number"),
    (["algo.advantage=grpo_passk", "algo.advantage_kwargs={norm_by_std: 1}"], "algo.advantage_kwargs.norm_by_std",
     "=1", "valid boolean"),
    (["algo.advantage=reinforce_pp_baseline", "algo.advantage_kwargs={eps: 0}"], "algo.advantage_kwargs.eps", "=0",
     "greater than 0"),
    (["algo.advantage=gae", "algo.advantage_kwargs={lam: 1.5}"], "algo.advantage_kwargs.lam", "1.5",
     "less than or equal to 1"),
    (["algo.advantage=reinforce_pp", "algo.advantage_kwargs={gamma: -0.1}"], "algo.advantage_kwargs.gamma", "-0.1",
     "greater than or equal to 0"),
    (["algo.advantage=decs", "algo.advantage_kwargs={eps: 0.0}"], "algo.advantage_kwargs.eps", "0.0", "greater than 0"),
    # policy losses: 1 - clip_low bounds a ratio
    (["algo.clip_low=1.0"], "algo.clip_low", "1.0", "less than 1"),
    (["algo.policy_loss=gspo", "algo.clip_low=1.2"], "algo.clip_low", "1.2", "less than 1"),
    (["algo.policy_loss=gspo_token", "algo.policy_loss_kwargs={clip_low: 1.0}"], "algo.policy_loss_kwargs.clip_low",
     "1.0", "less than 1"),
    (["algo.policy_loss=cispo", "algo.clip_low=1.5"], "algo.clip_low", "1.5", "less than or equal to 1"),
    (["algo.policy_loss_kwargs={clip_c: 1.0}"], "algo.policy_loss_kwargs.clip_c", "1.0", "greater than 1"),
    (["algo.policy_loss=sapo", "algo.policy_loss_kwargs={tau_neg: 0}"], "algo.policy_loss_kwargs.tau_neg", "=0",
     "greater than 0"),
    (["algo.policy_loss_kwargs={clip_high: .inf}"], "algo.policy_loss_kwargs.clip_high", "inf", "finite"),
    # selection
    (["algo.selection=[{name: top_entropy, kwargs: {quantile: 1.5}}]"], "algo.selection[0].kwargs.quantile", "1.5",
     "less than or equal to 1"),
    (["algo.selection=[{name: top_entropy, kwargs: {quantile: 0}}]"], "algo.selection[0].kwargs.quantile", "=0",
     "greater than 0"),
    (["algo.selection=[{name: tis, kwargs: {level: word}}]"], "algo.selection[0].kwargs.level", "'word'",
     "is not one of 'token', 'sequence'"),
    (["algo.selection=[{name: tis, kwargs: {mode: clip}}]"], "algo.selection[0].kwargs.mode", "'clip'",
     "is not one of 'truncate', 'mask'"),
    (["algo.selection=[{name: tis, kwargs: {threshold: 0}}]"], "algo.selection[0].kwargs.threshold", "=0",
     "greater than 0"),
    (["algo.selection=[{name: tis, kwargs: {lower: -1}}]"], "algo.selection[0].kwargs.lower", "-1",
     "greater than or equal to 0"),
    (["algo.selection=[{name: pf_ppo, kwargs: {mode: best}}]"], "algo.selection[0].kwargs.mode", "'best'",
     "is not one of 'best_worst', 'best_random', 'pow'"),
    (["algo.selection=[{name: pf_ppo, kwargs: {scope: prompt}}]"], "algo.selection[0].kwargs.scope", "'prompt'",
     "is not one of 'group', 'batch'"),
    (["algo.selection=[{name: pf_ppo, kwargs: {power: -2}}]"], "algo.selection[0].kwargs.power", "-2",
     "greater than or equal to 0"),
    # group filters, samplers, engines, environments
    (["algo.group_filters=[{name: dynamic_sampling, kwargs: {metric: accuracy}}]"],
     "algo.group_filters[0].kwargs.metric", "'accuracy'", "is not one of 'acc', 'reward'"),
    (["train.sampler={name: domain_mix, kwargs: {weights: {'2': 1.0}, clip: [0.1]}}"], "train.sampler.kwargs.clip",
     "[0.1]", "at least 2 items"),
    (["train.sampler={name: domain_mix, kwargs: {weights: {'2': -1.0}}}"], "train.sampler.kwargs.weights",
     "-1.0", "greater than or equal to 0"),
    (["train.sampler={name: domain_mix, kwargs: {key: level}}"], "train.sampler.kwargs", "weights", "needs option"),
    (["rollout.engine_kwargs={weights: both}"], "rollout.engine_kwargs.weights", "'both'",
     "is not one of 'shared', 'copy'"),
    (["rollout.env={name: multi_attempt, kwargs: {attempts: 0}}"], "rollout.env.kwargs.attempts", "=0",
     "greater than or equal to 1"),
    (["rollout.env={name: multi_attempt, kwargs: {extract: last}}"], "rollout.env.kwargs.extract", "'last'",
     "is not one of 'plain', 'boxed'"),
    (["rollout.env={name: multi_attempt, kwargs: {verifier: exact}}"], "rollout.env.kwargs.verifier", "'exact'",
     "unknown verifier"),
    (["rollout.env={name: multi_attempt, kwargs: {feedback: ''}}"], "rollout.env.kwargs.feedback", "''",
     "at least 1 character"),
    # shaping
    (["shaping=[{name: hapo, kwargs: {variant: bogus}}]"], "shaping[0].kwargs.variant", "'bogus'",
     "is not one of 'cosine', 'linear'"),
    (["shaping=[{name: hapo, kwargs: {mode: median}}]"], "shaping[0].kwargs.mode", "'median'",
     "is not one of 'min', 'mean'"),
    (["shaping=[{name: crf, kwargs: {anneal: cosine}}]"], "shaping[0].kwargs.anneal", "'cosine'",
     "is not one of 'constant', 'linear'"),
    (["shaping=[{name: crf, kwargs: {scorer: lenght_ratio}}]"], "shaping[0].kwargs.scorer", "'lenght_ratio'",
     "did you mean 'length_ratio'"),
    (["shaping=[{name: redundancy, kwargs: {unit: words}}]"], "shaping[0].kwargs.unit", "'words'",
     "is not one of 'chars', 'tokens'"),
    (["shaping=[{name: decs, kwargs: {think_tags: ['<think>']}}]"], "shaping[0].kwargs.think_tags", "['<think>']",
     "at least 2 items"),
    (["shaping=[{name: apriel_dap, kwargs: {failure_scale: 2}}]"], "shaping[0].kwargs.failure_scale", "=2",
     "less than or equal to 1"),
    (["shaping=[{name: grpo_lambda, kwargs: {top_frac: 1.5}}]"], "shaping[0].kwargs.top_frac", "1.5",
     "less than or equal to 1"),
    (["shaping=[{name: da_dler, kwargs: {thresholds: [0.5, 1.5], target_lens: [1, 2, 3]}}]"],
     "shaping[0].kwargs.thresholds", "1.5", "item [1]"),
    (["shaping=[{name: cosine_len, kwargs: {max_len: 0}}]"], "shaping[0].kwargs.max_len", "=0", "greater than 0"),
    # rewards
    (["rewards=[{name: cover_exact_match, kwargs: {mode: words}}]"], "rewards[0].kwargs.mode", "'words'",
     "is not one of 'substring', 'tokens'"),
    (["rewards=[{name: reward_model, kwargs: {path: /m, aggregate: max}}]"], "rewards[0].kwargs.aggregate", "'max'",
     "is not one of 'mean', 'wco', 'uwo'"),
    (["rewards=[{name: reward_model, kwargs: {path: /m, uwo_ddof: 2}}]"], "rewards[0].kwargs.uwo_ddof", "=2",
     "is not one of 0, 1"),
    (["rewards=[{name: rewarding_doubt, kwargs: {verifier: fuzzy}}]"], "rewards[0].kwargs.verifier", "'fuzzy'",
     "unknown verifier"),
    (["rewards=[{name: rewarding_doubt, kwargs: {eps: 0}}]"], "rewards[0].kwargs.eps", "=0", "greater than 0"),
    (["rewards=[{name: soft_overlong, kwargs: {max_len: 8, cache: 0}}]"], "rewards[0].kwargs.cache", "=0",
     "greater than 0"),
    (["rewards=[{name: soft_overlong}]"], "rewards[0].kwargs", "max_len, cache", "needs options"),
    (["rewards=[{name: code_tests, kwargs: {timeout_s: 0}}]"], "rewards[0].kwargs.timeout_s", "=0", "greater than 0"),
    (["rewards=[{name: multi_attempt, kwargs: {attempt_discount: 0}}]"], "rewards[0].kwargs.attempt_discount", "=0",
     "greater than 0"),
    # config-level
    (["train.betas=[0.9, 1.0]"], "train.betas", "1.0", "[0, 1)"),
    (["train.betas=[-0.1, 0.999]"], "train.betas", "-0.1", "[0, 1)"),
]


@pytest.mark.parametrize("overrides,key,value,reason", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_value_is_refused_naming_key_and_value(overrides, key, value, reason):
    with pytest.raises(ConfigError) as err:
        load_config(GRPO, overrides)
    msg = str(err.value)
    line = next((ln for ln in msg.splitlines() if ln.strip().startswith(key)), None)
    assert line is not None, f"no line naming {key}:\n{msg}"
    assert value in line and reason in line, line
    assert "override" in line  # ... and where it came from


@pytest.mark.parametrize("overrides", [
    ["algo.policy_loss=cispo", "algo.clip_low=1.0"],                     # CISPO: no lower bound
    ["algo.advantage_kwargs.eps=0"],                                      # grpo divides only a std > 0
    ["algo.advantage_kwargs.eps=1"],                                      # an int for a float option
    ["algo.selection=[{name: top_entropy, kwargs: {quantile: 1}}]"],      # keeps every token
    ["algo.selection=[{name: tis, kwargs: {level: sequence, mode: mask, threshold: 3, lower: 0.5}}]"],
    ["train.sampler={name: domain_mix, kwargs: {weights: {2: 1.0}, key: level}}"],  # int domain keys
    ["rewards=[{name: soft_overlong, kwargs: {max_len: 8, cache: 4}}]"],
    ["rewards=[{name: reward_model, kwargs: {path: [/a, /b], aggregate: uwo, uwo_ddof: 0}}]"],
    ["shaping=[{name: decs, kwargs: {think_tags: null}}]"],
    ["train.betas=[0.0, 0.5]"],
])
def test_good_values_pass(overrides):
    load_config(GRPO, overrides)


def _parts():
    regs = [R.ADVANTAGES, R.POLICY_LOSSES, R.SELECTIONS, R.SHAPINGS, R.GROUP_FILTERS, R.SAMPLERS, R.ENVIRONMENTS,
            R.ENGINES, R.REWARDS]
    return [(reg.kind, name, reg.get(name)) for reg in regs for name in reg.names()]


@pytest.mark.parametrize("kind,name,fn", _parts(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_option_is_checkable_and_its_default_fits(kind, name, fn):
    """Every keyword option of a registered part has an annotation pydantic can validate, and the
    default satisfies it (a default outside the declared domain would make the domain a lie)."""
    hints = _option_hints(fn)
    sentinel = {("reward function", "reward_model", "path")}  # "" = not set; the part names the missing option
    for p in list(inspect.signature(fn).parameters.values()):
        if p.kind is not p.KEYWORD_ONLY or p.name in R.needed_inputs(fn) or p.name in ("state", "generator", "seed"):
            continue
        assert p.name in hints, f"{kind} {name}: option {p.name} has no resolvable annotation"
        assert _adapter(hints[p.name]) is not None, f"{kind} {name}: option {p.name}: {hints[p.name]!r}"
        if p.default is not p.empty and (kind, name, p.name) not in sentinel:
            assert _value_problem(hints[p.name], p.default) is None, (kind, name, p.name, p.default)


def test_group_relative_parts_are_declared_not_named():
    declared = {n for n in R.ADVANTAGES.names() if is_group_relative(R.ADVANTAGES.get(n))}
    assert declared == {"grpo", "dr_grpo", "rloo", "opo", "grpo_passk", "reinforce_pp_baseline", "decs", "hdpo",
                        "unlikeliness", "adora", "ace", "riskpo", "copg", "spae"}
    assert is_group_relative(R.GROUP_FILTERS.get("dynamic_sampling"))
    assert is_group_relative(R.SHAPINGS.get("empo"))


@pytest.mark.parametrize("overrides,key,value", [
    (["rollout.n=1"], "rollout.n", "rollout.n=1"),
    (["rollout.temperature=0"], "rollout.temperature", "rollout.temperature=0.0"),
    (["rollout.top_k=1"], "rollout.top_k", "rollout.top_k=1"),
    (["algo.advantage=rloo", "algo.advantage_kwargs={}", "rollout.n=1"], "rollout.n", "'rloo'"),
    (["algo.advantage=gae", "algo.advantage_kwargs={}", "algo.group_filters=[{name: dynamic_sampling}]",
      "rollout.n=1"], "rollout.n",
     "group filter 'dynamic_sampling'"),
    (["algo.advantage=gae", "algo.advantage_kwargs={}", "shaping=[{name: empo}]", "rollout.n=1"], "rollout.n",
     "reward-shaping part 'empo'"),
])
def test_no_learning_signal_is_an_error_by_default(overrides, key, value):
    with pytest.raises(ConfigError) as err:
        load_config(GRPO, overrides)
    msg = str(err.value)
    assert f"  {key} (override" in msg and value in msg and "no" in msg and "learning signal" in msg, msg
    assert "algo.allow_no_signal=true" in msg
    load_config(GRPO, [*overrides, "algo.allow_no_signal=true"])  # the explicit opt-out


@pytest.mark.parametrize("advantage", ["reinforce_pp", "remax", "gae"])
def test_advantages_without_groups_take_one_sample(advantage):
    load_config(GRPO, [f"algo.advantage={advantage}", "algo.advantage_kwargs={}", "rollout.n=1"])


@pytest.mark.parametrize("override,key", [
    ("algo.advantage_kwargs.scale=grop", "algo.advantage_kwargs.scale"),
    ("algo.clip_low=1.0", "algo.clip_low"),
    ("train.betas=[0.9, 1.0]", "train.betas"),
    ("rollout.n=1", "rollout.n"),
    ("rollout.temperature=0", "rollout.temperature"),
    ("algo.selection=[{name: top_entropy, kwargs: {quantile: 2}}]", "quantile"),
])
def test_cli_refuses_before_writing_anything(tmp_path, capsys, override, key):
    run = tmp_path / "run"
    assert main(["train", "grpo", *SMALL, f"run_dir={run}", override]) == 2
    assert key in capsys.readouterr().err
    assert not run.exists()
