"""Multi-attempt rollouts through the trainer: feedback tokens are attended to but not trained on."""

import pytest

from rlfold.cli import RECIPES_DIR
from rlfold.core.config_loader import load_config
from rlfold.trainers.online import OnlineTrainer


def test_trainer_log_probs_of_multi_attempt_rows_match_the_engine(tmp_path):
    cfg = load_config(RECIPES_DIR / "multi_attempt.yaml", [
        f"run_dir={tmp_path / 'r'}", "train.steps=1", "train.prompts_per_step=4", "eval.size=8",
        "log.progress=false", "checkpoint.every=0"])
    trainer = OnlineTrainer(cfg, tmp_path / "r")
    engine = trainer.engine
    engine.bind_prompts = lambda prompts: setattr(engine, "verifier", lambda i, text: False)  # every attempt wrong
    s = trainer._sample()
    assert s.roll.response_attention_mask is not None
    feedback_tokens = (s.roll.response_attention_mask - s.roll.response_mask).sum()
    assert feedback_tokens > 0  # second attempts happened, with feedback in between
    res = trainer.train_step()
    # On-policy first step: the trainer's recomputed log-probs equal the engine's only if the
    # feedback tokens are attended to exactly as during generation.
    assert abs(res.metrics["actor/ppo_kl"]) < 1e-5
    assert res.metrics["actor/pg_clipfrac"] == pytest.approx(0.0)
