"""Mapping character positions to response tokens, with tokenizers whose pieces do not add up."""

from __future__ import annotations

import pytest
import torch
from shaping_inputs import make_input, padded_mask, run_part

from rlfold.rewards.text_spans import token_counts


class _SpaceDroppingTokenizer:
    """Word tokens decoded with spaces between them; a lone token decodes without its space."""

    def __init__(self, words: list[str]) -> None:
        self.words = words

    def decode(self, ids, skip_special_tokens=True) -> str:
        return " ".join(self.words[i] for i in ids)


def test_token_counts_fallbacks() -> None:
    words = ["So", "x", "is", "42.", "Then", "more", "words"]
    tok = _SpaceDroppingTokenizer(words)
    text = " ".join(words)
    ids = list(range(len(words)))
    # pieces do not concatenate to the text -> binary search on decoded prefixes
    assert token_counts(text, ids, 7, tok, [0, 1, 2, 3, 11, 12, len(text)]) == [0, 1, 1, 2, 4, 5, 7]
    # no tokenizer: one char per token, proportional when there are fewer tokens than characters
    assert token_counts("abcd", None, 5, None, [0, 2, 4]) == [0, 2, 4]
    assert token_counts("abcdefgh", None, 4, None, [0, 1, 4, 8]) == [0, 1, 2, 4]
    texts = [text]
    inp = make_input(texts, "42", [1], lengths=[7], max_len=70, mask=padded_mask([7]),
               response_ids=torch.tensor([ids]), tokenizer=tok)
    tr = run_part("decs", inp, detector_options={"separators": (".",)}).token_rewards[0]
    assert tr.tolist() == pytest.approx([1.1] * 4 + [0.99] * 3)
