"""verl's on-policy shortcut: an update of one optimiser step on fresh rows takes its old log-probs from its
own forward, detached; the gradient is the one the recomputed old log-probs give."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlfold.core.config_loader import load_config
from rlfold.trainers.loop import build_run

GRPO = Path(__file__).resolve().parents[2] / "src/rlfold/recipes/grpo.yaml"
TINY = ["train.steps=2", "train.prompts_per_step=4", "rollout.n=4", "task.held_out_size=8", "eval.size=8",
        "log.progress=false", "checkpoint.every=0"]


def _trainer(tmp_path, name, *overrides):
    return build_run(load_config(GRPO, [*TINY, *overrides]), tmp_path / name).trainer


def _gradient(trainer, s):
    """The gradient of the update on batch ``s`` (the optimiser step is replaced by a copy of the gradients)."""
    lp = trainer.logprobs(s)
    rewards, _, _, _ = trainer.kl_stage(s, lp)
    from rlfold.trainers.inputs import StepContext

    ctx = StepContext(step=0, prompts=s.prompts, roll=s.roll, scores=s.scores, rewards=rewards,
                      token_rewards=s.token_rewards, group_ids=s.group_ids, collector=trainer.collector,
                      tokenizer=trainer.tokenizer, old_logprobs=lp.old)
    adv, _ = trainer.advantage(ctx)
    prep, _ = trainer.select(ctx, s, lp, rewards, adv, 0)
    grads = {}
    trainer.optimizer.step = lambda *a, **k: grads.update(
        {n: p.grad.clone() for n, p in trainer.module.named_parameters() if p.grad is not None})
    stats = trainer.update(prep)
    return lp, prep, grads, stats.metrics


@pytest.mark.parametrize("precision, atol", [("none", 1e-6), ("bf16", 1e-3)])
def test_grpo_takes_old_log_probs_from_the_update_and_the_gradient_is_unchanged(tmp_path, precision, atol):
    fast = _trainer(tmp_path, "fast", f"train.mixed_precision={precision}")
    slow = _trainer(tmp_path, "slow", f"train.mixed_precision={precision}", "rollout.recompute_logprobs=true")
    assert fast.old_in_update and not slow.old_in_update
    s = fast.collector.collect(0)
    lp, prep, g_fast, m_fast = _gradient(fast, s)
    assert lp.old is None and prep.old_logprobs is None and lp.seconds_old == 0.0
    assert m_fast["actor/ppo_kl"] == 0.0 and m_fast["actor/pg_clipfrac"] == 0.0  # ratio exactly 1
    slow.module.load_state_dict(fast.module.state_dict())
    lp_slow, _, g_slow, _ = _gradient(slow, s)
    assert lp_slow.old is not None
    assert g_fast.keys() == g_slow.keys() and g_fast
    for name, g in g_fast.items():  # the recomputed old log-probs differ from the update's by rounding only
        assert torch.allclose(g_slow[name], g, atol=atol, rtol=10 * atol), name


@pytest.mark.parametrize("overrides", [
    ["rollout.recompute_logprobs=false"],
    ["train.ppo_epochs=2"],
    ["algo.kl_coef=0.01"],
    ["algo.selection=[{name: tis}]"],
    ["rollout.async_mode=one_step", "rollout.engine_kwargs={weights: copy}"],
])
def test_the_shortcut_is_off_where_old_log_probs_are_needed_before_the_update(tmp_path, overrides):
    assert not _trainer(tmp_path, "run", *overrides).old_in_update


def test_a_batch_larger_than_the_mini_batch_computes_old_log_probs(tmp_path):
    trainer = _trainer(tmp_path, "run", "train.mini_batch_size=8")
    assert trainer.old_in_update  # the batch size is known only once sampled
    s = trainer.collector.collect(0)  # 16 rows: two optimiser steps
    assert trainer.logprobs(s).old is not None
