"""Learning: preference recipes raise the ground-truth win rate against the reference policy on held-out prompts.

Runs the command that produces the table in docs/preference.md (``python bench/preference_table.py``) on a
subset of the recipes (one per data kind and a reference-free one), one seed, so what CI checks is what a
user reproduces.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUBSET = ["dpo", "kto", "lipo", "simpo"]


@pytest.mark.slow
def test_preference_recipes_beat_the_reference_on_held_out_prompts(tmp_path):
    out = tmp_path / "table.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "preference_table.py"), "--recipes", *SUBSET,
                           "--seeds", "0", "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    rows = json.loads(out.read_text())
    assert [r["recipe"] for r in rows] == SUBSET
    for r in rows:
        assert r["win_rate"] > 0.5, r
        assert 0.15 <= r["acc_before"] <= 0.6, r
