"""Learning: the acceptance recipes each raise the tiny base's held-out accuracy by >= 20 points.

Runs the same command that produces the table in the docs (``python bench/learning_table.py``),
so what CI checks is what a user reproduces.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ACCEPTANCE = ["grpo", "dr_grpo", "dapo", "gspo", "cispo", "rloo", "reinforce_pp", "ppo"]


@pytest.mark.slow
def test_acceptance_recipes_improve_held_out_accuracy_by_20_points(tmp_path):
    out = tmp_path / "table.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "learning_table.py"), "--recipes", *ACCEPTANCE,
                           "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    rows = json.loads(out.read_text())
    assert [r["recipe"] for r in rows] == ACCEPTANCE
    for r in rows:
        assert 0.15 <= r["before"] <= 0.6, r
        assert r["after"] - r["before"] >= 0.20, r
        assert r["steps"] == 100
