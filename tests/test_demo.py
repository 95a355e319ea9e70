"""End to end through the installed console script: the demo learns; eval, plot and recipes work on its output."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

RLFOLD = [sys.executable, "-m", "rlfold.cli"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    out = subprocess.run([*RLFOLD, "demo", "--run-dir", str(run_dir), "log.progress=false"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return run_dir, out.stdout


@pytest.mark.slow
def test_demo_raises_held_out_accuracy_by_30_points(demo_run):
    run_dir, stdout = demo_run
    m = re.search(r"held-out greedy accuracy: ([\d.]+)% -> ([\d.]+)%", stdout)
    assert m, stdout
    before, after = float(m.group(1)), float(m.group(2))
    print(f"demo held-out accuracy {before}% -> {after}%")
    assert 15 <= before <= 60
    assert after - before >= 30
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and "val/arith/acc" in rows[0]
    for key in ("reward/mean", "acc/mean", "frac_reward_zero_std", "response_length/mean", "actor/pg_loss",
                "actor/entropy", "actor/grad_norm", "actor/lr", "timing_s/gen", "perf/tokens_per_s"):
        assert key in rows[1], key
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert samples and {"step", "prompt", "completion", "reward"} <= samples[0].keys()
    assert (run_dir / "curves.png").stat().st_size > 10_000
    AutoModelForCausalLM.from_pretrained(run_dir / "final")


@pytest.mark.slow
def test_eval_cli_reports_the_trained_model(demo_run):
    run_dir, stdout = demo_run
    after = float(re.search(r"-> ([\d.]+)%", stdout).group(1))
    out = subprocess.run([*RLFOLD, "eval", "--model", str(run_dir / "final"), "--task", "arith", "--k", "4"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    acc = float(re.search(r"greedy accuracy: ([\d.]+)%", out.stdout).group(1))
    pass_k = float(re.search(r"pass@4: +([\d.]+)%", out.stdout).group(1))
    assert acc == pytest.approx(after, abs=0.01)  # same 200 held-out prompts, greedy, same weights
    assert pass_k >= acc - 10


def test_recipes_and_plot_commands(tmp_path):
    out = subprocess.run([*RLFOLD, "recipes"], capture_output=True, text=True)
    assert out.returncode == 0 and "grpo" in out.stdout and "DeepSeekMath" in out.stdout
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "reward/mean": s / 10, "acc/mean": s / 20, "response_length/mean": 3,
                            "actor/entropy": 0.3, "actor/ppo_kl": 0.0}) + "\n" for s in range(1, 6)))
    out = subprocess.run([*RLFOLD, "plot", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_file()
