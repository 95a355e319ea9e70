"""Checkpoints: SIGKILL mid-run and resume reaches bitwise the same parameters; writes are atomic."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlfold.core.config_loader import load_config
from rlfold.trainers import checkpoint as ckpt
from rlfold.trainers.loop import Run, build_run

# A reward that sleeps, so the run is slow enough to be killed between checkpoints.
PLUGIN = '''
import time
from rlfold.rewards import REWARDS
from rlfold.rewards.arith import exact_match

@REWARDS.register("slow_exact_match")
def slow_exact_match(prompts, completions, finishes):
    """exact_match that takes 0.15 s per batch (test helper)."""
    time.sleep(0.15)
    return exact_match(prompts, completions, finishes)
'''

STEPS = 10


def _args(plugin: Path, run_dir: Path) -> list[str]:
    return [
        "grpo", f"train.steps={STEPS}", "checkpoint.every=2", "checkpoint.keep=2", f"run_dir={run_dir}",
        "log.progress=false", f"imports=[{plugin}]", "rewards=[{name: slow_exact_match}, {name: format, weight: 0.1}]",
        "train.prompts_per_step=8", "rollout.n=4", "task.held_out_size=16", "eval.size=16", "threads=1",
    ]


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "rlfold.cli", "train", *args]


def _params(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "model.safetensors")


def _metric_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("timing_s", "perf"))} for r in rows]


@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_identical(tmp_path):
    plugin = tmp_path / "slow_plugin.py"
    plugin.write_text(PLUGIN)
    ref_dir, killed_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    subprocess.run(_cli(_args(plugin, ref_dir)), check=True, capture_output=True)

    proc = subprocess.Popen(_cli(_args(plugin, killed_dir)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed_dir / ckpt.CKPT_DIR / ckpt.LATEST
    while proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= "step_0000004":
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = latest.read_text().strip()
    assert not (killed_dir / "final").exists()

    resumed = subprocess.run(_cli([*_args(plugin, killed_dir), "--resume", str(killed_dir)]),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    ref, got = _params(ref_dir), _params(killed_dir)
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name], got[name]), f"{name} differs after resume from {killed_at}"
    assert _metric_rows(ref_dir) == _metric_rows(killed_dir)
    # The final policy is a plain HF directory.
    AutoModelForCausalLM.from_pretrained(killed_dir / "final")


def _train_step(run: Run) -> None:
    """One step as the run loop takes it: ``step(index)``, then the loop's step counter moves."""
    assert run.trainer.step(run.loop.step).finite
    run.loop.counters["step"] = run.loop.step + 1


def test_interrupted_checkpoint_write_keeps_latest(tmp_path, monkeypatch):
    cfg = load_config(
        Path(__file__).resolve().parents[2] / "src/rlfold/recipes/grpo.yaml",
        ["train.steps=4", "checkpoint.every=2", "log.progress=false", "task.held_out_size=8", "eval.size=8",
         "train.prompts_per_step=4", "rollout.n=2"],
    )
    run = build_run(cfg, tmp_path / "run")
    _train_step(run)
    _train_step(run)
    good = run.loop.save()
    _train_step(run)

    def crash(*a, **k):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        run.loop.save()
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(tmp_path / "run") == good
    assert not list((tmp_path / "run" / ckpt.CKPT_DIR).glob(".tmp-*"))  # cleaned on the next look-up
    state = ckpt.load_state(good)
    assert state["loop"]["step"] == 2
    resumed = build_run(cfg, tmp_path / "run", resume=True)
    assert resumed.loop.step == 2


def test_resume_before_any_checkpoint_starts_over_without_duplicate_rows(tmp_path):
    overrides = ["train.steps=2", "checkpoint.every=0", "log.progress=false", "task.held_out_size=8",
                 "eval.size=8", "train.prompts_per_step=4", "rollout.n=2"]
    cfg = load_config(Path(__file__).resolve().parents[2] / "src/rlfold/recipes/grpo.yaml", overrides)
    run = tmp_path / "run"
    first = build_run(cfg, run)
    # Simulate a run killed after logging step 1 but before any checkpoint.
    first.loop.counters["init_eval"] = first.trainer.evaluate()
    (run / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1}\n')
    resumed = build_run(cfg, run, resume=True)
    assert resumed.loop.step == 0
    rows = resumed.fit()
    assert [r["step"] for r in rows] == [0, 1, 2]
