"""GRPO through the colocated vLLM engine learns the demo task (runs where vLLM is installed:
``bash scripts/test_vllm_cpu.sh``; skipped by the default test command)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from rlfold.core.config_loader import load_config  # noqa: E402
from rlfold.trainers.loop import build_run  # noqa: E402
from rlfold.trainers.metrics import METRICS_FILE, read_jsonl  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_grpo_through_the_vllm_engine_learns_the_demo_task(tmp_path):
    """The demo recipe for 50 steps with rollout.engine=vllm: weights reach vLLM after every update (the
    rebuild sync on CPU), the trainer recomputes old log-probs and logs the engine mismatch every step, and
    held-out greedy accuracy (evaluated by the hf engine on the trainer's weights) rises by 30+ points."""
    cfg = load_config("src/rlfold/recipes/grpo.yaml", ["rollout.engine=vllm", "train.steps=50", "eval.every=25",
                                                       "checkpoint.every=0", "log.progress=false"])
    run = build_run(cfg, tmp_path / "run")
    assert not run.trainer.engine.shares_weights and run.trainer.recompute
    run.fit()
    rows = read_jsonl(tmp_path / "run" / METRICS_FILE)
    base, final = rows[0]["val/arith/acc"], rows[-1]["val/arith/acc"]
    assert final - base >= 0.3, (base, final)
    train = [r for r in rows if r["step"] > 0]
    assert len(train) == 50 and run.trainer.engine.version == 50
    assert all(r["sampling/sampling_logp_difference/max"] < 1e-3 for r in train)
    assert all(r["timing_s/sync"] > 0 for r in train)


def test_one_vllm_engine_serves_training_and_evaluation(tmp_path):
    """rollout.eval_engine=vllm beside rollout.engine=vllm: one in-process engine does both and takes each
    update once; its held-out accuracy equals the hf engine's on the same weights (greedy)."""
    cfg = load_config("src/rlfold/recipes/grpo.yaml", [
        "rollout.engine=vllm", "rollout.eval_engine=vllm", "train.steps=2", "train.prompts_per_step=4",
        "rollout.n=4", "task.held_out_size=16", "eval.size=16", "checkpoint.every=0", "log.progress=false"])
    run = build_run(cfg, tmp_path / "run")
    t = run.trainer
    assert t.eval_engine is t.engine
    run.fit()
    assert t.engine.version == 2
    rows = read_jsonl(tmp_path / "run" / METRICS_FILE)
    from rlfold.rollout import EngineContext, HFEngine
    from rlfold.trainers.evaluate import evaluate

    hf = HFEngine(EngineContext(t.model, t.tokenizer, cfg.model.path, t.model.dtype))
    ec = cfg.eval
    want = evaluate(hf, t.task.held_out[: ec.size], reward=cfg.accuracy_reward, k=ec.pass_k,
                    max_new_tokens=ec.max_new_tokens or cfg.rollout.max_new_tokens, seed=cfg.seed + 7)
    assert rows[-1]["val/arith/acc"] == want["acc"]
