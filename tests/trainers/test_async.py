"""Asynchronous collection (``rollout.async_mode``): queue and staleness bookkeeping, versions on rows,
the decoupled PPO correction, clean shutdown, resume, and (slow) learning the demo task."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest
import torch

from rlfold.algos.policy_losses import decoupled_ppo, ppo_clip
from rlfold.algos.selection import SelectionInput, tis
from rlfold.core.config_loader import load_config
from rlfold.core.errors import ConfigError
from rlfold.trainers.async_collect import AsyncCollector, CollectorError, min_version, staleness_metrics, too_stale
from rlfold.trainers.loop import build_run

RECIPES = Path(__file__).resolve().parents[2] / "src/rlfold/recipes"
TINY = ["train.prompts_per_step=2", "rollout.n=4", "task.held_out_size=4", "eval.size=4", "log.progress=false",
        "checkpoint.every=0", "threads=1"]


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "rlfold-rollouts"]


def _cfg(steps: int, *extra: str):
    return load_config(RECIPES / "grpo_async.yaml", [f"train.steps={steps}", *TINY, *extra])


# ----- bookkeeping ------------------------------------------------------------------------------------

def test_min_version_bounds_the_staleness_of_each_batch():
    assert [min_version(b, 1) for b in range(4)] == [0, 0, 1, 2]
    assert [min_version(b, 2) for b in range(5)] == [0, 0, 0, 1, 2]


def test_too_stale_and_staleness_metrics():
    v = torch.tensor([3, 3, 2, 2])
    assert not too_stale(v, 4, 2) and not too_stale(v, 3, 1)
    assert too_stale(v, 5, 2) and too_stale(v, 4, 1)
    assert not too_stale(torch.tensor([], dtype=torch.long), 9, 1)
    assert staleness_metrics(v, 4, 3) == {"async/staleness_mean": 1.5, "async/staleness_max": 2.0,
                                          "async/queue_size": 3.0}


# ----- the decoupled correction -------------------------------------------------------------------------

def test_decoupled_ppo_clips_against_the_proximal_policy_and_weights_by_the_truncated_ratio():
    """Two tokens. behaviour p = (0.5, 0.2), proximal p = (0.6, 0.5), current p = (0.66, 0.4), A = (1, -1).
    Ratio to the proximal policy: (1.1, 0.8), inside [0.8, 1.2]: per-token PPO losses (-1.1, 0.8).
    (Against the behaviour policy the first ratio would be 1.32, clipped to 1.2.)
    Weights pi_prox / pi_behav = (1.2, 2.5) truncated at 2: (1.2, 2). Weighted loss: (-1.32, 1.6)."""
    behav = torch.tensor([[0.5, 0.2]]).log()
    prox = torch.tensor([[0.6, 0.5]]).log()
    cur = torch.tensor([[0.66, 0.4]]).log()
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    inp = SelectionInput(rewards=torch.zeros(1), group_ids=torch.zeros(1, dtype=torch.long), response_mask=mask,
                         advantages=adv, truncated=torch.zeros(1, dtype=torch.bool), old_logprobs=prox,
                         behaviour_logprobs=behav)
    w = tis(inp, level="token", mode="truncate", threshold=2.0).token_weights
    torch.testing.assert_close(w, torch.tensor([[1.2, 2.0]]))
    pg, _ = ppo_clip(cur, prox, adv, mask)
    torch.testing.assert_close(pg, torch.tensor([[-1.1, 0.8]]))
    torch.testing.assert_close(pg * w, torch.tensor([[-1.32, 1.6]]))  # what PolicyTerm computes
    pg_behav, _ = ppo_clip(cur, behav, adv, mask)
    assert pg_behav[0, 0].item() == pytest.approx(-1.2)
    # the policy loss doing both (behaviour weights inside the loss): truncated, and AReaL's mask above the cap
    loss, m = decoupled_ppo(cur, prox, adv, mask, behaviour_logprobs=behav, cap=2.0, mode="truncate")
    torch.testing.assert_close(loss, torch.tensor([[-1.32, 1.6]]))
    assert m["behav_capped_frac"].item() == pytest.approx(0.5) and m["behav_weight_mean"].item() == pytest.approx(1.6)
    loss, _ = decoupled_ppo(cur, prox, adv, mask, behaviour_logprobs=behav, cap=2.0, mode="mask")
    torch.testing.assert_close(loss, torch.tensor([[-1.32, 0.0]]))
    # behaviour == proximal: plain PPO
    torch.testing.assert_close(decoupled_ppo(cur, prox, adv, mask, behaviour_logprobs=prox)[0], pg)


# ----- versions on rows, determinism, shutdown ------------------------------------------------------------

def test_versions_on_rows_and_staleness_metrics_one_step(tmp_path):
    run = build_run(_cfg(3, "rollout.recompute_logprobs=true"), tmp_path / "run")  # logs the engine mismatch
    assert isinstance(run.trainer.collector, AsyncCollector)
    rows = run.fit()
    train = [r for r in rows if r["step"] > 0]
    assert [r["policy_version/mean"] for r in train] == [0.0, 0.0, 1.0]
    assert [r["async/staleness_max"] for r in train] == [0.0, 1.0, 1.0]
    assert [r["async/staleness_mean"] for r in train] == [0.0, 1.0, 1.0]
    assert all(r["async/queue_size"] == 1.0 for r in train)
    assert all(r["async/regenerated"] == 0.0 for r in train)
    # the stale rows' behaviour log-probs differ from the proximal ones; on-policy rows (step 1) do not
    assert train[0]["sampling/sampling_logp_difference/max"] < 1e-4
    assert train[1]["sampling/sampling_logp_difference/max"] > 1e-4
    assert not _threads()  # stopped at the end of the run


def test_bounded_staleness_two(tmp_path):
    run = build_run(_cfg(4, "rollout.async_mode=bounded", "rollout.max_staleness=2"), tmp_path / "run")
    rows = [r for r in run.fit() if r["step"] > 0]
    assert [r["policy_version/mean"] for r in rows] == [0.0, 0.0, 0.0, 1.0]
    assert [r["async/staleness_max"] for r in rows] == [0.0, 1.0, 2.0, 2.0]
    assert [r["async/queue_size"] for r in rows] == [2.0, 2.0, 2.0, 2.0]


def test_seeded_runs_are_deterministic(tmp_path):
    def metrics(name):
        rows = build_run(_cfg(3), tmp_path / name).fit()
        return [{k: v for k, v in r.items() if not k.startswith(("timing_s/", "perf/", "async/wait_s"))}
                for r in rows]
    assert metrics("a") == metrics("b")


def test_sync_rows_carry_versions_too(tmp_path):
    cfg = load_config(RECIPES / "grpo.yaml", ["train.steps=2", *TINY])
    rows = [r for r in build_run(cfg, tmp_path / "run").fit() if r["step"] > 0]
    assert [r["policy_version/mean"] for r in rows] == [0.0, 1.0]
    assert "async/staleness_mean" not in rows[0]


def test_thread_stops_on_an_error_in_the_step(tmp_path, monkeypatch):
    run = build_run(_cfg(3), tmp_path / "run")

    def boom(prep):
        raise RuntimeError("update failed")

    monkeypatch.setattr(run.trainer, "update", boom)
    with pytest.raises(RuntimeError, match="update failed"):
        run.fit()
    assert not _threads()


def test_thread_stops_on_ctrl_c(tmp_path, monkeypatch):
    """A KeyboardInterrupt while the trainer waits for the queue (where the SIGINT handler raises it)."""
    run = build_run(_cfg(3, "checkpoint.every=1"), tmp_path / "run")
    collector = run.trainer.collector
    take = collector.draw_and_generate
    calls = []

    def interrupted(step, purpose, round_):
        calls.append(step)
        if step == 1:
            raise KeyboardInterrupt
        return take(step, purpose, round_)

    monkeypatch.setattr(collector, "draw_and_generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run.fit()
    assert calls == [0, 1]
    assert not _threads()


def test_an_error_in_the_background_thread_reaches_the_trainer(tmp_path, monkeypatch):
    run = build_run(_cfg(3), tmp_path / "run")
    engine = run.trainer.engine
    generate = engine.generate

    def failing(requests, params, seed):
        if threading.current_thread().name == "rlfold-rollouts" and failing.calls >= 1:
            raise RuntimeError("engine died")
        failing.calls += 1
        return generate(requests, params, seed)

    failing.calls = 0
    monkeypatch.setattr(engine, "generate", failing)
    with pytest.raises(CollectorError, match="engine died"):
        run.fit()
    assert not _threads()


def test_resume_regenerates_the_queue(tmp_path):
    build_run(_cfg(2, "checkpoint.every=1"), tmp_path / "run").fit()
    cfg = _cfg(4, "checkpoint.every=1")
    run = build_run(cfg, tmp_path / "run", resume=True)
    rows = [r for r in run.fit() if r["step"] > 2]
    # the first batch after the resume is generated with the resumed weights, then one step stale again
    assert [r["policy_version/mean"] for r in rows] == [2.0, 2.0]
    assert [r["async/staleness_max"] for r in rows] == [0.0, 1.0]
    assert not _threads()


def test_async_with_a_shared_weights_engine_is_refused(tmp_path):
    cfg = _cfg(1, "rollout.engine_kwargs={weights: shared}")
    with pytest.raises(ConfigError, match="weights of its own"):
        build_run(cfg, tmp_path / "run")


def test_async_without_recomputed_old_logprobs_is_refused_where_the_update_is_not_one_step(tmp_path):
    for extra in (["train.ppo_epochs=2"],
                  ["algo.policy_loss=ppo_clip", "algo.policy_loss_kwargs={}",
                   "algo.selection=[{name: tis, kwargs: {level: token, mode: truncate, threshold: 2.0}}]"]):
        with pytest.raises(ConfigError, match="proximal"):
            build_run(_cfg(1, *extra), tmp_path / "run")


def test_proximal_logprobs_from_the_update_equal_the_recomputed_ones(tmp_path):
    """The recipe takes the proximal log-probs from its one-step update's own forward; recomputing them before
    the update (and the tis selection with ppo_clip, the recipe's former form) trains the same weights."""
    from safetensors.torch import load_file

    runs = {"in_update": [], "recomputed": ["rollout.recompute_logprobs=true"],
            "tis": ["rollout.recompute_logprobs=true", "algo.policy_loss=ppo_clip", "algo.policy_loss_kwargs={}",
                    "algo.selection=[{name: tis, kwargs: {level: token, mode: truncate, threshold: 2.0}}]"]}
    out = {}
    for name, extra in runs.items():
        rows = build_run(_cfg(3, "eval.every=0", *extra), tmp_path / name).fit()
        out[name] = (rows, load_file(tmp_path / name / "final" / "model.safetensors"))
    assert "timing_s/old" not in out["in_update"][0][-1] and "timing_s/old" in out["recomputed"][0][-1]
    for name in ("recomputed", "tis"):
        for a, b in zip(out["in_update"][0][1:], out[name][0][1:]):
            assert a["actor/pg_loss"] == pytest.approx(b["actor/pg_loss"], abs=1e-5)
        w0, w1 = out["in_update"][1], out[name][1]
        assert max(float((w0[k] - w1[k]).abs().max()) for k in w0) < 1e-5


# ----- learning -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_one_step_off_policy_grpo_learns_the_demo_task(tmp_path):
    cfg = load_config(RECIPES / "grpo_async.yaml", ["log.progress=false", "checkpoint.every=0"])
    rows = build_run(cfg, tmp_path / "run").fit()
    before, after = rows[0]["val/arith/acc"], rows[-1]["val/arith/acc"]
    assert after - before >= 0.30, (before, after)
    stale = [r["async/staleness_mean"] for r in rows if r["step"] > 1]
    assert stale and all(math.isclose(s, 1.0) for s in stale)
