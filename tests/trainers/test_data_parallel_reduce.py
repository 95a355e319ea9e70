"""The update stage's one reduction: with the normaliser counts all-reduced, per-rank shards of a
mini-batch give gradients that sum to the full mini-batch's gradient, for every aggregation.

Two "ranks" are simulated in one process: each holds half of the rows, and ``reduce`` is the SUM
an all-reduce would return (the counts of both shards)."""

from __future__ import annotations

import pytest
import torch

from rlfold.algos import ADVANTAGES, AGGREGATIONS, POLICY_LOSSES
from rlfold.models import load_model_and_tokenizer
from rlfold.rollout import ENGINES, EngineContext, SamplingParams, requests_for
from rlfold.tasks import TASKS
from rlfold.trainers.update import PolicyTerm, PreparedBatch, accumulate_loss, mini_batch_normaliser


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer("tiny-arith")
    task = TASKS.get("arith")(held_out_size=8)
    engine = ENGINES.get("hf")(EngineContext(model=model, tokenizer=tok, model_path="tiny-arith",
                                             dtype=torch.float32))
    roll = engine.generate(requests_for(task.train[:4]), SamplingParams(n=4, max_new_tokens=6), 11)
    rewards = torch.arange(roll.size, dtype=torch.float32) % 3
    adv, _ = ADVANTAGES.get("grpo")(rewards, torch.arange(4).repeat_interleave(4), roll.response_mask)
    old = roll.policy_logprobs + 0.2 * torch.randn_like(roll.policy_logprobs) * roll.response_mask
    prep = PreparedBatch(roll=roll, advantages=adv, old_logprobs=old, loss_mask=roll.response_mask.float(), prompts=[])
    return model, prep


def _grad(model, prep, rows, mode, reduce):
    model.zero_grad(set_to_none=True)
    terms = [PolicyTerm(POLICY_LOSSES.get("ppo_clip"), {})]
    _, ok = accumulate_loss(model, prep, rows, 0, terms, AGGREGATIONS.get(mode), max_len=6, reduce=reduce)
    assert ok
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
def test_sharded_gradients_sum_to_the_full_gradient(batch, mode):
    model, prep = batch
    agg = AGGREGATIONS.get(mode)
    rows = torch.arange(prep.size)
    shards = [rows[: prep.size // 2 - 1], rows[prep.size // 2 - 1:]]  # uneven shards
    counts = [torch.tensor(agg.normaliser(prep.loss_mask[s], 6), dtype=torch.float32) for s in shards]
    tokens = [prep.loss_mask[s].sum() for s in shards]

    def all_reduce(t: torch.Tensor) -> torch.Tensor:  # what torch.distributed.all_reduce(SUM) returns
        for mine, total in ((counts, sum(counts)), (tokens, sum(tokens))):
            if any(torch.equal(t, c) for c in mine):
                return total
        raise AssertionError(f"unexpected tensor reduced: {t}")

    full = _grad(model, prep, rows, mode, lambda t: t)
    summed = sum(_grad(model, prep, s, mode, all_reduce) for s in shards)
    assert torch.allclose(full, summed, atol=1e-6, rtol=1e-5), (full - summed).abs().max()
    local = sum(_grad(model, prep, s, mode, lambda t: t) for s in shards)
    if agg.additive:  # without the reduction the shards would each normalise by their own counts
        assert not torch.allclose(full, local, atol=1e-6, rtol=1e-5)


def test_constant_normalisers_are_not_reduced():
    mask = torch.ones(3, 4)
    calls = []
    for name in AGGREGATIONS.names():
        agg = AGGREGATIONS.get(name)
        mini_batch_normaliser(agg, mask, 8, lambda t: calls.append(name) or t)
    assert set(calls) == {n for n in AGGREGATIONS.names() if AGGREGATIONS.get(n).additive}
    assert {"token-sum", "seq-mean-token-sum-norm-verl"} & set(calls) == set()
