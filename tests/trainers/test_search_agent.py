"""The search-agent recipes (Search-R1, AdaSearch, HDPO) train end to end on the tiny-search base: episodes with
real BM25 calls, per-kind held-out metrics, and a run that goes on when a tool fails."""

from __future__ import annotations

import json

import pytest

from rlfold.cli import main

SMALL = ["train.steps=2", "train.prompts_per_step=4", "eval.size=16", "checkpoint.every=0", "log.progress=false",
         "rollout.n=4"]


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("recipe,key", [("search_r1", "reward/search_em/mean"), ("adasearch", "reward/adasearch_decision/mean"),
                                        ("hdpo", "hdpo/frac_groups_tool_signal")])
def test_recipe_trains_with_the_search_tool(tmp_path, capsys, recipe, key):
    run = tmp_path / recipe
    assert main(["train", recipe, f"run_dir={run}", *SMALL]) == 0, capsys.readouterr().err
    rows = _rows(run)
    steps = [r for r in rows if "reward/mean" in r]
    assert len(steps) == 2 and all(key in r for r in steps)
    for r in steps:
        assert {"tools/calls/mean", "tools/errors/mean", "tools/latency_s/mean", "turns/mean", "env/errors/mean"} <= set(r)
    last = [r for r in rows if "val/search_qa/acc" in r][-1]
    for k in ("acc/knowledge", "acc/memory", "tools/calls/mean/knowledge", "tools/calls/mean/memory"):
        assert 0.0 <= last[f"val/search_qa/{k}"] <= 3.0


def test_a_hanging_tool_is_counted_and_the_run_goes_on(tmp_path, capsys):
    plugin = tmp_path / "slow_tool.py"
    plugin.write_text(
        "import time\n"
        "from rlfold.core.registry import TOOLS\n"
        "@TOOLS.register('sleepy_search')\n"
        "class Sleepy:\n"
        "    '''A search that never answers in time (a test double).'''\n"
        "    def __init__(self):\n"
        "        pass\n"
        "    def __call__(self, argument):\n"
        "        time.sleep(5)\n"
        "        return 'late'\n")
    run = tmp_path / "run"
    args = ["train", "search_r1", f"imports=[{plugin}]", f"run_dir={run}", *SMALL, "rollout.n=8",
            "rollout.env.kwargs={tools: {search: {name: sleepy_search}}, timeout_s: 0.2, max_invalid: 0}",
            "rollout.temperature=1.5"]
    assert main(args) == 0, capsys.readouterr().err
    steps = [r for r in _rows(run) if "reward/mean" in r]
    calls = sum(r["tools/calls/mean"] for r in steps)
    timeouts = sum(r["tools/timeouts/mean"] for r in steps)
    assert calls > 0 and timeouts == pytest.approx(calls) and steps[-1]["tools/errors/mean"] == steps[-1]["tools/timeouts/mean"]
