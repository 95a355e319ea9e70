"""Text inputs of the online step: where each response token ends in the decoded response."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rlfold.models import load_model_and_tokenizer
from rlfold.trainers.inputs import take_rows, token_char_ends


def _right_padded(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows) + 2
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def _prefix_lengths(tok, row: list[int]) -> list[int]:
    return [len(tok.decode(row[: t + 1], skip_special_tokens=True)) for t in range(len(row))]


def test_char_tokenizer_ends_count_characters_and_skip_the_stop_token() -> None:
    _, tok = load_model_and_tokenizer("tiny-confidence-arith")
    texts = ["Answer: 12, Confidence: 8", "Answer: 3"]
    rows = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    ids, mask = _right_padded(rows)
    ends = token_char_ends(tok, ids, mask)
    for i, (t, r) in enumerate(zip(texts, rows)):
        assert ends[i, : len(r)].tolist() == _prefix_lengths(tok, r)
        assert ends[i, len(r) - 1] == len(t)           # the stop token adds no character
        assert (ends[i, len(r):] == len(t)).all()      # padding repeats the last end


def _byte_bpe() -> PreTrainedTokenizerFast:
    """A small byte-level BPE (GPT-2 style: spaces glued to words, characters split over bytes)."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = ["the answer is twelve, confidence: eight", "café naïve résumé — ünïcödé", "température 37°C"] * 20
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")


def test_byte_level_bpe_ends_match_prefix_decoding_at_character_boundaries() -> None:
    tok = _byte_bpe()
    texts = ["the answer is twelve, confidence: eight", "naïve café — 37°C, confidence: ünï"]
    rows = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    assert any(len(r) > len(t.split()) + 3 for t, r in zip(texts, rows))  # words span several tokens
    ids, mask = _right_padded(rows, pad=tok.eos_token_id)
    ends = token_char_ends(tok, ids, mask)
    for i, (t, r) in enumerate(zip(texts, rows)):
        prefix = _prefix_lengths(tok, r)
        whole = [k for k in range(len(r)) if "\ufffd" not in tok.decode(r[: k + 1])]
        assert [ends[i, k].item() for k in whole] == [prefix[k] for k in whole]
        assert ends[i, len(r) - 1] == len(t)
        assert all(a <= b for a, b in zip(ends[i].tolist(), ends[i, 1:].tolist()))


def test_take_rows_indexes_tensors_and_picks_list_entries() -> None:
    out = take_rows({"t": torch.tensor([10, 11, 12]), "texts": ["a", "b", "c"]}, torch.tensor([2, 0, 2]))
    assert out["t"].tolist() == [12, 10, 12]
    assert out["texts"] == ["c", "a", "c"]
