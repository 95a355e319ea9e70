"""Reward-model heads: the sentence positions of a tokenised completion, each head's score against the
formula on the classifier's per-token outputs, batch independence, and serving a saved directory with the
head it was trained with."""

from __future__ import annotations

import json

import pytest
import torch

from rlfold.core.errors import ConfigError, ModelLoadError
from rlfold.core.registry import REWARD_HEADS
from rlfold.core.types import Prompt
from rlfold.models import load_model_and_tokenizer
from rlfold.rewards.reward_heads import encode, head_of, sentence_positions, token_outputs
from rlfold.rewards.reward_models import RewardModel, clear_reward_model_cache, reward_model
from rlfold.trainers.reward_modeling import build_reward_model, rewards_of

PROMPTS = ["12+3=", "4+4=", "7+70="]
COMPLETIONS = ["15. Yes! ok", "8", "77.\nSo 77."]


@pytest.fixture(scope="module")
def tok():
    _, t = load_model_and_tokenizer("tiny-arith")
    return t


@pytest.fixture(scope="module")
def sentence_model(tok):
    return build_reward_model("tiny-arith", tok, seed=1, head="sentence").eval()


def test_both_heads_are_registered_with_their_output_counts():
    assert {"last_token", "sentence"} <= set(REWARD_HEADS.names())
    assert head_of("last_token").num_labels == 1 and head_of("sentence").num_labels == 2


def test_sentence_positions_are_the_token_before_each_sentence_and_its_last_token(tok):
    # the character tokenizer: <bos> then one token per character, so "12+3=" is positions 1..5 and the
    # completion "15. Yes! ok" positions 6..16; its sentences "15. ", "Yes! ", "ok" are tokens 6-9, 10-14, 15-16
    enc = encode(tok, [p + c for p, c in zip(PROMPTS, COMPLETIONS)], offsets=True)
    starts, ends, mask = sentence_positions(enc["offset_mapping"], enc["attention_mask"], PROMPTS, COMPLETIONS)
    assert starts[0].tolist() == [5, 9, 14] and ends[0].tolist() == [9, 14, 16] and mask[0].all()
    assert (starts[1, 0], ends[1, 0]) == (4, 5) and mask[1].tolist() == [True, False, False]
    # "77.\n" then "So 77.": positions 6-9 and 10-15 after the 5-character prompt
    assert starts[2].tolist()[:2] == [5, 9] and ends[2].tolist()[:2] == [9, 15] and mask[2].tolist()[:2] == [True] * 2


def test_an_empty_completion_is_one_zero_length_sentence_scoring_zero(tok, sentence_model):
    enc = encode(tok, ["5+5="], offsets=True)
    starts, ends, mask = sentence_positions(enc["offset_mapping"], enc["attention_mask"], ["5+5="], [""])
    assert starts.tolist() == [[4]] and ends.tolist() == [[4]] and mask.tolist() == [[True]]
    with torch.no_grad():
        assert float(rewards_of(sentence_model, tok, ["5+5="], [""])[0]) == 0.0


def test_sentence_score_is_the_attention_weighted_sum_of_end_minus_start(tok, sentence_model):
    with torch.no_grad():
        got = rewards_of(sentence_model, tok, PROMPTS, COMPLETIONS)
        for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
            enc = tok(p + c, return_tensors="pt")
            out = token_outputs(sentence_model, enc["input_ids"], enc["attention_mask"])[0].double()  # [T, 2]
            spans = {0: [(5, 9), (9, 14), (14, 16)], 1: [(4, 5)], 2: [(5, 9), (9, 15)]}[i]
            r = torch.stack([out[e, 0] - out[s, 0] for s, e in spans])
            w = torch.softmax(torch.stack([out[e, 1] for _, e in spans]), 0)
            assert float(got[i]) == pytest.approx(float((w * r).sum()), abs=1e-5)
    assert got.std() > 1e-3  # the texts really get different scores


def test_last_token_head_is_the_classifiers_pooled_logit(tok):
    model = build_reward_model("tiny-arith", tok, seed=2).eval()
    with torch.no_grad():
        got = rewards_of(model, tok, PROMPTS, COMPLETIONS)
        for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
            enc = tok(p + c, return_tensors="pt")
            assert float(got[i]) == pytest.approx(float(model(**enc).logits[0, 0]), abs=1e-5)
            per_token = token_outputs(model, enc["input_ids"], enc["attention_mask"])[0, -1, 0]
            assert float(got[i]) == pytest.approx(float(per_token), abs=1e-5)


def test_sentence_scores_do_not_depend_on_the_batch(tok, sentence_model):
    with torch.no_grad():
        batched = rewards_of(sentence_model, tok, PROMPTS, COMPLETIONS)
        alone = torch.cat([rewards_of(sentence_model, tok, [p], [c]) for p, c in zip(PROMPTS, COMPLETIONS)])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_the_bt_gradient_reaches_the_score_layer_through_both_outputs(tok):
    model = build_reward_model("tiny-arith", tok, seed=3, head="sentence")
    r = rewards_of(model, tok, PROMPTS, COMPLETIONS)
    (-torch.nn.functional.logsigmoid(r[0] - r[2])).backward()
    grad = model.score.weight.grad
    assert grad.shape[0] == 2 and bool((grad.abs().sum(1) > 0).all())  # reward row and attention row


def test_a_saved_sentence_rm_is_served_with_its_head(tok, sentence_model, tmp_path):
    sentence_model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["rlfold_reward_head"] == "sentence"
    with torch.no_grad():
        trained = rewards_of(sentence_model, tok, PROMPTS, COMPLETIONS)
    rm = RewardModel(tmp_path, batch_size=2)
    assert rm.head_name == "sentence"
    assert torch.allclose(rm.score_completions(PROMPTS, COMPLETIONS), trained, atol=1e-5)
    clear_reward_model_cache()
    served = reward_model([Prompt(p, "") for p in PROMPTS], COMPLETIONS, ["stop"] * 3, path=str(tmp_path))
    assert served == pytest.approx(trained.tolist(), abs=1e-5)
    clear_reward_model_cache()
    with pytest.raises(ConfigError, match="score_completions"):
        rm.score([p + c for p, c in zip(PROMPTS, COMPLETIONS)])  # whole texts cannot be cut into sentences


def test_a_directory_naming_an_unknown_head_or_the_wrong_output_count_is_refused(tok, tmp_path):
    model = build_reward_model("tiny-arith", tok, seed=1)
    for name, labels, match in (("sentense", 1, "not a registered reward-model head"),
                                ("sentence", 1, "reads 2 output")):
        d = tmp_path / name / str(labels)
        model.config.rlfold_reward_head = name
        model.save_pretrained(d)
        tok.save_pretrained(d)
        with pytest.raises(ModelLoadError, match=match):
            RewardModel(d)
