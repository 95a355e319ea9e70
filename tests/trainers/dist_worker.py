"""Worker of tests/trainers/test_distributed.py, run under ``python -m torch.distributed.run``.

``dist_worker.py OUT`` does both checks in one launch:

- for grpo and reinforce_pp, the driver stage of one step on every rank, then the update of that
  same global batch under single / ddp / fsdp2; the gradient each update hands its optimiser
  (flattened, gathered) is saved by rank 0 to ``OUT/grads.pt``;
- for ddp and fsdp2, a 4-step grpo run (``OUT/STRATEGY/full``) and a 2-step run resumed to 4 steps
  from its sharded checkpoint (``OUT/STRATEGY/cut``), under ``rlfold.trainers.loop.build_run``; the
  test compares the two run directories. The FSDP2 runs use an hf engine with its own weights copy,
  so the gathered weights reach an engine after every update.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from rlfold.core.config_loader import load_config
from rlfold.cli import resolve_recipe
from rlfold.trainers import distributed
from rlfold.trainers.online import OnlineStep

SMALL = ["rollout.max_new_tokens=6", "train.micro_batch_size=2", "train.grad_clip=1.0e9", "eval.size=4",
         "log.progress=false", "task.held_out_size=8"]
# even: 8 rows, each rank's micro-batches are the single process's; uneven: 9 rows, 5 + 4 per rank, one
# rank pads a zero-mask micro-batch, and the micro-batches differ from the single process's (padding widths)
LAYOUTS = {"even": ["train.prompts_per_step=4", "rollout.n=2"], "uneven": ["train.prompts_per_step=3", "rollout.n=3"]}


def config(recipe: str, strategy: str, extra: list[str] = (), layout: str = "uneven"):  # type: ignore[assignment]
    return load_config(resolve_recipe(recipe), [*SMALL, *LAYOUTS[layout], f"train.strategy={strategy}", *extra])


def flat_grads(step: OnlineStep) -> list[torch.Tensor]:
    """The gradients the optimiser is about to apply, captured by a step pre-hook (gathered under FSDP2)."""
    from torch.distributed.tensor import DTensor

    seen: list[torch.Tensor] = []

    def hook(opt, args, kwargs):
        g = [p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad for p in step.trainable]
        seen.append(torch.cat([x.detach().flatten().cpu() for x in g]))

    step.optimizer.register_step_pre_hook(hook)
    return seen


def driver(step: OnlineStep, index: int = 0):
    """Stages 1-5 of ``OnlineStep.step``: the prepared batch of step ``index``."""
    from rlfold.trainers.inputs import StepContext

    s = step.collector.collect(index)
    lp = step.logprobs(s)
    rewards, token_rewards, _, _ = step.kl_stage(s, lp)
    ctx = StepContext(step=index, prompts=s.prompts, roll=s.roll, scores=s.scores, rewards=rewards,
                      token_rewards=token_rewards, group_ids=s.group_ids, collector=step.collector, critic=step.critic,
                      tokenizer=step.tokenizer)
    adv, _ = step.advantage(ctx)
    prep, _ = step.select(ctx, s, lp, rewards, adv, index)
    return prep


def grads(out: Path) -> None:
    result: dict[str, dict[str, torch.Tensor]] = {}
    for recipe, layout in ((r, lay) for r in ("grpo", "reinforce_pp") for lay in LAYOUTS):
        ref = OnlineStep(config(recipe, "single", layout=layout))
        prep = driver(ref)
        seen = flat_grads(ref)
        stats = ref.update(prep)
        key = f"{recipe}/{layout}"
        result[key] = {"single": seen[0], "single_pg_loss": torch.tensor(stats.metrics["actor/pg_loss"])}
        for strategy in ("ddp", "fsdp2"):
            step = OnlineStep(config(recipe, strategy, layout=layout))
            own = driver(step)  # the identical driver on every rank: the same global batch
            result[key][f"{strategy}_same_batch"] = torch.tensor(float(
                torch.equal(own.advantages, prep.advantages) and torch.equal(own.loss_mask, prep.loss_mask)))
            seen = flat_grads(step)
            stats = step.update(prep)
            result[key][strategy] = seen[0]
            result[key][f"{strategy}_pg_loss"] = torch.tensor(stats.metrics["actor/pg_loss"])
    if distributed.current().is_main:
        torch.save(result, out / "grads.pt")


def train(out: Path, strategy: str) -> None:
    from rlfold.trainers.loop import build_run

    # under FSDP2 the engine samples with weights of its own: sync_weights gathers the DTensors
    engine = ["rollout.engine_kwargs={weights: copy}"] if strategy == "fsdp2" else []
    extra = ["train.steps=4", "checkpoint.every=2", "eval.every=2", *engine]
    build_run(config("grpo", strategy, [*extra, f"run_dir={out / 'full'}"]), out / "full").fit()
    build_run(config("grpo", strategy, ["train.steps=2", "checkpoint.every=2", "eval.every=2", *engine,
                                        f"run_dir={out / 'cut'}"]), out / "cut").fit()
    build_run(config("grpo", strategy, [*extra, f"run_dir={out / 'cut'}"]), out / "cut", resume=True).fit()


if __name__ == "__main__":
    where = Path(sys.argv[1])
    grads(where)
    for name in ("ddp", "fsdp2"):
        train(where / name, name)
    distributed.shutdown()
