"""The Q♯ trainer (``trainer: guided_decoding``): roll-in/roll-out labels, the aggregated data, the value loss, resume."""

import json
from pathlib import Path

import pytest
import torch

from rlfold.core.config_loader import load_config
from rlfold.core.errors import DataError
from rlfold.rollout import requests_for
from rlfold.trainers.guided_decoding import AggregatedData, LabelledRows, labelled_positions, value_loss
from rlfold.trainers.loop import build_run

RECIPE = Path(__file__).resolve().parents[2] / "src/rlfold/recipes/q_sharp.yaml"
SMALL = ["train.prompts_per_step=4", "rollout.n=4", "eval.size=8", "eval.pass_k=2", "log.progress=false",
         "checkpoint.every=0", "threads=1"]


def _step(tmp_path, extra=()):
    cfg = load_config(RECIPE, [f"run_dir={tmp_path / 'run'}", "train.steps=2", *SMALL, *extra])
    return build_run(cfg, Path(cfg.run_dir))


def test_labelled_positions_start_at_the_switch():
    got = labelled_positions([0, 2, 3], [4, 4, 3], 5)
    assert got.tolist() == [[1, 1, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]]


def test_aggregated_data_keeps_the_newest_rows_and_round_trips():
    data = AggregatedData(3)
    data.add(LabelledRows([[1], [2]], [[5], [6]], [0, 0], [1.0, 0.0]))
    data.add(LabelledRows([[3], [4]], [[7], [8, 9]], [0, 1], [1.0, 1.0]))
    assert data.rows.prompts == [[2], [3], [4]] and data.rows.labels == [0.0, 1.0, 1.0]
    other = AggregatedData(3)
    other.load_state_dict(data.state_dict())
    assert other.rows == data.rows
    drawn = data.draw(10, torch.Generator().manual_seed(0))
    assert sorted(drawn.prompts) == [[2], [3], [4]]  # all rows once when fewer than asked


def test_collected_rows_are_a_guided_prefix_then_a_reference_suffix(tmp_path):
    run = _step(tmp_path)
    step = run.trainer
    prompts = step.task.train[:6]
    rows, texts, switches = step.collect(prompts, 0)
    limit = step.params.max_new_tokens
    assert len(rows) == 6 and all(len(r) <= limit for r in rows.responses)
    for start, switch, resp in zip(rows.starts, switches, rows.responses):
        assert start == max(switch - 1, 0) and switch <= len(resp)  # labels from the last roll-in token on
    assert set(rows.labels) <= {0.0, 1.0}
    assert texts == [step.tokenizer.decode(r, skip_special_tokens=True) for r in rows.responses]
    assert rows.prompts[0] == step.engine.encode(requests_for(prompts)[0])  # the prompt's ids, unpadded
    run.close()


def test_reference_rollin_labels_every_token(tmp_path):
    run = _step(tmp_path, ["guidance.rollin=reference"])
    rows, _, switches = run.trainer.collect(run.trainer.task.train[:4], 0)
    assert switches == [0, 0, 0, 0] and rows.starts == [0, 0, 0, 0]
    run.close()


def test_a_reward_outside_zero_one_is_a_data_error(tmp_path):
    run = _step(tmp_path, ["rewards=[{name: exact_match, weight: 2.0}]"])
    with pytest.raises(DataError, match=r"must lie in \[0, 1\]"):
        for i in range(20):  # until some row is correct (reward 2)
            run.trainer.collect(run.trainer.task.train[4 * i: 4 * i + 4], i)
    run.close()


def test_value_loss_is_micro_batch_invariant_and_falls(tmp_path):
    run = _step(tmp_path)
    step = run.trainer
    rows, _, _ = step.collect(step.task.train[:8], 0)
    model = step.model.double()
    grads = []
    for micro in (0, 3):
        model.zero_grad(set_to_none=True)
        loss, m = value_loss(model, rows, step.pad_id, micro)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        assert m["value/label_tokens"] > 0
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-10 * float(grads[0].abs().max()), rtol=1e-8)
    assert loss == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-9)  # a zero head: p = 1/2 everywhere
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(15):
        opt.zero_grad(set_to_none=True)
        last, _ = value_loss(model, rows, step.pad_id)
        opt.step()
    assert last < 0.9 * loss  # it fits the labels of a fixed batch
    run.close()


def test_resume_continues_the_same_run(tmp_path):
    straight = _step(tmp_path / "a", ["train.steps=4"]).fit()
    cfg = load_config(RECIPE, [f"run_dir={tmp_path / 'b' / 'run'}", "train.steps=2", "checkpoint.every=1",
                               *[s for s in SMALL if not s.startswith("checkpoint")]])
    build_run(cfg, Path(cfg.run_dir)).fit()
    cfg = load_config(RECIPE, [f"run_dir={tmp_path / 'b' / 'run'}", "train.steps=4", "checkpoint.every=1",
                               *[s for s in SMALL if not s.startswith("checkpoint")]])
    resumed = build_run(cfg, Path(cfg.run_dir), resume=True).fit()
    keys = ("value/loss", "reward/mean", "value/buffer_rows")
    a = {r["step"]: r for r in straight if r["step"] > 2}
    b = {r["step"]: r for r in resumed if r["step"] > 2}
    assert sorted(a) == sorted(b) == [3, 4]
    for s in (3, 4):
        for k in keys:
            assert b[s][k] == pytest.approx(a[s][k], rel=1e-5, abs=1e-7), (s, k)
    assert json.loads((tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4
