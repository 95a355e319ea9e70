"""The embedded tiny model: a standard Qwen2 causal LM with a character-level fast tokenizer."""

from __future__ import annotations

import string

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlfold.models.portable import PreTrainedTokenizerFast, protect_byte_level_rewrites

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARACTERS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]


def build_char_tokenizer(
    characters: list[str] | None = None, words: list[str] | None = None
) -> PreTrainedTokenizerFast:
    """One token per character (default: printable ASCII); ``<bos>`` is prepended, ``<eos>`` ends an answer.

    ``words``: strings that are one token each wherever they occur (matched before the text is split
    into characters, the longest first), e.g. ``"Confidence: 7"`` for a base whose stated confidence
    must not share tokens with the digits of its answer. Saved, it loads the same with plain
    ``AutoTokenizer`` (see :mod:`rlfold.models.portable`)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + (characters or CHARACTERS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    protect_byte_level_rewrites(tok)
    if words:
        tok.add_tokens([AddedToken(w, normalized=False) for w in words])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 384,
    max_positions: int = 128,
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 of about 0.7M parameters sized for CPU RL in minutes."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )
    return Qwen2ForCausalLM(config)
