"""The replay stage (7b) end to end on the shipped tiny model, with the PIPO part (arXiv 2604.00860)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlfold.algos.pipo import rescale_group_advantages
from rlfold.core.config_loader import load_config
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
        index = updates.index(calls[i - 1])
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
    plain = build_run(load_config(RECIPES / "grpo.yaml", TINY_RUN), tmp_path / "plain")
    assert plain.trainer.replay is None and plain.trainer.old_in_update
    never = build_run(load_config(RECIPES / "grpo.yaml", [*TINY_RUN, "algo.replay={name: pipo, kwargs: "
                                                                      "{min_steps_before_layback: 100}}"]),
                      tmp_path / "never")
    assert not never.trainer.old_in_update
    a, b = plain.fit(), never.fit()
    assert not [k for r in a for k in r if k.startswith("replay/")]
    assert [r["replay/pipo_active"] for r in b[1:]] == [0.0] * 4
    for ra, rb in zip(a, b):
        assert set(ra) == {k for k in rb if not k.startswith("replay/") and k != "timing_s/replay"}
        for k, v in ra.items():
            if not k.startswith(("timing_s", "perf")):
                assert rb[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    for p, q in zip(plain.trainer.module.parameters(), never.trainer.module.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_resume_restores_the_replay_history(tmp_path):
    cfg = load_config(RECIPES / "pipo.yaml", [*TINY_RUN, EARLY])
    whole = build_run(cfg, tmp_path / "whole")
    ref = whole.fit()[1:]
    stopped = build_run(cfg, tmp_path / "stopped")
    for _ in range(3):  # three steps as the loop takes them, then a checkpoint, then a resume
        assert stopped.trainer.step(stopped.loop.step).finite
        stopped.loop.counters["step"] = stopped.loop.step + 1
    stopped.loop.counters["init_eval"] = {}
    stopped.loop.save()
    resumed = build_run(cfg, tmp_path / "stopped", resume=True)
    assert resumed.loop.step == 3
    assert resumed.trainer.replay.history == stopped.trainer.replay.history
    last = resumed.fit()[-1]
    assert resumed.trainer.replay.history == whole.trainer.replay.history
    assert last["step"] == 4 and last["reward/mean"] == ref[-1]["reward/mean"]
    assert last["replay/pipo_xi"] == pytest.approx(ref[-1]["replay/pipo_xi"], abs=1e-12)
    # the cached batch is not checkpointed: the resumed run's first step has nothing to replay
    assert ref[-1]["replay/pipo_active"] == 1.0 and last["replay/pipo_active"] == 0.0
