"""Text spans of a completion and the response tokens that cover them, for shaping parts that reward
parts of a response differently.

* A ``<think> ... </think>`` segment is recognised when the completion contains the closing tag: it
  runs from just after the first ``<think>`` before that tag (or from the start of the completion
  when the chat template opened ``<think>`` in the prompt) to the start of the first ``</think>``;
  without the closing tag the whole completion is the thinking segment (``think_span``).
* ``split_sentences`` cuts a text into sentence spans.
* ``token_counts`` maps character positions to response-token counts.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["split_sentences", "think_span", "token_counts"]


def think_span(text: str, think_tags: Sequence[str] | None = ("<think>", "</think>")) -> tuple[int, int]:
    """Character span ``[start, end)`` of the thinking segment (the whole text without a closing tag)."""
    if not think_tags:
        return 0, len(text)
    open_tag, close_tag = think_tags
    end = text.find(close_tag)
    if end < 0:
        return 0, len(text)
    opened = text.find(open_tag)
    start = opened + len(open_tag) if 0 <= opened and opened + len(open_tag) <= end else 0
    return start, end


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def token_counts(text: str, ids: Sequence[int] | None, n_tokens: int, tokenizer: Any,
                 positions: Sequence[int]) -> list[int]:
    """For each character position p of ``text``: the number of response tokens that start before p.

    Tokens ``0 .. count-1`` therefore cover the characters ``[0, p)`` (a token straddling p counts).

    * With a tokenizer and the row's token ids: decode the tokens one by one (special tokens decode
      to "") and accumulate their lengths into start offsets. When the pieces do not concatenate to
      ``text`` (SentencePiece drops leading spaces of lone tokens, byte-level BPE splits multi-byte
      characters), fall back to a binary search on the length of the decoded prefix ``ids[:k]``:
      count(p) = the smallest k with len(decode(ids[:k])) >= p.
    * Without a tokenizer (unit tests): one character per token, as with the character-level
      tokenizer of ``rlfold.models.tiny`` (tokens beyond the text, e.g. a stop token, come after
      every character); if the row has fewer tokens than characters, positions scale
      proportionally: count(p) = ceil(p * n_tokens / len(text)).
    """
    n_chars = len(text)
    if tokenizer is not None and ids is not None and len(ids) == n_tokens and n_tokens:
        ids = [int(t) for t in ids]
        pieces = (tokenizer.batch_decode([[t] for t in ids], skip_special_tokens=True)
                  if hasattr(tokenizer, "batch_decode") else [_decode(tokenizer, [t]) for t in ids])
        if "".join(pieces) == text:
            starts, pos = [], 0
            for piece in pieces:
                starts.append(pos)
                pos += len(piece)
            return [bisect.bisect_left(starts, p) for p in positions]

        @functools.cache
        def prefix_len(k: int) -> int:
            return len(_decode(tokenizer, ids[:k]))

        out = []
        for p in positions:
            lo, hi = 0, n_tokens
            while lo < hi:
                mid = (lo + hi) // 2
                if prefix_len(mid) >= p:
                    hi = mid
                else:
                    lo = mid + 1
            out.append(lo)
        return out
    if n_tokens >= n_chars:
        return [max(0, min(p, n_tokens)) for p in positions]
    return [max(0, min(n_tokens, math.ceil(p * n_tokens / n_chars))) for p in positions]


_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans ``[start, end)``: breaks after ., ! or ? followed by whitespace, and at newlines.

    The whitespace of a break belongs to no sentence; empty or whitespace-only spans are dropped.
    "3.5" is not a break (no whitespace after the point).
    """
    spans, start = [], 0
    for m in _SENTENCE_BREAK.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return [(s, e) for s, e in spans if text[s:e].strip()]
