"""Saved tokenizers load the same with plain ``AutoTokenizer`` (TRL, vLLM, evaluation harnesses) as with rlfold."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from rlfold.models.loading import ASSETS, load_model_and_tokenizer
from rlfold.models.portable import byte_level_rewrites
from rlfold.models.tiny import CHARACTERS, build_char_tokenizer, build_tiny_model
from rlfold.trainers.checkpoint import save_pretrained_atomic

SHIPPED = ["tiny-arith", "tiny-confidence-arith", "tiny-graded-verbose-arith", "tiny-search", "tiny-verbose-arith"]
TEXTS = [
    "58+67=125. check 125.",
    " leading, double  spaces and a trailing one ",
    "two\nlines\n\nand a blank one",
    "".join(CHARACTERS),  # the whole vocabulary: printable ASCII, space and newline included
    "".join(reversed(CHARACTERS)),
    "<bos>12+34=<eos> after<pad>",
]
# The ids the shipped models were trained with (the tokenizer files' vocabulary is unchanged).
PINNED = {"58+67=125. check 125.": [1, 9, 12, 76, 10, 11, 84, 5, 6, 9, 79, 98, 16, 21, 18, 16, 24, 98, 5, 6, 9, 79],
          "1\n2": [1, 5, 99, 6]}


def _assert_same(plain, ours, texts=TEXTS) -> None:
    for text in texts:
        ids = ours(text)["input_ids"]
        assert plain(text)["input_ids"] == ids, text
        assert plain(text, add_special_tokens=False)["input_ids"] == ours(text, add_special_tokens=False)["input_ids"]
        for skip in (True, False):
            assert plain.decode(ids, skip_special_tokens=skip) == ours.decode(ids, skip_special_tokens=skip), text
    assert ours.decode(ours(texts[0])["input_ids"], skip_special_tokens=True) == texts[0]
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id", "padding_side"):
        assert getattr(plain, name) == getattr(ours, name), name
    assert len(plain) == len(ours)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_tokenizer_is_portable(name):
    plain = AutoTokenizer.from_pretrained(ASSETS / name, local_files_only=True)
    _, ours = load_model_and_tokenizer(name)
    _assert_same(plain, ours)
    for text, ids in PINNED.items():
        assert ours(text)["input_ids"] == ids and plain(text)["input_ids"] == ids
    cfg = json.loads((ASSETS / name / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"  # a name transformers 4 knows too


def test_directory_saved_by_rlfold_is_portable(tmp_path):
    """A ``final/``-like directory written by ``save_pretrained_atomic`` from the loaded shipped model."""
    model, tok = load_model_and_tokenizer("tiny-arith")
    final = tmp_path / "final"
    save_pretrained_atomic(model, tok, final)
    assert json.loads((final / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    plain = AutoTokenizer.from_pretrained(final, local_files_only=True)
    _, ours = load_model_and_tokenizer(str(final))
    _assert_same(plain, ours)
    _assert_same(ours, tok)  # and the same as the tokenizer it was saved from
    for text, ids in PINNED.items():
        assert plain(text)["input_ids"] == ids


def test_built_char_tokenizer_is_portable(tmp_path):
    """``build_char_tokenizer`` (build scripts, tests) with a custom character set, saved with a tiny model."""
    chars = list("0123456789+= abxy\n")
    tok = build_char_tokenizer(chars)
    assert byte_level_rewrites(tok.backend_tokenizer) == ["\n", " "]
    build_tiny_model(tok, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=16) \
        .save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    plain = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    _, ours = load_model_and_tokenizer(str(tmp_path))
    _assert_same(plain, ours, ["1+2= 3", "ab  xy\n12", " 0 ", "x\n\ny"])
    _assert_same(ours, tok, ["1+2= 3", "ab  xy\n12", " 0 ", "x\n\ny"])


def test_characters_outside_the_vocabulary_decode_the_same():
    """The one known difference: transformers 5 substitutes a byte-level pipeline for a ``qwen2`` model type,
    which drops a character the vocabulary lacks where rlfold's (the saved) pipeline writes ``<unk>``; the
    text decoded without special tokens agrees."""
    plain = AutoTokenizer.from_pretrained(ASSETS / "tiny-arith", local_files_only=True)
    _, ours = load_model_and_tokenizer("tiny-arith")
    text = "caf\u00e9 \t 1+1=2"
    assert ours(text)["input_ids"].count(ours.unk_token_id) == 2
    dec = lambda t: t.decode(t(text)["input_ids"], skip_special_tokens=True)  # noqa: E731
    assert dec(plain) == dec(ours) == "caf  1+1=2"


def test_words_are_one_token_each_longest_first_and_survive_a_plain_load(tmp_path):
    from rlfold.tasks.confidence_arith import CONFIDENCE_WORDS

    ours = build_char_tokenizer(words=CONFIDENCE_WORDS)
    assert len(ours) == len(build_char_tokenizer()) + 11
    text = "123+456=? (confidence 0-10) Answer: 579, Confidence: 10"
    ids = ours(text, add_special_tokens=False)["input_ids"]
    assert ours.convert_ids_to_tokens(ids[-1]) == "Confidence: 10"  # not "Confidence: 1" then "0"
    assert ours.convert_ids_to_tokens(ids[:3]) == ["1", "2", "3"]  # the digits stay characters
    assert "Confidence: 7" in ours.convert_ids_to_tokens(ours("Confidence: 7")["input_ids"])
    # the ids of the characters are those of the plain character tokenizer
    assert ours("58+67=125.")["input_ids"] == build_char_tokenizer()("58+67=125.")["input_ids"]
    ours.save_pretrained(tmp_path)
    _assert_same(AutoTokenizer.from_pretrained(tmp_path), ours, TEXTS + [text, "Confidence: 0, Confidence: 5"])
