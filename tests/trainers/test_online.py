"""The online trainer with several epochs, mini-batches and micro-batches, and a KL reference."""

from pathlib import Path

import math

from rlfold.core.config_loader import load_config
from rlfold.trainers.loop import build_run

RECIPE = Path(__file__).resolve().parents[2] / "src/rlfold/recipes/grpo.yaml"


def test_epochs_minibatches_and_kl(tmp_path):
    cfg = load_config(RECIPE, [
        "train.steps=2", "train.prompts_per_step=4", "rollout.n=4", "train.ppo_epochs=2",
        "train.mini_batch_size=8", "train.micro_batch_size=3", "algo.kl_coef=0.05", "algo.kl_estimator=k3",
        "train.lr=1e-3", "train.warmup_steps=2", "train.schedule=cosine", "log.progress=false",
        "task.held_out_size=8", "eval.size=8", "checkpoint.every=1", "checkpoint.keep=1",
    ])
    run = build_run(cfg, tmp_path / "run")
    trainer = run.trainer
    assert trainer.opt_steps_per_step == 4  # 2 epochs x (16 sequences / 8)
    rows = run.fit()
    step1 = rows[1]
    for key in ("actor/pg_loss", "actor/kl", "actor/ppo_kl", "actor/entropy", "actor/grad_norm", "actor/lr"):
        assert math.isfinite(step1[key]), key
    # Later mini-batches see a moved policy: the importance ratio and the KL to the reference leave 0.
    assert step1["actor/ppo_kl"] != 0.0
    assert step1["actor/kl"] > 0.0
    # 4 optimiser steps per RL step, warm-up over the first 2 of them
    assert trainer.scheduler.last_epoch == 8
    assert step1["actor/lr"] < 1e-3
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    # checkpoint.keep=1: older checkpoints are pruned, the newest stays and `latest` names it
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["latest", "step_0000002"]
