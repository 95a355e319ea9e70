"""The DECS recipe's kappa curriculum in the trainer: it caps easy groups, logs kappa, and resumes its state."""

from __future__ import annotations

import json

from rlfold.cli import RECIPES_DIR
from rlfold.core.config_loader import load_config
from rlfold.trainers.loop import build_run

SHORT = ["train.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=24", "eval.every=0",
         "log.progress=false", "threads=1"]


def test_decs_recipe_curriculum_runs_logs_and_resumes(tmp_path):
    run = tmp_path / "run"
    over = [*SHORT, f"run_dir={run}", "train.steps=2", "checkpoint.every=1"]
    job = build_run(load_config(RECIPES_DIR / "decs.yaml", over), run)
    job.fit()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "decs/kappa" in r]
    assert len(steps) == 2
    for r in steps:
        assert 0.0 <= r["decs/kappa"] <= r["decs/kappa_natural"] <= 1.0
        assert r["rollout/kept_groups"] <= 4
    state = job.trainer.collector.filter_state.states[0]
    assert state["step"] == 1 and state["easy_kept"] <= state["quota"]
    resumed = build_run(load_config(RECIPES_DIR / "decs.yaml", [*over, "train.steps=3"]), run, resume=True)
    assert resumed.trainer.collector.filter_state.states[0] == state
