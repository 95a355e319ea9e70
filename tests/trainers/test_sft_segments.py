"""SFT completions given as (text, trained) segments: observation tokens get loss mask 0, ids are exact."""

from __future__ import annotations

import random

import torch

from rlfold.envs.tool_formats import Doc, SearchR1Format
from rlfold.models.tiny import build_char_tokenizer, build_tiny_model
from rlfold.trainers.sft import encode_completion, encode_pairs, sft_loss, sft_train

OBS = SearchR1Format().observation("search", [Doc("Zorvak", "Zorvak lives in Kimoro.")])
SEGMENTS = [("<search> Zorvak </search>", True), (OBS, False), ("<answer> Kimoro </answer>", True)]


def test_segments_concatenate_to_the_ids_of_the_whole_text():
    tok = build_char_tokenizer()
    whole = "".join(t for t, _ in SEGMENTS)
    ids, mask = encode_completion(tok, SEGMENTS)
    assert ids == tok(whole, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    first, obs = len(SEGMENTS[0][0]), len(OBS)
    assert mask == [1] * first + [0] * obs + [1] * len(SEGMENTS[2][0]) + [1]  # eos trained


def test_string_completion_is_unchanged():
    tok = build_char_tokenizer()
    ids, attn, lm = encode_pairs(tok, [("1+2=", "3"), ("Where does X live?\n", SEGMENTS)])
    p = tok("1+2=")["input_ids"]
    row0 = p + tok("3", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ids[0, : len(row0)].tolist() == row0 and attn[0].sum() == len(row0)
    assert lm[0].tolist()[: len(row0)] == [0] * len(p) + [1, 1] and lm[0, len(row0):].sum() == 0
    prompt1 = tok("Where does X live?\n")["input_ids"]
    c1, m1 = encode_completion(tok, SEGMENTS)
    assert ids[1].tolist() == prompt1 + c1 and lm[1].tolist() == [0] * len(prompt1) + m1


def test_loss_is_the_mean_nll_of_the_trained_targets_only():
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model(tok, max_positions=256)
    ids, attn, lm = encode_pairs(tok, [("Q\n", SEGMENTS)])
    with torch.no_grad():
        loss = sft_loss(model, ids, attn, lm)
        logp = model(input_ids=ids, attention_mask=attn).logits[0, :-1].log_softmax(-1)
    nll = -logp.gather(-1, ids[0, 1:, None])[:, 0]
    n_prompt = len(tok("Q\n")["input_ids"])
    c, m = encode_completion(tok, SEGMENTS)
    trained = [n_prompt + j - 1 for j, k in enumerate(m) if k]  # logits position predicting each trained token
    assert len(trained) == len(SEGMENTS[0][0]) + len(SEGMENTS[2][0]) + 1
    torch.testing.assert_close(loss, nll[trained].mean())


def test_sft_train_accepts_segmented_pairs():
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model(tok, max_positions=256)

    def sample(rng: random.Random, n: int):
        return [("Where does Zorvak live?\n", SEGMENTS) if rng.random() < 0.5
                else ("What is 3+4?\n", "<answer> 7 </answer>") for _ in range(n)]

    losses = sft_train(model, tok, sample, steps=3, batch_size=4, warmup=1, progress=False)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
