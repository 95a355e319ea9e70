"""Bad input through the command line: exit code 2, one ``error:`` line naming what and where, nothing lost."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from rlfold.cli import main
from rlfold.rewards import REWARDS
from rlfold.trainers import checkpoint as ckpt
from rlfold.trainers.metrics import METRICS_FILE, read_jsonl

FAST = ["train.steps=2", "train.prompts_per_step=4", "rollout.n=4", "task.held_out_size=20", "eval.size=20",
        "eval.pass_k=1", "log.progress=false"]


def _fails(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: "), err
    return err


# ----- config errors: reported before anything runs -----------------------------------------------


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.lr_rate=1e-4", ["train.lr_rate (override 'train.lr_rate=1e-4'): unknown key", "did you mean 'train.lr'?"]),
        ("trian.lr=1e-4", ["trian", "did you mean 'train'?"]),
        ("train.steps=abc", ["train.steps", "valid integer", "'abc'"]),
        ("train.lr=-1", ["train.lr", "greater than 0"]),
        ("rollout.top_p=2", ["rollout.top_p", "less than or equal to 1"]),
        ("algo.advantage=grpoo", ["algo.advantage", "unknown advantage estimator 'grpoo'", "did you mean 'grpo'?"]),
        ("rewards=[{name: exact_matc}]", ["rewards[0].name", "did you mean 'exact_match'?"]),
        ("train.lr", ["'train.lr' must look like key=value"]),
    ],
)
def test_config_error_exits_2_and_nothing_runs(capsys, tmp_path, override, words):
    run_dir = tmp_path / "run"
    err = _fails(capsys, ["train", "grpo", *FAST, f"run_dir={run_dir}", override])
    for w in words:
        assert w in err, (w, err)
    assert not run_dir.exists()
    assert "Traceback" not in err


def test_typo_in_a_recipe_file_names_file_and_line(capsys, tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\nrollout:\n  n: 4\n  temprature: 0.7\n")
    run_dir = tmp_path / "run"
    err = _fails(capsys, ["train", str(recipe), f"run_dir={run_dir}"])
    assert f"rollout.temprature ({recipe}:4): unknown key; did you mean 'rollout.temperature'?" in err
    assert not run_dir.exists()


def test_unknown_recipe_name(capsys, tmp_path):
    err = _fails(capsys, ["train", "grpoo", f"run_dir={tmp_path / 'run'}"])
    assert "'grpoo' is neither a file nor a shipped recipe" in err and "grpo" in err
    assert not (tmp_path / "run").exists()


def test_recipe_that_is_not_a_mapping(capsys, tmp_path):
    recipe = tmp_path / "list.yaml"
    recipe.write_text("- train\n- rollout\n")
    err = _fails(capsys, ["train", str(recipe), f"run_dir={tmp_path / 'run'}"])
    assert str(recipe) in err and "top level must be a mapping" in err


def test_resume_of_a_missing_run_directory(capsys, tmp_path):
    err = _fails(capsys, ["train", "grpo", "--resume", str(tmp_path / "nope")])
    assert "no such run directory" in err and "nope" in err


def test_run_dir_that_already_holds_checkpoints_is_not_overwritten(capsys, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_0000002").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest").write_text("step_0000002")
    err = _fails(capsys, ["train", "grpo", f"run_dir={run_dir}", *FAST])
    assert "already holds checkpoints" in err and "--resume" in err
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_0000002"


# ----- bad data and models ------------------------------------------------------------------------


def test_train_file_with_a_bad_row(capsys, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "anwser": "4"}\n')
    err = _fails(capsys, ["train", "grpo", f"task.train_file={data}", f"run_dir={tmp_path / 'run'}", *FAST])
    assert f"{data}:2: row is missing field(s) 'answer' (has 'prompt', 'anwser')" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_file_with_invalid_json(capsys, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=" "answer": "4"}\n')
    err = _fails(capsys, ["train", "grpo", f"task.train_file={data}", f"run_dir={tmp_path / 'run'}", *FAST])
    assert f"{data}:2: not valid JSON" in err


def test_train_with_a_missing_model(capsys, tmp_path):
    err = _fails(capsys, ["train", "grpo", f"model.path={tmp_path / 'nomodel'}", f"run_dir={tmp_path / 'run'}", *FAST])
    assert f"model path '{tmp_path / 'nomodel'}' is neither a directory nor a shipped model" in err
    assert "tiny-arith" in err


def test_eval_with_a_missing_model(capsys):
    err = _fails(capsys, ["eval", "--model", "/nonexistent", "--size", "20"])
    assert err.strip() == (
        "error: model path '/nonexistent' is neither a directory nor a shipped model (shipped models: tiny-arith, tiny-choice-arith, tiny-confidence-arith, tiny-graded-verbose-arith, tiny-search, tiny-verbose-arith)"
    )


def test_eval_with_a_bad_data_file(capsys, tmp_path):
    data = tmp_path / "held.jsonl"
    data.write_text('["1+1=", "2"]\n')
    err = _fails(capsys, ["eval", "--model", "tiny-arith", "--data", str(data), "--size", "20"])
    assert f"{data}:1: expected a JSON object" in err


def test_eval_with_an_unknown_level(capsys):
    err = _fails(capsys, ["eval", "--model", "tiny-arith", "--levels", "9", "--size", "20"])
    assert "unknown difficulty level 9" in err


# ----- a reward function that raises mid-run ------------------------------------------------------

_CALLS = {"batches": 0}
RAISES_LATE = "_test_raises_from_step_4"


def _raises_from_step_4(prompts, completions, finishes):
    """Scores 0.5 for three training steps, then raises on every sample (one batch call per step)."""
    if len(prompts) > 1:
        _CALLS["batches"] += 1
    if _CALLS["batches"] >= 4:
        raise ValueError(f"cannot score {completions[0]!r}")
    return [0.5] * len(prompts)


if RAISES_LATE not in REWARDS:
    REWARDS.register(RAISES_LATE)(_raises_from_step_4)


def test_reward_raising_mid_run_keeps_the_last_checkpoint(capsys, tmp_path):
    _CALLS["batches"] = 0
    run_dir = tmp_path / "run"
    argv = ["train", "grpo", *FAST, "train.steps=6", "checkpoint.every=2", "checkpoint.keep=2", "eval.every=0",
            f"run_dir={run_dir}", f"rewards=[{{name: {RAISES_LATE}}}]"]
    err = _fails(capsys, argv)
    assert f"reward function '{RAISES_LATE}' raised ValueError: cannot score" in err
    assert "on sample 0 (prompt '" in err and "completion" in err

    root = run_dir / ckpt.CKPT_DIR
    assert (root / ckpt.LATEST).read_text().strip() == "step_0000002"
    assert ckpt.latest_checkpoint(run_dir) == root / "step_0000002"
    assert ckpt.load_state(root / "step_0000002")["loop"]["step"] == 2
    model = AutoModelForCausalLM.from_pretrained(root / "step_0000002", local_files_only=True)
    assert model.config.model_type
    assert not list(root.glob(".tmp-*"))
    assert not (run_dir / "final").exists()
    steps = [row["step"] for row in read_jsonl(run_dir / METRICS_FILE)]
    assert steps == [0, 1, 2, 3]  # it failed in step 4, after three finished steps


def test_print_config_shows_resolved_values_and_runs_nothing(tmp_path, capsys, monkeypatch):
    import yaml

    from rlfold.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "grpo", "train.lr=3e-5", "rollout.n=4", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == 3e-5 and printed["rollout"]["n"] == 4
    assert printed["algo"]["advantage"] == "grpo"
    assert not (tmp_path / "runs").exists()
