"""Shaping parts in the online loop: order, per-token rewards, state in checkpoints; unscorable rows do not train."""

import json

import pytest
import torch

from rlfold.core.config_loader import load_config
from rlfold.core.errors import ConfigError
from rlfold.core.registry import needs
from rlfold.algos import ADVANTAGES
from rlfold.rewards import REWARDS, SHAPINGS, Shaped
from rlfold.trainers.loop import build_run

SMALL = ["train.prompts_per_step=4", "rollout.n=4", "eval.size=8", "log.progress=false", "task.held_out_size=8"]


@pytest.fixture
def parts():
    @SHAPINGS.register("t_count_and_add")
    def count_and_add(inp, *, state, bonus: float = 1.0):
        """Adds ``bonus`` and counts the batches it saw in its state (test)."""
        state["batches"] = state.get("batches", 0) + 1
        return Shaped(scores=inp.scores + bonus, metrics={"shaping/t/batches": float(state["batches"])})

    @SHAPINGS.register("t_token_ones")
    def token_ones(inp, *, state):
        """Per-token reward 1 on every valid token; score = number of tokens (test)."""
        return Shaped(scores=inp.lengths.float(), token_rewards=inp.response_mask.float())

    @REWARDS.register("t_none_first_row")
    def none_first(prompts, completions, finishes):
        """None on the first row of the batch, 1 elsewhere (test)."""
        return [None] + [1.0] * (len(completions) - 1)

    @ADVANTAGES.register("t_spy")
    @needs("token_rewards")
    def spy(rewards, group_ids, response_mask, *, token_rewards):
        """Records its inputs; advantage 1 on every token (test)."""
        spy.seen = (rewards.clone(), token_rewards.clone(), response_mask.clone())
        return response_mask.float(), {}

    yield spy
    for reg, name in ((SHAPINGS, "t_count_and_add"), (SHAPINGS, "t_token_ones"), (REWARDS, "t_none_first_row"),
                      (ADVANTAGES, "t_spy")):
        reg.unregister(name)


def test_shaping_parts_apply_in_order_and_their_state_is_checkpointed(parts, tmp_path):
    run = tmp_path / "run"
    over = [*SMALL, f"run_dir={run}", "train.steps=2", "checkpoint.every=1", "algo.advantage=t_spy",
            "algo.advantage_kwargs={}", "shaping=[{name: t_token_ones}, {name: t_count_and_add, kwargs: {bonus: 0.5}}]"]
    job = build_run(load_config(None, over), run)
    job.fit()
    rewards, token_rewards, mask = parts.seen
    # t_token_ones: score = length; then +0.5; the later part gave no token rewards, so the score sits on the last token
    torch.testing.assert_close(rewards, mask.sum(1).float() + 0.5)
    torch.testing.assert_close(token_rewards.sum(1), rewards)
    assert job.trainer.collector.scorer.shaping_state[1]["batches"] == 2
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["shaping/t/batches"] == 2.0
    resumed = build_run(load_config(None, [*over, "train.steps=3"]), run, resume=True)
    assert resumed.trainer.collector.scorer.shaping_state[1]["batches"] == 2
    with pytest.raises(ConfigError):  # unknown option of a shaping part is a config error
        load_config(None, [*SMALL, "shaping=[{name: t_count_and_add, kwargs: {bonuss: 1}}]"])


def test_token_rewards_of_a_shaping_part_reach_the_advantage(parts, tmp_path):
    over = [*SMALL, f"run_dir={tmp_path / 'r'}", "train.steps=1", "algo.advantage=t_spy", "algo.advantage_kwargs={}",
            "shaping=[{name: t_token_ones}]"]
    build_run(load_config(None, over), tmp_path / "r").fit()
    _, token_rewards, mask = parts.seen
    torch.testing.assert_close(token_rewards, mask.float())


def test_unscorable_rows_are_left_out_of_the_loss(parts, tmp_path):
    over = [*SMALL, f"run_dir={tmp_path / 'u'}", "train.steps=1", "rewards=[{name: t_none_first_row}]"]
    trainer = build_run(load_config(None, over), tmp_path / "u").trainer
    s = trainer.collector.collect(0)
    assert s.unscorable[0] and not s.unscorable[1:].any()
    # the unscorable row holds its group's mean (1.0), so it does not shift the others' baseline
    assert s.scores[0].item() == 1.0
    seen = {}
    original = trainer.select

    def spy_select(ctx, sampled, logprobs, rewards, adv, index):
        prep, metrics = original(ctx, sampled, logprobs, rewards, adv, index)
        seen["mask"], seen["rows"] = prep.loss_mask.clone(), prep.rows.clone()
        return prep, metrics

    trainer.select = spy_select
    res = trainer.step(0)
    assert res.metrics["reward/unscorable_frac"] == pytest.approx(1 / 16)
    assert seen["rows"].tolist() == list(range(16))  # no selection part: every row is prepared
    assert seen["mask"][0].sum() == 0 and seen["mask"][1:].sum(1).min() > 0
