"""Multi-attempt engine (rewards.md 12b) on the shipped tiny model: attempt structure, masks, exact log-probs."""

from __future__ import annotations

import pytest
import torch

from rlfold.core.errors import ConfigError
from rlfold.core.types import FINISH_LENGTH, FINISH_STOP, Prompt
from rlfold.models import load_model_and_tokenizer
from rlfold.rewards import REWARDS
from rlfold.rewards.calibration import attempt_verifier, split_attempts
from rlfold.rollout import ENGINES, MultiAttemptBatch, MultiAttemptEngine, SamplingParams
from rlfold.rollout.hf_engine import sequence_logprobs

# The shipped tiny-arith tokenizer loads without its space token (spaces are dropped when encoding),
# so these tests use feedback texts without spaces: their ids decode back to exactly the text.
FB = "Wrong!Try_again:"
PROMPTS = ["58+67=", "3+4=", "12+34="]
ANSWERS = ["125", "7", "46"]


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model_and_tokenizer("tiny-arith")
    return model.eval(), tok


def _spans(mask_row: torch.Tensor, length: int) -> list[tuple[int, int]]:
    """[start, end) runs of 0 inside the first ``length`` positions."""
    out, start = [], None
    for j in range(length):
        if mask_row[j] == 0 and start is None:
            start = j
        if mask_row[j] == 1 and start is not None:
            out.append((start, j))
            start = None
    if start is not None:
        out.append((start, length))
    return out


def test_registered():
    assert ENGINES.get("multi_attempt") is MultiAttemptEngine


def test_all_wrong_gives_k_attempts_with_masked_feedback(tiny):
    model, tok = tiny
    k = 3
    eng = MultiAttemptEngine(model, tok, attempts=k, feedback=FB)
    seen: list[tuple[int, str]] = []
    eng.verifier = lambda i, text: seen.append((i, text)) or False
    params = SamplingParams(temperature=1.0, n=2, max_new_tokens=30, seed=0)
    b = eng.generate(PROMPTS, params)
    assert isinstance(b, MultiAttemptBatch) and b.size == 6
    assert b.attempts_used == [k] * 6 and eng.last_attempts == [k] * 6
    assert b.finish_reasons == [FINISH_STOP] * 6
    # the verifier saw attempts 1..k-1 of every row, with the row's prompt index
    assert sorted({i for i, _ in seen}) == [0, 1, 2] and len(seen) == 6 * (k - 1)
    fb_ids = tok(FB, add_special_tokens=False)["input_ids"]
    attn = b.response_attention_mask
    for r in range(6):
        length = int(attn[r].sum())
        assert (attn[r, :length] == 1).all() and (attn[r, length:] == 0).all()
        assert (b.response_mask[r, length:] == 0).all()
        spans = _spans(b.response_mask[r], length)
        assert len(spans) == k - 1
        for s, e in spans:
            assert b.response_ids[r, s:e].tolist() == fb_ids
            assert tok.decode(b.response_ids[r, s:e]) == FB
            assert (b.policy_logprobs[r, s:e] == 0).all() and (b.sample_logprobs[r, s:e] == 0).all()
            assert b.response_ids[r, s - 1] == tok.eos_token_id  # each failed attempt ended with its stop token
        assert b.response_ids[r, length - 1] == tok.eos_token_id
        # the text is attempt 1 + feedback + attempt 2 + ..., and the separators give the count back
        assert b.response_texts[r].count(FB) == k - 1 and len(split_attempts(b.response_texts[r], FB)) == k
        assert b.response_texts[r] == tok.decode(b.response_ids[r, :length], skip_special_tokens=True)
    m = b.response_mask.bool()
    assert (b.policy_logprobs[m] < 0).all()


def test_logprobs_match_a_fresh_forward_with_feedback_in_context(tiny):
    model, tok = tiny
    eng = MultiAttemptEngine(model, tok, attempts=3, feedback=FB, verifier=lambda i, t: False)
    b = eng.generate(PROMPTS, SamplingParams(temperature=1.0, n=2, max_new_tokens=30, seed=1))
    m = b.response_mask.bool()
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_attention_mask)
    assert torch.allclose(b.policy_logprobs[m], logp[m], atol=1e-4)
    assert torch.allclose(b.sample_logprobs[m], b.policy_logprobs[m], atol=1e-5)  # T = 1, no truncation
    # attempts after the first do depend on the feedback context: dropping it changes their log-probs
    with torch.no_grad():
        blind, _ = sequence_logprobs(model, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask)
    assert not torch.allclose(b.policy_logprobs[m], blind[m], atol=1e-3)


def test_all_right_gives_one_attempt_equal_to_the_plain_engine(tiny):
    model, tok = tiny
    eng = MultiAttemptEngine(model, tok, attempts=4, feedback=FB, verifier=lambda i, t: True)
    params = SamplingParams(temperature=1.0, n=2, max_new_tokens=12, seed=5)
    b = eng.generate(PROMPTS, params)
    assert b.attempts_used == [1] * 6 and eng.last_attempts == [1] * 6
    assert all(FB not in t for t in b.response_texts)
    plain = ENGINES.get("hf")(model, tok).generate(PROMPTS, params)
    assert torch.equal(b.response_ids, plain.response_ids) and torch.equal(b.response_mask, plain.response_mask)
    assert torch.allclose(b.policy_logprobs, plain.policy_logprobs)
    assert b.response_texts == plain.response_texts and b.finish_reasons == plain.finish_reasons


def test_reward_and_verifier_agree_with_the_attempt_structure(tiny):
    model, tok = tiny
    eng = MultiAttemptEngine(model, tok, attempts=3, feedback=FB, verifier=attempt_verifier(ANSWERS))
    b = eng.generate(PROMPTS, SamplingParams(temperature=1.0, n=4, max_new_tokens=40, seed=2))
    prompts = [Prompt(p, a) for p, a in zip(PROMPTS, ANSWERS) for _ in range(4)]
    rewards = REWARDS.get("multi_attempt")(prompts, b.response_texts, b.finish_reasons, feedback=FB)
    for r in range(b.size):
        attempts = split_attempts(b.response_texts[r], FB)
        assert len(attempts) == b.attempts_used[r]
        correct = attempts[-1].strip() == prompts[r].answer
        assert rewards[r] == (1.0 if correct else -0.5)  # the tiny model always writes something
        if b.attempts_used[r] < 3:
            assert correct  # stopped early only because an attempt was right
    assert 1.0 in rewards  # the tiny model solves some of these


def test_total_and_per_attempt_token_budgets(tiny):
    model, tok = tiny
    wrong = lambda i, t: False  # noqa: E731 - a one-line verifier
    b = MultiAttemptEngine(model, tok, attempts=5, feedback=FB, verifier=wrong).generate(
        PROMPTS, SamplingParams(n=2, max_new_tokens=6, seed=0))
    assert (b.response_mask.sum(1) <= 6).all()  # sampled tokens of all attempts together
    for r in range(b.size):
        used = int(b.response_mask[r].sum())
        assert used == 6 or b.attempts_used[r] == 5
        if b.finish_reasons[r] == FINISH_LENGTH:
            assert used == 6
    b = MultiAttemptEngine(model, tok, attempts=3, feedback=FB, verifier=wrong, token_budget="per_attempt").generate(
        PROMPTS, SamplingParams(n=2, max_new_tokens=2, ignore_eos=True, seed=0))
    # every first attempt is cut at 2 tokens: the episode ends there
    assert b.attempts_used == [1] * 6 and b.finish_reasons == [FINISH_LENGTH] * 6
    assert (b.response_mask.sum(1) == 2).all()


def test_left_field_and_random_allowance(tiny):
    model, tok = tiny
    fb = "No.{left}left:"
    eng = MultiAttemptEngine(model, tok, attempts=4, min_attempts=1, feedback=fb, verifier=lambda i, t: False)
    prompts = PROMPTS * 4
    b = eng.generate(prompts, SamplingParams(n=3, max_new_tokens=40, seed=3))
    per_prompt = [b.attempts_used[3 * i : 3 * i + 3] for i in range(len(prompts))]
    assert all(len(set(x)) == 1 and 1 <= x[0] <= 4 for x in per_prompt)  # one allowance per prompt
    assert len({x[0] for x in per_prompt}) > 1
    for r in range(b.size):
        k = b.attempts_used[r]
        for left in range(k - 1, 0, -1):
            assert f"No.{left}left:" in b.response_texts[r]
        assert len(split_attempts(b.response_texts[r], fb)) == k
    again = eng.generate(prompts, SamplingParams(n=3, max_new_tokens=40, seed=3))
    assert again.attempts_used == b.attempts_used and torch.equal(again.response_ids, b.response_ids)


def test_configuration_errors(tiny):
    model, tok = tiny
    eng = MultiAttemptEngine(model, tok, feedback=FB)
    with pytest.raises(ConfigError, match="no verifier set"):
        eng.generate(PROMPTS, SamplingParams())
    with pytest.raises(ConfigError):
        MultiAttemptEngine(model, tok, attempts=0, feedback=FB)
    with pytest.raises(ConfigError):
        MultiAttemptEngine(model, tok, attempts=2, min_attempts=3, feedback=FB)
    with pytest.raises(ConfigError):
        MultiAttemptEngine(model, tok, token_budget="tokens", feedback=FB)
    with pytest.raises(ConfigError):
        MultiAttemptEngine(model, tok, feedback="")


def test_feedback_that_does_not_round_trip_is_warned_and_kept_verbatim_in_texts(tiny):
    model, tok = tiny
    feedback = "Wrong \u00e9, try again: "  # the character-level vocabulary has no e-acute
    with pytest.warns(UserWarning, match="round trip"):
        eng = MultiAttemptEngine(model, tok, attempts=2, feedback=feedback, verifier=lambda i, t: False)
    b = eng.generate(PROMPTS[:1], SamplingParams(n=1, max_new_tokens=20, seed=0))
    assert b.attempts_used == [2]
    assert b.response_texts[0].count(feedback) == 1  # the text keeps the configured feedback verbatim
    s, e = _spans(b.response_mask[0], int(b.response_attention_mask[0].sum()))[0]
    assert b.response_ids[0, s:e].tolist() == tok(feedback, add_special_tokens=False)["input_ids"]


def test_default_feedback_round_trips_through_the_shipped_tokenizer(tiny):
    import warnings

    model, tok = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MultiAttemptEngine(model, tok, attempts=2, verifier=lambda i, t: False)
