"""Config system: YAML + key=value overrides, validated up front; every mistake named with its key and origin."""

from __future__ import annotations

import pytest

from rlfold.cli import RECIPES_DIR
from rlfold.core.config import RunConfig
from rlfold.core.config_loader import apply_overrides, load_config, parse_override
from rlfold.core.suggest import closest
from rlfold.core.errors import ConfigError

GRPO = RECIPES_DIR / "grpo.yaml"


def _error(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


# ----- valid input ------------------------------------------------------------------------------


def test_shipped_recipe_loads():
    cfg = load_config(GRPO)
    assert isinstance(cfg, RunConfig)
    assert cfg.name == "grpo" and cfg.algo.advantage == "grpo"
    assert cfg.algo.advantage_kwargs == {"scale": "group", "eps": 1e-6}


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg == RunConfig()


@pytest.mark.parametrize(
    "override, get, expected",
    [
        ("train.lr=3e-4", lambda c: c.train.lr, 3e-4),
        ("train.lr=1.5e-5", lambda c: c.train.lr, 1.5e-5),
        ("train.steps=7", lambda c: c.train.steps, 7),
        ("rollout.temperature=0.5", lambda c: c.rollout.temperature, 0.5),
        ("log.progress=false", lambda c: c.log.progress, False),
        ("task.levels=[1, 3]", lambda c: c.task.levels, [1, 3]),
        ('rollout.stop_strings=["\\n", ";"]', lambda c: c.rollout.stop_strings, ["\n", ";"]),
        ("train.betas=[0.9, 0.95]", lambda c: c.train.betas, (0.9, 0.95)),
        ("run_dir=/tmp/somewhere", lambda c: c.run_dir, "/tmp/somewhere"),
        ("model.path=tiny-arith", lambda c: c.model.path, "tiny-arith"),
        ("rewards=[{name: exact_match}]", lambda c: [(r.name, r.weight) for r in c.rewards], [("exact_match", 1.0)]),
        ("rewards.1.weight=0.5", lambda c: c.rewards[1].weight, 0.5),
        ("rewards[1].weight=0.25", lambda c: c.rewards[1].weight, 0.25),
    ],
)
def test_valid_overrides_take_effect(override, get, expected):
    cfg = load_config(GRPO, [override])
    got = get(cfg)
    assert got == expected and type(got) is type(expected)


def test_exponent_floats_are_floats_even_in_free_form_dicts():
    # PyYAML's YAML 1.1 rules read "1e-6" as a string; a string eps would crash the advantage mid-run.
    cfg = load_config(GRPO, ["algo.advantage_kwargs.eps=1e-5"])
    assert cfg.algo.advantage_kwargs == {"scale": "group", "eps": 1e-5}
    assert parse_override("x=1e-4") == (["x"], 1e-4)
    assert parse_override("x=-2E3") == (["x"], -2000.0)
    assert parse_override("x=abc") == (["x"], "abc")
    assert parse_override("x=") == (["x"], "")


def test_exponent_floats_in_a_yaml_file(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("algo:\n  advantage_kwargs: {eps: 1e-4}\ntrain:\n  lr: 2e-5\n")
    cfg = load_config(f)
    assert cfg.algo.advantage_kwargs == {"eps": 1e-4} and cfg.train.lr == 2e-5


def test_later_override_wins():
    assert load_config(GRPO, ["train.steps=3", "train.steps=5"]).train.steps == 5


def test_apply_overrides_creates_sections():
    assert apply_overrides({}, ["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


# ----- unknown keys: name the key, suggest the closest valid one -----------------------------------


@pytest.mark.parametrize(
    "override, bad, suggestion",
    [
        ("train.lr_rate=1e-4", "train.lr_rate", "train.lr"),
        ("train.learning_rate=1e-4", "train.learning_rate", "train.lr"),
        ("trian.lr=1e-4", "trian", "train"),
        ("rollout.temperatur=0.7", "rollout.temperatur", "rollout.temperature"),
        ("train.Steps=3", "train.Steps", "train.steps"),
        ("rewards=[{name: exact_match, wieght: 2}]", "rewards[0].wieght", "rewards[0].weight"),
        ("checkpoint.evry=5", "checkpoint.evry", "checkpoint.every"),
    ],
)
def test_typo_in_override_names_key_and_suggests(override, bad, suggestion):
    msg = _error(GRPO, [override])
    assert f"{bad} (override {override!r}): unknown key" in msg
    assert f"did you mean {suggestion!r}?" in msg


def test_unknown_key_without_close_match_lists_valid_keys():
    msg = _error(GRPO, ["train.zzz=1"])
    assert "train.zzz" in msg and "unknown key" in msg and "valid keys here:" in msg and "lr" in msg


def test_typo_inside_yaml_file_names_file_line_and_suggestion(tmp_path):
    f = tmp_path / "recipe.yaml"
    f.write_text("name: x\ntrain:\n  steps: 3\n  stpes: 4\nrollout:\n  n: 2\n")
    msg = _error(f)
    assert f"train.stpes ({f}:4): unknown key; did you mean 'train.steps'?" in msg


def test_typo_in_yaml_section_name(tmp_path):
    f = tmp_path / "recipe.yaml"
    f.write_text("rolout:\n  n: 2\n")
    assert f"rolout ({f}:1): unknown key; did you mean 'rollout'?" in _error(f)


def test_errors_in_a_list_item_of_a_yaml_file(tmp_path):
    f = tmp_path / "recipe.yaml"
    f.write_text("rewards:\n  - {name: exact_match}\n  - name: format\n    wieght: 0.1\n")
    assert f"rewards[1].wieght ({f}:4): unknown key; did you mean 'rewards[1].weight'?" in _error(f)


def test_every_error_is_reported_at_once():
    msg = _error(GRPO, ["train.lr=-1", "rollout.top_p=2", "train.stepz=3"])
    assert "train.lr" in msg and "rollout.top_p" in msg and "train.stepz" in msg


def test_closest():
    keys = ["steps", "lr", "min_lr_ratio", "grad_clip"]
    assert closest("lr_rate", keys) == "lr"
    assert closest("LR", keys) == "lr"
    assert closest("max_grad_norm", keys) == "grad_clip"
    assert closest("stpes", keys) == "steps"
    assert closest("qqqq", keys) is None
    assert closest("x", []) is None


# ----- wrong types and out-of-range values ---------------------------------------------------------


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("train.steps=abc", "train.steps", ["valid integer", "'abc'"]),
        ("train.steps=2.5", "train.steps", ["integer", "2.5"]),
        ("train.lr=-1", "train.lr", ["greater than 0", "-1"]),
        ("train.lr=0", "train.lr", ["greater than 0"]),
        ("train.lr=.inf", "train.lr", ["finite"]),
        ("train.lr=.nan", "train.lr", ["finite"]),
        ("rollout.top_p=2", "rollout.top_p", ["less than or equal to 1", "2"]),
        ("rollout.n=0", "rollout.n", ["greater than or equal to 1"]),
        ("rollout.temperature=-0.5", "rollout.temperature", ["greater than or equal to 0"]),
        ("algo.clip_low=-0.5", "algo.clip_low", ["greater than or equal to 0"]),
        ("model.dtype=fp8", "model.dtype", ["'float32'", "'fp8'"]),
        ("model.path=", "model.path", ["at least 1 character"]),
        ("train.schedule=cosin", "train.schedule", ["'cosine'"]),
        ("log.progress=maybe", "log.progress", ["boolean", "'maybe'"]),
        ("task.levels=[2, x]", "task.levels[1]", ["integer", "'x'"]),
        ("rollout=3", "rollout", ["dictionary"]),
        ("seed=abc", "seed", ["integer"]),
    ],
)
def test_bad_value_names_key_origin_and_expectation(override, key, words):
    msg = _error(GRPO, [override])
    assert msg.startswith(f"invalid configuration ({GRPO}):")
    assert f"  {key} (override {override!r}): " in msg
    for w in words:
        assert w in msg, (w, msg)


def test_bad_value_in_yaml_file_names_line(tmp_path):
    f = tmp_path / "recipe.yaml"
    f.write_text("train:\n  steps: 3\n  lr: -0.1\n")
    assert f"train.lr ({f}:3): Input should be greater than 0 (got -0.1)" in _error(f)


# ----- unknown part names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key, suggestion",
    [
        ("algo.advantage=grpoo", "algo.advantage", "grpo"),
        ("algo.policy_loss=ppo_clp", "algo.policy_loss", "ppo_clip"),
        ("algo.kl_estimator=low_var_kll", "algo.kl_estimator", "low_var_kl"),
        ("accuracy_reward=exact_matc", "accuracy_reward", "exact_match"),
        ("rewards=[{name: exact_match}, {name: formt}]", "rewards[1].name", "format"),
        ("rewards.0.name=exact-match", "rewards[0].name", "exact_match"),
    ],
)
def test_unknown_part_suggests_closest(override, key, suggestion):
    msg = _error(GRPO, [override])
    assert f"{key} (override {override!r}): unknown" in msg
    assert f"did you mean {suggestion!r}?" in msg
    assert "(known: " in msg
    assert "<root>" not in msg


def test_unknown_part_in_file_names_line(tmp_path):
    f = tmp_path / "recipe.yaml"
    f.write_text("algo:\n  advantage: grpoo\n")
    msg = _error(f)
    assert f"algo.advantage ({f}:2): unknown advantage estimator 'grpoo'; did you mean 'grpo'?" in msg


def test_no_rewards():
    assert "rewards (override 'rewards=[]'): at least one reward function is required" in _error(GRPO, ["rewards=[]"])


def test_advantage_option_the_part_does_not_take():
    msg = _error(GRPO, ["algo.advantage_kwargs.scal=batch"])
    assert "algo.advantage_kwargs.scal" in msg and "takes no option 'scal'" in msg
    assert "did you mean 'scale'?" in msg and "accepts: scale, eps" in msg


def test_switching_advantage_keeps_options_it_cannot_take():
    # grpo.yaml sets advantage_kwargs {scale, eps}; dr_grpo takes none, which would crash at step 1.
    msg = _error(GRPO, ["algo.advantage=dr_grpo"])
    assert f"algo.advantage_kwargs.scale ({GRPO}:" in msg and "algo.advantage_kwargs={}" in msg
    assert load_config(GRPO, ["algo.advantage=dr_grpo", "algo.advantage_kwargs={}"]).algo.advantage == "dr_grpo"


# ----- malformed overrides and files ---------------------------------------------------------------


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.lr", ["'train.lr' must look like key=value"]),
        ("=3", ["'=3'", "empty key"]),
        ("train..lr=3", ["empty key"]),
        ("train.lr=[1", ["'[1' is not valid YAML"]),
        ("train.steps.x=1", ["train.steps is a value (", "), not a section"]),
        ("rewards.7.weight=1", ["rewards has 2 item(s)", "no index 7"]),
        ("rewards.first.weight=1", ["rewards is a list", "rewards.0"]),
    ],
)
def test_malformed_override(override, words):
    msg = _error(GRPO, [override])
    for w in words:
        assert w in msg, (w, msg)


def test_missing_config_file(tmp_path):
    assert _error(tmp_path / "nope.yaml") == f"config file {tmp_path / 'nope.yaml'} does not exist"


def test_config_path_is_a_directory(tmp_path):
    assert "is a directory" in _error(tmp_path)


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just a string\n", "str"), ("3\n", "int")])
def test_yaml_that_is_not_a_mapping(tmp_path, text, kind):
    f = tmp_path / "r.yaml"
    f.write_text(text)
    msg = _error(f)
    assert str(f) in msg and "top level must be a mapping" in msg and f"got a {kind}" in msg


def test_invalid_yaml_names_file_line_column(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("train:\n  steps: 3\n  lr: [1e-4\n")
    msg = _error(f)
    assert msg.startswith(f"{f}:") and "not valid YAML" in msg


def test_non_utf8_config(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_bytes(b"name: \xff\xfe\n")
    assert "not UTF-8" in _error(f)


def test_empty_yaml_file_gives_defaults(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("# nothing\n")
    assert load_config(f) == RunConfig()
