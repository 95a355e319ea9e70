"""Efficiency: from the verbose base, dler, hapo and arlcp each cut held-out length by >= 30% while
held-out accuracy falls by at most 3 points.

Runs the same command that produces the table in docs/efficiency.md (``python bench/efficiency_table.py``).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ACCEPTANCE = ["dler", "hapo", "arlcp"]


@pytest.mark.slow
def test_length_shaping_recipes_cut_length_without_losing_accuracy(tmp_path):
    out = tmp_path / "table.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "efficiency_table.py"), "--recipes", *ACCEPTANCE,
                           "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    rows = json.loads(out.read_text())
    assert [r["recipe"] for r in rows] == ACCEPTANCE
    for r in rows:
        assert r["len_after"] <= 0.7 * r["len_before"], r
        assert r["acc_after"] >= r["acc_before"] - 0.03, r
