"""Ray rollout and reward workers on a local 2-CPU cluster (started once for the module, on loopback).

The sharding plan makes the runs exactly comparable: one rollout worker draws what the in-process engine
draws with the call's seed, and N workers draw what the in-process ``sharded`` engine with N shards draws.
"""

from __future__ import annotations

import gc
import math
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported: listen on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")

from rlfold.cluster import connect, shutdown_if_started  # noqa: E402
from rlfold.core.config import RayConfig  # noqa: E402
from rlfold.core.config_loader import load_config  # noqa: E402
from rlfold.core.types import Prompt  # noqa: E402
from rlfold.rewards import score_rewards  # noqa: E402
from rlfold.rewards.ray_pool import RayRewardPool  # noqa: E402
from rlfold.trainers.loop import build_run  # noqa: E402

pytestmark = pytest.mark.slow

BASE = ["train.steps=2", "train.prompts_per_step=4", "rollout.n=2", "rollout.max_new_tokens=8", "task.held_out_size=4",
        "eval.size=4", "eval.every=0", "log.progress=false", "checkpoint.every=0", "threads=1", "seed=3"]
RECIPE = Path(__file__).resolve().parents[2] / "src/rlfold/recipes/grpo.yaml"
COPY = ["rollout.engine_kwargs={weights: copy}"]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local cluster for every test here, shut down at the end (rlfold started it)."""
    connect(RayConfig())
    yield
    shutdown_if_started()
    assert not ray.is_initialized()


def _metrics(tmp_path, name: str, overrides: list[str]) -> list[dict[str, float]]:
    """The metrics.jsonl rows of a grpo run, without timing and performance figures."""
    run = build_run(load_config(RECIPE, BASE + overrides), tmp_path / name)
    rows = run.fit()
    del run
    gc.collect()  # the run's actors go with their engine and pool: the next run finds the CPUs free
    return [{k: v for k, v in r.items() if not k.startswith(("timing_s/", "perf/"))} for r in rows]


def _assert_same(a: list[dict], b: list[dict]) -> float:
    """Equal keys per row, every value within 1e-6; returns the largest difference."""
    assert len(a) == len(b) and len(a) >= 3
    worst = 0.0
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys(), set(ra) ^ set(rb)
        for k in ra:
            x, y = ra[k], rb[k]
            if isinstance(x, float) and math.isnan(x):
                assert isinstance(y, float) and math.isnan(y), k
                continue
            worst = max(worst, abs(float(x) - float(y)))
            assert x == pytest.approx(y, abs=1e-6), (ra["step"], k, x, y)
    return worst


def test_one_rollout_worker_gives_the_single_process_metrics(tmp_path):
    single = _metrics(tmp_path, "single", COPY)
    on_ray = _metrics(tmp_path, "ray", COPY + ["ray={num_rollout_workers: 1}"])
    worst = _assert_same(single, on_ray)
    print(f"1 worker vs in-process hf (weights: copy): largest metric difference {worst:.3g}")
    assert any("sampling/sampling_logp_difference/mean" in r for r in on_ray)  # old log-probs recomputed


def test_two_workers_and_reward_pool_give_the_sharded_single_process_metrics(tmp_path):
    single = _metrics(tmp_path, "single", ["rollout.engine=sharded",
                                           "rollout.engine_kwargs={shards: 2, engine_kwargs: {weights: copy}}"])
    on_ray = _metrics(tmp_path, "ray", ["ray={num_rollout_workers: 2, num_reward_workers: 2, "
                                                        "cpus_per_rollout_worker: 0.5, cpus_per_reward_worker: 0.5}"])
    worst = _assert_same(single, on_ray)
    print(f"2 workers + 2 reward workers vs in-process sharded engine: largest metric difference {worst:.3g}")


def test_reward_pool_gives_the_in_process_scores():
    prompts = [Prompt(text=f"{a}+{b}=", answer=str(a + b)) for a in range(3) for b in range(3)]
    completions = [str(a + b + (i % 2)) for i, (a, b) in enumerate((a, b) for a in range(3) for b in range(3))]
    completions[4] = "not a number"
    finishes = ["stop"] * len(prompts)
    lengths = torch.tensor([len(c) for c in completions])
    specs = [("exact_match", 1.0), ("format", 0.1)]
    pool = RayRewardPool(RayConfig(num_rollout_workers=0, num_reward_workers=2))
    here = score_rewards(specs, prompts, completions, finishes, response_lengths=lengths, on_error="none")
    there = pool(specs, prompts, completions, finishes, response_lengths=lengths, on_error="none")
    assert torch.equal(here.total.nan_to_num(-9), there.total.nan_to_num(-9))
    assert here.per_fn.keys() == there.per_fn.keys()
    for k in here.per_fn:
        assert torch.equal(here.per_fn[k].nan_to_num(-9), there.per_fn[k].nan_to_num(-9)), k
    assert here.metrics == there.metrics


def test_missing_ray_names_the_extra(monkeypatch):
    from rlfold.cluster import import_ray
    from rlfold.core.errors import ConfigError

    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'rlfold\[ray\]'"):
        import_ray()


def test_placement_group_bundles_on_cpu():
    """ray.placement: a placement group per role, actor i in bundle i (the GPU bundle needs a GPU: not run)."""
    from rlfold.cluster import actor_options, release_placement_groups

    cfg = RayConfig(num_rollout_workers=2, cpus_per_rollout_worker=0.25, placement="strict_pack")
    opts = [actor_options(cfg, "rollout", i, 2) for i in range(2)]
    try:
        assert [o["scheduling_strategy"].placement_group_bundle_index for o in opts] == [0, 1]
        group = opts[0]["scheduling_strategy"].placement_group
        assert group is opts[1]["scheduling_strategy"].placement_group
        assert group.bundle_specs == [{"CPU": 0.25}, {"CPU": 0.25}]
        assert ray.get(ray.remote(lambda: 7).options(**opts[1]).remote()) == 7
    finally:
        release_placement_groups()
