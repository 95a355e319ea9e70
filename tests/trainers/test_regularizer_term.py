"""The χ² regulariser term in the real update: micro-batch invariant, and autograd of coef·√χ̂² at the start."""

import pytest
import torch

from rlfold.algos import AGGREGATIONS, REGULARIZERS
from rlfold.models import load_model_and_tokenizer
from rlfold.models.logprobs import sequence_logprobs
from rlfold.rollout import ENGINES, EngineContext, SamplingParams, requests_for
from rlfold.tasks import TASKS
from rlfold.trainers.update import PreparedBatch, RegularizerTerm, accumulate_loss

COEF = 0.3


@pytest.fixture(scope="module")
def setup():
    """In float64, so the gradient equalities hold to ~1e-12 whatever summation order the CPU's kernels pick."""
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer("tiny-arith", torch.float64)
    task = TASKS.get("arith")(held_out_size=8)
    engine = ENGINES.get("hf")(EngineContext(model=model, tokenizer=tok, model_path="tiny-arith",
                                             dtype=torch.float64))
    roll = engine.generate(requests_for(task.train[:5]), SamplingParams(n=4, max_new_tokens=6), 3)
    with torch.no_grad():  # the policy the update starts from, exactly
        old, _ = sequence_logprobs(model, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask)
    gen = torch.Generator().manual_seed(1)
    ref = old - 0.2 * torch.randn(old.shape, generator=gen) * roll.response_mask
    loss_mask = roll.response_mask.float().clone()
    loss_mask[0] = 0.0  # a row without loss tokens: not counted in the batch mean
    prep = PreparedBatch(roll=roll, advantages=torch.zeros_like(old), old_logprobs=old, loss_mask=loss_mask,
                         prompts=[], ref_logprobs=ref)
    return model, prep


def _grads(model, prep, micro):
    term = RegularizerTerm(REGULARIZERS.get("chi2_occupancy")(), COEF)
    model.zero_grad(set_to_none=True)
    sums, ok = accumulate_loss(model, prep, torch.arange(prep.size), micro, [term], AGGREGATIONS.get("token-mean"))
    assert ok
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]), sums


def test_gradient_is_micro_batch_invariant(setup):
    model, prep = setup
    full, sums_full = _grads(model, prep, 0)
    assert full.abs().max() > 0
    tol = 1e-10 * float(full.abs().max())
    for micro in (1, 3, 7):
        g, sums = _grads(model, prep, micro)
        torch.testing.assert_close(g, full, atol=tol, rtol=1e-8)
        for key in ("actor/chi2", "actor/chi2_kl", "actor/chi2_penalty"):
            assert sums[key] == pytest.approx(sums_full[key], rel=1e-5), key


def test_gradient_is_autograd_of_coef_sqrt_chi2_at_the_starting_policy(setup):
    model, prep = setup
    part = REGULARIZERS.get("chi2_occupancy")()
    roll = prep.roll
    model.zero_grad(set_to_none=True)
    logp, _ = sequence_logprobs(model, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask)
    live = prep.loss_mask.sum(-1) > 0
    phi = part.sample_terms(logp, prep.loss_mask, ref_logprobs=prep.ref_logprobs)
    chi2 = phi[live].mean()
    assert float(chi2.detach()) > 1e-4  # above the floor, so the gradient is not zero
    (COEF * part.penalty(chi2)).backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    got, sums = _grads(model, prep, 2)
    # a different composition of the same maths over float32 log-probs (measured ~1.2e-7 of the scale)
    torch.testing.assert_close(got, expected, atol=1e-6 * float(expected.abs().max()), rtol=1e-4)
    assert sums["actor/chi2"] == pytest.approx(float(chi2), rel=1e-5)
    assert sums["actor/chi2_penalty"] == pytest.approx(COEF * float(chi2) ** 0.5, rel=1e-5)
    s = ((logp.detach() - prep.ref_logprobs) * prep.loss_mask).sum(-1)[live]
    assert sums["actor/chi2_kl"] == pytest.approx(float((s + torch.expm1(-s)).mean()), rel=1e-5)
