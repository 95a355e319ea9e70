"""Learning to search: Search-R1's GRPO takes the tiny-search base from chance to most knowledge questions right,
and AdaSearch's decision reward removes the searches GRPO adds on questions the model can answer itself.

Runs the command that produces the table in docs/agents.md (``python bench/agents_table.py``) for one seed,
so what CI checks is what a user reproduces.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent


@pytest.mark.slow
def test_the_tiny_model_learns_when_and_what_to_search(tmp_path):
    out = tmp_path / "table.json"
    proc = subprocess.run([sys.executable, str(ROOT.parent / "bench" / "agents_table.py"), "--recipes", "search_r1",
                           "adasearch", "--seeds", "0", "--jobs", "2", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    grpo, ada = json.loads(out.read_text())
    assert grpo["recipe"] == "search_r1" and ada["recipe"] == "adasearch"
    for r in (grpo, ada):
        assert r["acc_knowledge_before"] <= 0.10 and r["calls_knowledge_before"] <= 0.05, r
        assert r["acc_knowledge_after"] >= 0.70 and r["calls_knowledge_after"] >= 0.9, r  # it searches, and well
        assert r["acc_memory_after"] >= 0.85, r
    assert grpo["calls_memory_after"] >= 0.5  # GRPO searches where it need not (the AdaSearch paper's finding)
    assert ada["calls_memory_after"] <= 0.5 * grpo["calls_memory_after"], (grpo, ada)
