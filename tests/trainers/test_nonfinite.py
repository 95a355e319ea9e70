"""NaN/inf loss: the step is skipped and counted; 3 in a row stop the run before a checkpoint is overwritten."""

from pathlib import Path

import pytest
import torch

from rlfold.algos import POLICY_LOSSES
from rlfold.algos.policy_losses import ppo_clip
from rlfold.core.config_loader import load_config
from rlfold.core.errors import NumericalError
from rlfold.trainers import checkpoint as ckpt
from rlfold.trainers.metrics import read_jsonl
from rlfold.trainers.loop import Run, build_run

RECIPE = Path(__file__).resolve().parents[2] / "src/rlfold/recipes/grpo.yaml"
NAN_STEPS: set[int] = set()
CALLS = {"n": 0}


def _nan_on_some_steps(logprobs, old_logprobs, advantages, mask, **kw):
    """ppo_clip that returns NaN on the update calls listed in NAN_STEPS (test helper)."""
    CALLS["n"] += 1
    loss, metrics = ppo_clip(logprobs, old_logprobs, advantages, mask, **kw)
    if CALLS["n"] in NAN_STEPS:
        loss = loss * float("nan")
    return loss, metrics


@pytest.fixture(autouse=True)
def nan_loss_part():
    """Register the NaN-injecting loss for these tests only, so registry-wide tests never see it."""
    POLICY_LOSSES.register("_test_nan_loss")(_nan_on_some_steps)
    yield
    POLICY_LOSSES.unregister("_test_nan_loss")


def _run(run_dir: Path, steps: int) -> Run:
    cfg = load_config(RECIPE, [
        f"train.steps={steps}", "checkpoint.every=1", "checkpoint.keep=10", "log.progress=false",
        "algo.policy_loss=_test_nan_loss", "task.held_out_size=8", "eval.size=8", "train.prompts_per_step=4",
        "rollout.n=2",
    ])
    return build_run(cfg, run_dir)


def test_single_nan_step_is_skipped_and_counted(tmp_path):
    CALLS["n"] = 0
    NAN_STEPS.clear()
    NAN_STEPS.add(2)  # one micro-batch per step, so call k is step k
    job = _run(tmp_path / "run", steps=4)
    rows = job.fit()
    by_step = {r["step"]: r for r in rows}
    assert by_step[2]["nonfinite_steps"] == 1 and by_step[4]["nonfinite_steps"] == 1
    assert "actor/grad_norm" not in by_step[2] and "actor/grad_norm" in by_step[3]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step_0000004"


def test_three_nan_steps_in_a_row_stop_before_overwriting_checkpoints(tmp_path):
    CALLS["n"] = 0
    NAN_STEPS.clear()
    NAN_STEPS.update({3, 4, 5, 6, 7})
    run = tmp_path / "run"
    job = _run(run, steps=8)
    before = None
    with pytest.raises(NumericalError, match="non-finite for 3 steps in a row"):
        job.fit()
    latest = ckpt.latest_checkpoint(run)
    assert latest is not None and latest.name == "step_0000002"
    before = {k: v.clone() for k, v in job.trainer.model.state_dict().items()}
    # The parameters did not move during the skipped steps, and the checkpoint holds them.
    from safetensors.torch import load_file

    saved = load_file(latest / "model.safetensors")
    for k, v in saved.items():
        assert torch.equal(v, before[k])
    assert not (run / "final").exists()
    assert [r["nonfinite_steps"] for r in read_jsonl(run / "metrics.jsonl") if r["step"] > 0] == [0, 0, 1, 2, 3]


def test_nan_on_the_last_step_still_saves_the_final_policy(tmp_path):
    CALLS["n"] = 0
    NAN_STEPS.clear()
    NAN_STEPS.add(3)
    job = _run(tmp_path / "run", steps=3)
    rows = job.fit()
    assert rows[-1]["nonfinite_steps"] == 1
    # the skipped step left the parameters as they were after step 2, and those are what is saved
    from safetensors.torch import load_file

    final = load_file(tmp_path / "run" / "final" / "model.safetensors")
    step2 = load_file(tmp_path / "run" / "checkpoints" / "step_0000002" / "model.safetensors")
    assert all(torch.equal(final[k], step2[k]) for k in final)
