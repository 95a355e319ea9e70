"""Multi-attempt rollouts through the trainer: feedback tokens are attended to but not trained on."""

import pytest

import rlfold.envs.multi_attempt as multi_attempt_env
from rlfold.cli import RECIPES_DIR
from rlfold.core.config_loader import load_config
from rlfold.envs import MultiAttemptEnv
from rlfold.rollout import MultiTurnEngine
from rlfold.trainers.loop import build_run


def test_trainer_log_probs_of_multi_attempt_rows_match_the_engine(tmp_path, monkeypatch):
    cfg = load_config(RECIPES_DIR / "multi_attempt.yaml", [
        f"run_dir={tmp_path / 'r'}", "train.steps=1", "train.prompts_per_step=4", "eval.size=8",
        "log.progress=false", "checkpoint.every=0"])
    trainer = build_run(cfg, tmp_path / "r").trainer
    engine = trainer.engine
    assert isinstance(engine, MultiTurnEngine) and isinstance(engine.env, MultiAttemptEnv)
    # every attempt is judged wrong, so every episode that stops in time gets feedback and a second attempt
    monkeypatch.setattr(multi_attempt_env, "attempt_verifier", lambda answers, **kw: (lambda i, text: False))
    s = trainer.collector.collect(0)
    assert s.roll.response_attention_mask is not None
    feedback_tokens = (s.roll.response_attention_mask - s.roll.response_mask).sum()
    assert feedback_tokens > 0  # second attempts happened, with feedback in between
    assert max(s.roll.extras["env/attempts"]) == 2
    res = trainer.step(0)
    # On-policy first step: the trainer's recomputed log-probs equal the engine's only if the
    # feedback tokens are attended to exactly as during generation.
    assert abs(res.metrics["actor/ppo_kl"]) < 1e-5
    assert res.metrics["actor/pg_clipfrac"] == pytest.approx(0.0)
