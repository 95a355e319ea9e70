"""Q♯'s guided policy (``models.guided``): the tilt's formula, its limits, and a causal LM that engines can sample."""

import copy
import math

import pytest
import torch

from rlfold.models.guided import GuidedPolicy, q_star_bonus, zero_value_head
from rlfold.models.loading import load_model_and_tokenizer
from rlfold.models.logprobs import sequence_logprobs
from rlfold.rollout import EngineContext, SamplingParams, requests_for
from rlfold.rollout.hf_engine import HFEngine
from rlfold.tasks import TASKS


def _direct(p: float, eta: float) -> float:
    """Q*/η = log(1 + p (e^{1/η} - 1)) written out (policy.md §23, binary reward)."""
    return math.log(1 + p * (math.exp(1 / eta) - 1))


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("eta", [0.05, 0.25, 1.0, 10.0])
def test_bonus_is_the_binary_reward_soft_value(p, eta):
    z = torch.tensor([math.log(p / (1 - p)) if 0 < p < 1 else (-50.0 if p == 0 else 50.0)], dtype=torch.float64)
    got = float(q_star_bonus(z, eta))
    assert got == pytest.approx(_direct(p, eta), abs=2e-6 * max(1.0, 1 / eta))


def test_worked_numbers_and_limits():
    z = torch.zeros(1)  # p = 1/2
    assert float(q_star_bonus(z, 1.0)) == pytest.approx(math.log(1 + 0.5 * (math.e - 1)), abs=1e-6)  # 0.62011
    assert float(q_star_bonus(z, 1.0)) == pytest.approx(0.620115, abs=1e-6)
    assert float(q_star_bonus(torch.tensor([60.0]), 0.25)) == pytest.approx(4.0, abs=1e-5)  # p = 1: 1/η
    assert float(q_star_bonus(torch.tensor([-60.0]), 0.25)) == pytest.approx(0.0, abs=1e-5)  # p = 0: no bonus
    # η -> inf: the bonus vanishes (π_ref); it is ~p/η there
    assert float(q_star_bonus(torch.tensor([0.0], dtype=torch.float64), 1e6)) == pytest.approx(0.5e-6, rel=1e-3)
    # a tiny η stays finite: log(1/2 + e^{1000}/2) = 1000 + log(1/2)
    assert float(q_star_bonus(torch.tensor([0.0], dtype=torch.float64), 1e-3)) == pytest.approx(1000 + math.log(0.5))
    zs = torch.linspace(-8, 8, 50)
    assert bool((q_star_bonus(zs, 0.3).diff() > 0).all())  # monotone in p
    with pytest.raises(ValueError, match="eta"):
        q_star_bonus(zs, 0.0)


def test_guided_distribution_is_the_reference_tilted_by_exp_q_over_eta():
    """softmax(ref + bonus) = π_ref (1 + p(e^{1/η} - 1)) / Z, the KL-regularised optimum π* of Q♯."""
    g = torch.Generator().manual_seed(0)
    ref_logits, z = torch.randn(5, 11, generator=g, dtype=torch.float64), torch.randn(5, 11, generator=g,
                                                                                      dtype=torch.float64)
    eta = 0.4
    got = torch.softmax(ref_logits + q_star_bonus(z, eta).double(), -1)
    tilt = torch.softmax(ref_logits, -1) * (1 + torch.sigmoid(z) * math.expm1(1 / eta))
    torch.testing.assert_close(got, tilt / tilt.sum(-1, keepdim=True), atol=1e-6, rtol=1e-6)


@pytest.fixture(scope="module")
def models():
    ref, tok = load_model_and_tokenizer("tiny-arith", torch.float64)
    ref.eval().requires_grad_(False)
    value = zero_value_head(copy.deepcopy(ref)).eval()
    return ref, value, tok


def _sample(model, tok, seed=0):
    prompts = TASKS.get("arith")(levels=[2], held_out_size=8).train[:4]
    engine = HFEngine(EngineContext(model=model, tokenizer=tok, model_path="tiny-arith", dtype=torch.float64))
    return engine.generate(requests_for(prompts), SamplingParams(n=3, max_new_tokens=8), seed)


def test_a_zero_value_head_leaves_the_reference(models):
    ref, value, tok = models
    guided = GuidedPolicy(ref, value, 0.25)
    a, b = _sample(guided, tok), _sample(ref, tok)
    assert torch.equal(a.response_ids, b.response_ids)  # the same samples from the same seed
    m = a.response_mask.bool()
    torch.testing.assert_close(a.policy_logprobs[m], b.policy_logprobs[m], atol=1e-6, rtol=0)


def test_cached_guided_sampling_scores_as_the_full_forward(models):
    """The engine's incremental (KV-cached) log-probs of the guided policy equal one full forward of it, and
    both equal log_softmax(ref logits + bonus) computed from the two models directly."""
    ref, value, tok = models
    value = copy.deepcopy(value)
    torch.nn.init.normal_(value.get_output_embeddings().weight, std=0.5, generator=torch.Generator().manual_seed(3))
    guided = GuidedPolicy(ref, value, 0.5)
    roll = _sample(guided, tok, seed=1)
    m = roll.response_mask.bool()
    with torch.no_grad():
        full, _ = sequence_logprobs(guided, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask)
        ids = torch.cat([roll.prompt_ids, roll.response_ids], 1)
        mask = torch.cat([roll.prompt_mask, roll.response_mask], 1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        p0, r = roll.prompt_ids.shape[1], roll.response_ids.shape[1]
        direct = (ref(input_ids=ids, attention_mask=mask, position_ids=pos).logits
                  + q_star_bonus(value(input_ids=ids, attention_mask=mask, position_ids=pos).logits, 0.5))
        direct = torch.log_softmax(direct[:, p0 - 1: p0 + r - 1].float(), -1).gather(
            -1, roll.response_ids[..., None]).squeeze(-1)
        plain, _ = sequence_logprobs(ref, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask)
    torch.testing.assert_close(roll.policy_logprobs[m], full[m], atol=1e-5, rtol=0)
    torch.testing.assert_close(full[m], direct[m], atol=1e-5, rtol=0)
    assert float((full - plain)[m].abs().max()) > 1e-2  # the random head does tilt the policy


def test_eta_below_the_floor_is_refused(models):
    ref, value, _ = models
    with pytest.raises(ValueError, match="eta must be"):
        GuidedPolicy(ref, value, 1e-4)
