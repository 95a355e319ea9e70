"""The replay stage (7b) end to end on the shipped tiny model, with the PIPO part (arXiv 2604.00860)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlfold.algos.pipo import rescale_group_advantages
from rlfold.core.config_loader import load_config
from rlfold.trainers import checkpoint as ckpt
from rlfold.trainers.loop import build_run

RECIPES = Path(__file__).resolve().parents[2] / "src/rlfold/recipes"
TINY_RUN = ["train.steps=4", "train.prompts_per_step=2", "rollout.n=4", "task.held_out_size=4", "eval.size=4",
            "log.progress=false", "checkpoint.every=0", "rollout.max_new_tokens=6", "threads=1"]
EARLY = "algo.replay={name: pipo, kwargs: {min_steps_before_layback: 1}}"


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_pipo_replays_the_previous_batch_and_moves_the_weights(tmp_path):
    cfg = load_config(RECIPES / "pipo.yaml", [*TINY_RUN, EARLY])
    run = build_run(cfg, tmp_path / "run")
    step = run.trainer
    assert not step.old_in_update  # a replayed batch needs the old log-probs of the policy that sampled it
    calls: list[dict] = []
    update = step.update

    def recording(prep, replay=False):
        before = _params(step.module)
        lr = step.optimizer.param_groups[0]["lr"]
        stats = update(prep, replay=replay)
        after = _params(step.module)
        calls.append({"replay": replay, "prep": prep, "finite": stats.finite,
                      "moved": any(not torch.equal(a, b) for a, b in zip(before, after)),
                      "lr_kept": step.optimizer.param_groups[0]["lr"] == lr})
        return stats

    step.update = recording
    rows = run.fit()[1:]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["replay/pipo_active"] == 0.0 and "replay/pipo_xi" not in rows[0]  # no history yet
    active = [r["replay/pipo_active"] for r in rows[1:]]
    assert all(math.isfinite(r["replay/pipo_xi"]) for r in rows[1:])
    assert sum(active) >= 2, [(r["replay/pipo_xi"], r["replay/pipo_coef"]) for r in rows]
    for r in rows:
        assert ("replay/actor/pg_loss" in r) == (r.get("replay/pipo_active") == 1.0)
    updates = [c for c in calls if not c["replay"]]  # one per step
    assert len(updates) == 4 and len(calls) == 4 + sum(active)
    for i, c in enumerate(calls):
        if not c["replay"]:
            continue
        # each step: its update (calls[i - 1]), then the replay of the batch of the step before
        index = next(k for k, u in enumerate(updates) if u is calls[i - 1])
        cached, r = updates[index - 1]["prep"], rows[index]
        assert r["replay/pipo_active"] == 1.0
        assert c["finite"] and c["moved"] and c["lr_kept"]
        assert c["prep"].old_logprobs is not None and c["prep"].old_logprobs is cached.old_logprobs
        assert c["prep"].roll is cached.roll
        expected = r["replay/pipo_coef"] * rescale_group_advantages(cached.advantages, cached.loss_mask,
                                                                     cached.group_ids)
        assert torch.allclose(c["prep"].advantages, expected, atol=1e-6)
    assert step.replay.history == pytest.approx([r["reward/mean"] for r in rows])


def test_a_replay_that_never_fires_trains_like_no_replay(tmp_path):
    def fit(name: str, *extra: str) -> tuple:
        run = build_run(load_config(RECIPES / "grpo.yaml", [*TINY_RUN, *extra]), tmp_path / name)
        return run.trainer, run.fit()

    plain, a = fit("plain")  # algo.replay null (the default): the on-policy shortcut, no stage 7b
    assert plain.replay is None and plain.old_in_update
    assert not [k for r in a for k in r if k.startswith("replay/")] and "replay" not in plain.state()
    # with the shortcut off both ways (the engine's old log-probs), the never-firing replay changes nothing
    engine_old, b = fit("engine_old", "rollout.recompute_logprobs=false")
    never, c = fit("never", "algo.replay={name: pipo, kwargs: {min_steps_before_layback: 100}}")
    assert not engine_old.old_in_update and not never.old_in_update and not never.recompute
    assert [r["replay/pipo_active"] for r in c[1:]] == [0.0] * 4
    assert never.replay.history == [r["reward/mean"] for r in c[1:]]
    for ra, rb, rc in zip(a, b, c):
        assert set(ra) == set(rb) == {k for k in rc if not k.startswith("replay/") and k != "timing_s/replay"}
        for k, v in rb.items():
            if not k.startswith(("timing_s", "perf")):
                assert rc[k] == v, k
                # the shortcut's own-forward log-probs differ from the engine's in float rounding only
                assert ra[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    for p, q in zip(engine_old.module.parameters(), never.module.parameters()):
        assert torch.equal(p, q)


def test_stopped_and_resumed_run_replays_like_an_uninterrupted_one(tmp_path):
    cfg = load_config(RECIPES / "pipo.yaml", [*TINY_RUN, EARLY])
    whole = build_run(cfg, tmp_path / "whole")
    ref = whole.fit()
    stopped = build_run(cfg, tmp_path / "stopped")
    stopped.loop.counters["init_eval"] = stopped.trainer.begin()
    for _ in range(3):  # three steps as the loop takes them, then a checkpoint, then a resume
        assert stopped.trainer.step(stopped.loop.step).finite
        stopped.loop.counters["step"] = stopped.loop.step + 1
    saved = stopped.loop.save()
    state = ckpt.load_state(saved)["replay"]  # plain data: it loaded with weights_only=True
    assert state["history"] == stopped.trainer.replay.history and "prepared_batch" in state["previous"]
    (tmp_path / "stopped" / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in ref[:4]))  # the rows the stopped run had written
    resumed = build_run(cfg, tmp_path / "stopped", resume=True)
    assert resumed.loop.step == 3
    assert resumed.trainer.replay.history == stopped.trainer.replay.history
    assert resumed.trainer.replay.previous is not None  # the cached batch came back: step 4 replays it
    got = resumed.fit()
    assert resumed.trainer.replay.history == whole.trainer.replay.history
    assert got[-1]["replay/pipo_active"] == 1.0
    drop = ("timing_s", "perf")
    assert [{k: v for k, v in r.items() if not k.startswith(drop)} for r in got] == \
           [{k: v for k, v in r.items() if not k.startswith(drop)} for r in ref]
    for p, q in zip(whole.trainer.module.parameters(), resumed.trainer.module.parameters()):
        assert torch.equal(p, q)
