"""The chi2_occupancy recipe runs, builds the reference for its regulariser (kl_coef 0) and logs the χ² metrics."""

import json

from rlfold.cli import main


def test_chi2_recipe_runs_two_steps_and_logs_chi2(tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = main(["train", "chi2_occupancy", f"run_dir={run_dir}", "train.steps=2", "train.prompts_per_step=4",
               "eval.size=8", "eval.every=0", "checkpoint.every=0", "log.progress=false", "threads=1"])
    assert rc == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] > 0]
    assert len(steps) == 2
    for r in steps:
        for key in ("actor/chi2", "actor/chi2_kl", "actor/chi2_penalty", "reward/length_bonus_proxy/mean",
                    "reward/final_answer/mean", "acc/mean"):
            assert key in r, key
        assert r["actor/chi2"] >= 0
        assert r["actor/kl_coef"] == 0.0  # the reference exists for the regulariser, not for a KL penalty
        assert r["acc/mean"] == r["reward/final_answer/mean"]
