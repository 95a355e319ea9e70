"""An engine that does not share the trainer's weights (a private copy, as vLLM would hold) gets them
only through ``update_weights``; the trainer then recomputes old log-probs, and ``tis`` compares."""

from __future__ import annotations

import json

import pytest
import torch

from rlfold.core.config_loader import load_config
from rlfold.trainers.loop import build_run

RECIPE = "src/rlfold/recipes/grpo.yaml"
TINY = ["train.steps=2", "train.prompts_per_step=4", "rollout.n=4", "task.held_out_size=8", "eval.size=8",
        "log.progress=false", "checkpoint.every=0"]
COPY = ["rollout.engine_kwargs={weights: copy}", "rollout.eval_engine_kwargs={weights: copy}",
        "algo.selection=[{name: tis}]"]


def _params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_copy_engine_sees_new_weights_only_through_update_weights(tmp_path, monkeypatch):
    run = build_run(load_config(RECIPE, [*TINY, *COPY]), tmp_path / "run")
    t = run.trainer
    assert not t.engine.shares_weights and t.engine.model is not t.model and t.recompute
    assert _params_equal(t.engine.model, t.model)
    calls = []
    real = type(t.engine).update_weights
    monkeypatch.setattr(type(t.engine), "update_weights", lambda self, named, streamed=False: calls.append(self))
    res = t.step(0)
    assert t.eval_engine is t.engine  # the same engine and options: one instance serves both
    assert res.finite and len(calls) == 1  # one engine, one update
    assert not _params_equal(t.engine.model, t.model)  # the copy did not move by itself
    real(t.engine, t.model.named_parameters(), streamed=True)
    assert _params_equal(t.engine.model, t.model)
    # the recomputed old log-probs and the engine's differ only by numerics; tis logs the comparison
    m = res.metrics
    assert 0 <= m["sampling/sampling_logp_difference/max"] < 1e-4
    assert abs(m["sampling/importance_sampling_ratio/mean"] - 1) < 1e-4 and "timing_s/old" in m


def test_shared_engine_needs_no_recomputation(tmp_path):
    run = build_run(load_config(RECIPE, TINY), tmp_path / "run")
    assert run.trainer.engine.shares_weights and not run.trainer.recompute
    assert "timing_s/old" not in run.trainer.step(0).metrics


def test_recompute_can_be_forced_for_a_shared_engine(tmp_path):
    run = build_run(load_config(RECIPE, [*TINY, "rollout.recompute_logprobs=true", "algo.selection=[{name: tis}]"]),
                    tmp_path / "run")
    m = run.trainer.step(0).metrics
    assert run.trainer.recompute and "timing_s/old" in m
    assert m["sampling/sampling_logp_difference/max"] < 1e-4


def _final_acc(run_dir) -> tuple[float, float, list[dict]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows[0]["val/arith/acc"], rows[-1]["val/arith/acc"], rows


@pytest.mark.slow
def test_copy_engine_trains_grpo_like_the_shared_engine(tmp_path):
    """The demo budget (100 steps of 16 x 8) with each engine; held-out greedy accuracy must agree."""
    common = ["log.progress=false", "checkpoint.every=0", "algo.selection=[{name: tis}]"]
    for name, extra in (("shared", []), ("copy", COPY[:2])):
        build_run(load_config(RECIPE, [*common, *extra]), tmp_path / name).fit()
    base, shared, _ = _final_acc(tmp_path / "shared")
    base_copy, copied, rows = _final_acc(tmp_path / "copy")
    assert base == base_copy
    assert shared - base > 0.2 and copied - base > 0.2, (base, shared, copied)
    assert abs(shared - copied) <= 0.03, (shared, copied)
    train_rows = [r for r in rows if r["step"] > 0]
    assert all("timing_s/old" in r and r["sampling/sampling_logp_difference/max"] < 1e-3 for r in train_rows)


class _Recorder:
    """Wraps an engine and records the contract calls, asserting generation only while awake."""

    def __init__(self, inner):
        self.inner, self.log, self.asleep = inner, [], False
        self.pad_id, self.shares_weights = inner.pad_id, inner.shares_weights

    def generate(self, requests, params, seed):
        assert not self.asleep, "generate() on a sleeping engine"
        self.log.append(f"generate T={params.temperature:g}")
        return self.inner.generate(requests, params, seed)

    def update_weights(self, named, streamed=False):
        assert not self.asleep, "update_weights() on a sleeping engine"
        self.log.append("update_weights")
        self.inner.update_weights(named, streamed)

    def sleep(self):
        self.asleep = True
        self.log.append("sleep")

    def wake(self):
        self.asleep = False
        self.log.append("wake")


@pytest.mark.parametrize("recipe", ["grpo", "remax"])
def test_engine_sleeps_through_the_update_and_wakes_for_generation_and_weights(tmp_path, recipe):
    run = build_run(load_config(f"src/rlfold/recipes/{recipe}.yaml", [*TINY, *COPY[:1]]), tmp_path / "run")
    rec = _Recorder(run.trainer.engine)
    run.trainer.engine = run.trainer.collector.engine = rec
    run.trainer.step(0)
    run.trainer.step(1)
    log = rec.log
    assert log.count("update_weights") == 2 and log[-1] == "update_weights" and log[-2] == "wake"
    # every generation happens between a wake and the next sleep; the update runs asleep
    if recipe == "remax":  # the greedy baseline of stage 4 generates after the collect stage
        assert "generate T=0" in log
    first_update = log.index("update_weights")
    assert log[first_update - 2:first_update] == ["sleep", "wake"]


def test_recomputed_old_logprobs_log_the_engine_mismatch_without_tis(tmp_path):
    """Whenever the trainer recomputes old log-probs it logs how far the engine's are (``sampling/*``)."""
    run = build_run(load_config(RECIPE, [*TINY, *COPY[:2]]), tmp_path / "run")
    m = run.trainer.step(0).metrics
    assert 0 <= m["sampling/sampling_logp_difference/max"] < 1e-4 and "selection/tis_outside_frac" not in m
    assert m["sampling/importance_sampling_ratio/min"] <= 1 <= m["sampling/importance_sampling_ratio/max"]


def test_engine_mismatch_numbers():
    from rlfold.algos.selection import engine_mismatch

    old = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    beh = torch.tensor([[-1.5, -1.0, 9.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    m = engine_mismatch(old, beh, mask)  # differences 0.5, -1, 0 on the valid tokens
    assert m["sampling/sampling_logp_difference/mean"] == pytest.approx(0.5, abs=1e-12)
    assert m["sampling/sampling_logp_difference/max"] == pytest.approx(1.0, abs=1e-12)
    assert m["sampling/importance_sampling_ratio/min"] == pytest.approx(float(torch.tensor(-1.0).exp()), abs=1e-7)
    assert m["sampling/importance_sampling_ratio/max"] == pytest.approx(float(torch.tensor(0.5).exp()), abs=1e-7)
    want_mean = (float(torch.tensor(0.5).exp()) + float(torch.tensor(-1.0).exp()) + 1.0) / 3
    assert m["sampling/importance_sampling_ratio/mean"] == pytest.approx(want_mean, abs=1e-7)
    empty = engine_mismatch(old, beh, torch.zeros_like(mask))
    assert empty["sampling/sampling_logp_difference/max"] == 0 and empty["sampling/importance_sampling_ratio/mean"] == 1


def test_an_engine_without_policy_logprobs_needs_the_recomputation(tmp_path):
    """An engine that reports no plain-policy log-probs (NaN, as vLLM does for truncated sampling) with
    recompute_logprobs=false is a clear error at the first step, before any update."""
    from rlfold.core.errors import ConfigError

    run = build_run(load_config(RECIPE, [*TINY, *COPY[:1], "rollout.recompute_logprobs=false"]), tmp_path / "run")
    inner = run.trainer.engine

    class NoPolicyLogprobs(_Recorder):
        def generate(self, requests, params, seed):
            batch = inner.generate(requests, params, seed)
            batch.policy_logprobs = torch.full_like(batch.policy_logprobs, float("nan"))
            return batch

    run.trainer.engine = run.trainer.collector.engine = NoPolicyLogprobs(inner)
    before = [p.detach().clone() for p in run.trainer.model.parameters()]
    with pytest.raises(ConfigError, match="no plain-policy log-probs.*rollout.recompute_logprobs=true"):
        run.trainer.step(0)
    assert all(torch.equal(a, b) for a, b in zip(before, run.trainer.model.parameters()))
