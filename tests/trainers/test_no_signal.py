"""Steps that cannot train and inputs the model cannot take.

* Built against the loaded model (before the run directory is written): float16 on CPU, stop token ids
  outside the vocabulary, prompts + response limit beyond the model's positions, prompt characters the
  tokenizer maps to <unk>.
* Skipped like non-finite steps: no trainable token (every reward None, selection removed everything)
  and rewards that are non-finite or overflow the advantage statistics (1e30).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlfold.core.config_loader import load_config
from rlfold.core.errors import ConfigError, DataError, NumericalError
from rlfold.core.registry import REWARDS
from rlfold.trainers import checkpoint as ckpt
from rlfold.trainers.loop import build_run
from rlfold.trainers.metrics import read_jsonl
from rlfold.trainers.online import advantage_problem
from rlfold.trainers.scoring import reward_problem

GRPO = Path(__file__).resolve().parents[2] / "src/rlfold/recipes/grpo.yaml"
SMALL = ["train.steps=2", "train.prompts_per_step=2", "rollout.n=2", "task.held_out_size=4", "eval.size=4",
         "log.progress=false"]
CALLS = {"n": 0}


def _huge(prompts, completions, finishes):
    return [1e30 if i % 2 else 0.0 for i in range(len(completions))]


def _none(prompts, completions, finishes):
    return [None] * len(completions)


def _none_first_call(prompts, completions, finishes):
    CALLS["n"] += 1
    return [None if CALLS["n"] == 1 else float(i % 2) for i in range(len(completions))]


@pytest.fixture(autouse=True)
def test_rewards():
    parts = {"_t_huge": _huge, "_t_none": _none, "_t_none_first": _none_first_call}
    for name, fn in parts.items():
        REWARDS.register(name)(fn)
    CALLS["n"] = 0
    yield
    for name in parts:
        REWARDS.unregister(name)


def _build(tmp_path: Path, *overrides: str):
    run = tmp_path / "run"
    return run, build_run(load_config(GRPO, [*SMALL, *overrides]), run)


def _refused(tmp_path: Path, error: type, *overrides: str) -> str:
    run = tmp_path / "run"
    with pytest.raises(error) as err:
        build_run(load_config(GRPO, [*SMALL, *overrides]), run)
    assert not run.exists(), "a refused run must leave no run directory"
    return str(err.value)


def _jsonl(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "answer": "2"}) + "\n" for p in prompts), encoding="utf-8")
    return path


# ----- refused while the step is built --------------------------------------------------------


def test_float16_on_cpu_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    import rlfold.trainers.online as online

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(online, "load_model_and_tokenizer", lambda *a: pytest.fail("the model was loaded"))
    msg = _refused(tmp_path, ConfigError, "model.dtype=float16")
    assert "model.dtype=float16" in msg and "float32" in msg and "bfloat16" in msg


def test_stop_token_outside_the_vocabulary(tmp_path):
    msg = _refused(tmp_path, ConfigError, "rollout.stop_token_ids=[5, 100, -1]")
    assert "rollout.stop_token_ids" in msg and "100, -1" in msg and "0..99" in msg


def test_response_limit_beyond_the_context(tmp_path):
    msg = _refused(tmp_path, ConfigError, "rollout.max_new_tokens=125")
    assert "rollout.max_new_tokens=125" in msg and "128 positions" in msg and "at most 121" in msg


def test_eval_limit_beyond_the_context(tmp_path):
    msg = _refused(tmp_path, ConfigError, "eval.max_new_tokens=200")
    assert "held-out" in msg and "eval.max_new_tokens=200" in msg and "128 positions" in msg


def test_long_prompt_is_named_with_its_length(tmp_path):
    data = _jsonl(tmp_path / "data.jsonl", ["1+1=", "1+" * 70 + "1="])
    msg = _refused(tmp_path, ConfigError, f"task.train_file={data}")
    assert f"row 2 of {data}" in msg and "is 143 tokens" in msg and "128 positions" in msg
    assert "1+1+1+" in msg and "the prompt alone fills the context" in msg


def test_unknown_characters_are_named(tmp_path):
    data = _jsonl(tmp_path / "data.jsonl", ["1+1=", "3×4=", "é+1="])
    msg = _refused(tmp_path, DataError, f"task.train_file={data}")
    assert "2 training prompt(s)" in msg and "<unk>" in msg
    assert f"row 2 of {data} '3×4=': '×' (U+00D7)" in msg and "'é' (U+00E9)" in msg
    assert "task.allow_unknown_chars=true" in msg
    run, _ = _build(tmp_path, f"task.train_file={data}", "task.allow_unknown_chars=true")  # the opt-out
    assert (run / "config.yaml").is_file()


# ----- steps that cannot train ----------------------------------------------------------------


def _fit_fails(run_dir: Path, job) -> str:
    with pytest.raises(NumericalError) as err:
        job.fit()
    assert not (run_dir / "final").exists() and ckpt.latest_checkpoint(run_dir) is None
    return str(err.value)


def test_every_reward_none_stops_the_run_naming_the_reward(tmp_path):
    run, job = _build(tmp_path, "rewards=[{name: _t_none}]", "train.steps=5", "train.max_nonfinite_steps=2")
    msg = _fit_fails(run, job)
    assert "2 steps in a row could not train (train.max_nonfinite_steps=2)" in msg
    assert "steps 1, 2: the reward functions (_t_none) returned None for all 4 samples" in msg
    rows = read_jsonl(run / "metrics.jsonl")
    assert [(r["step"], r["train/empty_step"], r["nonfinite_steps"]) for r in rows[1:]] == [(1, 1.0, 1)]
    assert "actor/grad_norm" not in rows[1]


def test_a_run_none_of_whose_steps_trained_is_an_error(tmp_path):
    run, job = _build(tmp_path, "rewards=[{name: _t_none}]")  # 2 steps < max_nonfinite_steps=3
    msg = _fit_fails(run, job)
    assert msg.startswith("none of the 2 steps of the run could train") and "_t_none" in msg


def test_one_empty_step_is_skipped_and_counted(tmp_path):
    run, job = _build(tmp_path, "rewards=[{name: _t_none_first}]", "train.steps=3")
    rows = job.fit()
    assert [r["train/empty_step"] for r in rows[1:]] == [1.0, 0.0, 0.0]
    assert [r["nonfinite_steps"] for r in rows[1:]] == [1, 1, 1]
    assert "actor/grad_norm" not in rows[1] and "actor/grad_norm" in rows[2]
    assert (run / "final" / "model.safetensors").is_file()


def test_selection_that_removes_every_token(tmp_path):
    run, job = _build(tmp_path, "algo.selection=[{name: mask_truncated}]", "rollout.max_new_tokens=1",
                      "rollout.stop_strings=[]", "train.max_nonfinite_steps=2")
    msg = _fit_fails(run, job)
    assert "the selection parts (mask_truncated) removed every token" in msg
    assert "selection/truncated_frac=1" in msg and "rollout.max_new_tokens" in msg


def test_overflowing_rewards_are_flagged_not_silently_zero(tmp_path):
    run, job = _build(tmp_path, "rewards=[{name: _t_huge}]", "train.max_nonfinite_steps=2")
    msg = _fit_fails(run, job)
    assert "|r| = 1e+30 overflow the advantage statistics" in msg and "rescale the rewards" in msg
    rows = read_jsonl(run / "metrics.jsonl")
    assert rows[1]["train/bad_reward_step"] == 1.0 and rows[1]["train/empty_step"] == 0.0


def test_reward_and_advantage_checks():
    mask = torch.ones(4, 3)
    fine = torch.tensor([0.0, 1.0, 10.0, -10.0])
    assert reward_problem(fine, torch.zeros(4, 3), mask) is None
    assert reward_problem(torch.tensor([0.0, 2e19, 0.0, 2e19]), torch.zeros(4, 3), mask) is not None
    assert "non-finite" in reward_problem(torch.tensor([0.0, float("inf"), 0, 0]), torch.zeros(4, 3), mask)
    tokens = torch.zeros(4, 3)
    tokens[1, 2] = float("nan")
    assert "per-token reward" in reward_problem(fine, tokens, mask)
    assert reward_problem(fine, tokens, torch.tensor([[1.0, 1, 0]] * 4)) is None  # masked positions do not count
    adv = torch.zeros(4, 3)
    assert advantage_problem(adv, mask) is None
    adv[2, 0] = float("nan")
    assert "rows [2]" in advantage_problem(adv, mask)
