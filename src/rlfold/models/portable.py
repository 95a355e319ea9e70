"""Saved tokenizers that plain ``transformers.AutoTokenizer`` loads exactly as rlfold does.

Two things break that for a custom ``tokenizers`` pipeline such as the character-level tokenizer of the
shipped models (a ``qwen2`` model type):

* transformers 5 saves its generic fast tokenizer as ``tokenizer_class: TokenizersBackend``, a name
  transformers 4 does not know. :class:`PreTrainedTokenizerFast` here saves as ``PreTrainedTokenizerFast``,
  the name every release resolves to "the pipeline in tokenizer.json".
* transformers 5 ignores ``tokenizer_class`` for some model types (``qwen2`` among them): AutoTokenizer
  builds the model type's own class (``Qwen2Tokenizer``), which keeps tokenizer.json's vocabulary, added
  tokens and post-processor but replaces the rest by a byte-level BPE pipeline. That pipeline writes a
  space as ``Ġ`` and a newline as ``Ċ``; a vocabulary holding ``" "`` and ``"\\n"`` instead loses them
  (``'58+67=125. check 125.'`` -> ``'58+67=125.check125.'``). :func:`protect_byte_level_rewrites` makes
  such characters added tokens (same ids), which both pipelines match before anything else runs.

What still differs under that substitution: a character outside the vocabulary encodes to ``<unk>`` with
the saved pipeline and to nothing with the byte-level one (decoded text without special tokens agrees).
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, pre_tokenizers
from transformers import PreTrainedTokenizerFast as _HFFast

if _HFFast.__name__ == "PreTrainedTokenizerFast":  # pragma: no cover - transformers 4: saves as itself
    PreTrainedTokenizerFast = _HFFast
else:

    class PreTrainedTokenizerFast(_HFFast):
        """transformers 5's ``TokenizersBackend`` (its ``PreTrainedTokenizerFast`` is an alias), saved under the
        portable name ``tokenizer_class: PreTrainedTokenizerFast`` instead of ``TokenizersBackend``."""

        @property
        def can_save_slow_tokenizer(self) -> bool:
            # A generic tokenizers pipeline has no slow counterpart; saving also keeps "Fast" in the class name.
            return False


_BYTE_LEVEL = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)


def byte_level_rewrites(backend: Tokenizer) -> list[str]:
    """Single-character vocabulary entries that a byte-level pipeline spells differently (``" "``, ``"\\n"``)."""
    return sorted(tok for tok in backend.get_vocab(with_added_tokens=False)
                  if len(tok) == 1 and _BYTE_LEVEL.pre_tokenize_str(tok)[0][0] != tok)


def protect_byte_level_rewrites(backend: Tokenizer) -> list[str]:
    """Make each of :func:`byte_level_rewrites` a (non-special, unnormalised) added token; ids do not change.

    Encoding with ``backend`` itself is unchanged (an added token is matched first and maps to its own
    vocabulary id). Returns the characters that were not added tokens yet."""
    have = {t.content for t in backend.get_added_tokens_decoder().values()}
    new = [c for c in byte_level_rewrites(backend) if c not in have]
    ids = {c: backend.token_to_id(c) for c in new}
    backend.add_tokens([AddedToken(c, single_word=False, lstrip=False, rstrip=False, normalized=False, special=False)
                        for c in new])
    assert all(backend.token_to_id(c) == i for c, i in ids.items()), "added tokens must keep their vocabulary ids"
    return new
