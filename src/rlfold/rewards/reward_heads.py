"""Reward-model heads: how a sequence classifier turns ``prompt + completion`` into one score.

A head says how many outputs the classifier's score layer has and how its per-token outputs become a
response score. The reward-model trainer (``reward_modeling.head``) trains with one, records its name in
the saved ``config.json`` (key ``rlfold_reward_head``), and the ``reward_model`` reward scores a directory
with the head it was trained with, so the served score is the trained one.

- ``last_token``: the usual Bradley-Terry reward model (InstructGPT; TRL's RewardTrainer): one output, read at
  the last token.
- ``sentence``: the sentence-level reward model of Qiu et al. 2025 (arXiv 2503.04793): two outputs per
  position, a reward R and an attention logit a; the completion is cut into sentences and scored
  Σ_k softmax_k(a_k) · (R(end_k) − R(start_k)) (``algos.reward_modeling.sentence_scores``).

Both tokenise ``prompt + completion`` right-padded with the tokenizer's special tokens, so a text's score does
not depend on the batch it is scored in.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import torch
from torch import Tensor

from rlfold.algos.reward_modeling import sentence_scores, split_sentences
from rlfold.core.errors import ConfigError
from rlfold.core.registry import REWARD_HEADS

HEAD_KEY = "rlfold_reward_head"  # config.json key naming the head a reward model was trained with
DEFAULT_HEAD = "last_token"      # a directory without the key (any ordinary sequence classifier)


class RewardHead(Protocol):
    """How a sequence classifier with ``num_labels`` outputs scores completions."""

    num_labels: int

    def scores(self, model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], completions: Sequence[str],
               device: Any = None) -> Tensor:
        """[N] float32 scores of ``prompts[i] + completions[i]`` (with gradients when the model has them)."""
        ...


def encode(tokenizer: Any, texts: Sequence[str], device: Any = None, offsets: bool = False) -> dict[str, Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` of ``texts`` (and ``offset_mapping`` if asked)."""
    enc = tokenizer(list(texts), padding=True, padding_side="right", return_tensors="pt",
                    return_offsets_mapping=offsets)
    out = {k: enc[k] for k in ("input_ids", "attention_mask")}
    if offsets:
        out["offset_mapping"] = enc["offset_mapping"]
    return out if device is None else {k: (v if k == "offset_mapping" else v.to(device)) for k, v in out.items()}


def token_outputs(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """[B, T, num_labels] outputs of a sequence classifier's score layer at every position (before pooling)."""
    backbone = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    score = getattr(model, "score", None)
    if backbone is None or not isinstance(score, torch.nn.Module):
        raise ConfigError(f"{type(model).__name__}: a per-token reward head needs a sequence classifier with a "
                          "backbone and a `score` layer (as the Llama / Qwen2 classifiers have)")
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return score(hidden)


@REWARD_HEADS.register("last_token")
class LastTokenHead:
    """Bradley-Terry reward at the last token (InstructGPT, arXiv 2203.02155; TRL RewardTrainer): one output."""

    num_labels = 1

    def scores(self, model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], completions: Sequence[str],
               device: Any = None) -> Tensor:
        enc = encode(tokenizer, [p + c for p, c in zip(prompts, completions)], device)
        return model(**enc).logits[:, 0].float()


def _token_of_char(offsets: Tensor, length: int) -> list[int]:
    """For each character of a text of ``length``, the index of the token covering it (-1: none)."""
    where = [-1] * length
    for j, (a, b) in enumerate(offsets.tolist()):
        for c in range(max(a, 0), min(b, length)):
            if where[c] < 0:
                where[c] = j
    return where


def sentence_positions(offsets: Tensor, attention_mask: Tensor, prompts: Sequence[str],
                       completions: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
    """``(starts, ends, mask)`` [B, S] of the completions' sentences in the tokenised ``prompt + completion``.

    A sentence's end is its last token; its start is the position before its first token (the last token
    of the previous sentence, or of the prompt). Sentences are ``split_sentences`` spans of the completion;
    characters no token covers are skipped. An empty completion is one sentence of zero length (start =
    end = the last token, score 0).
    """
    rows: list[list[tuple[int, int]]] = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        text_len = len(p) + len(c)
        tok = _token_of_char(offsets[i], text_len)
        last = int(attention_mask[i].sum()) - 1
        spans: list[tuple[int, int]] = []
        for s, e in split_sentences(c):
            covered = [tok[k] for k in range(len(p) + s, len(p) + e) if tok[k] >= 0]
            if not covered:
                continue
            first, end = min(covered), max(covered)
            if spans and first <= spans[-1][1]:  # a token straddling two sentences belongs to the earlier one
                first = spans[-1][1] + 1
                if first > end:
                    continue
            spans.append((first, end))
        rows.append([(f - 1, e) for f, e in spans] or [(last, last)])
    width = max(len(r) for r in rows)
    starts = torch.zeros(len(rows), width, dtype=torch.long)
    ends = torch.zeros_like(starts)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        for k, (s, e) in enumerate(r):
            starts[i, k], ends[i, k], mask[i, k] = max(s, 0), e, True
    return starts, ends, mask


@REWARD_HEADS.register("sentence")
class SentenceHead:
    """Sentence-level reward model (Qiu et al. 2025, arXiv 2503.04793): Σ_k softmax(a)_k (R(end_k) − R(start_k))."""

    num_labels = 2

    def scores(self, model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], completions: Sequence[str],
               device: Any = None) -> Tensor:
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("the sentence reward head maps sentences to tokens through character offsets, which "
                              f"need a fast tokenizer; {type(tokenizer).__name__} is not one")
        enc = encode(tokenizer, [p + c for p, c in zip(prompts, completions)], device, offsets=True)
        offsets = enc.pop("offset_mapping")
        out = token_outputs(model, enc["input_ids"], enc["attention_mask"]).float()
        starts, ends, mask = sentence_positions(offsets, enc["attention_mask"].cpu(), prompts, completions)
        starts, ends, mask = starts.to(out.device), ends.to(out.device), mask.to(out.device)
        attn = out[..., 1].gather(1, ends)
        score, _, _ = sentence_scores(out[..., 0], starts, ends, attn, mask)
        return score


def head_of(name: str) -> RewardHead:
    """The registered head called ``name`` (an instance)."""
    return REWARD_HEADS.get(name)()


def head_of_model(model: torch.nn.Module) -> str:
    """The head a saved reward model was trained with (``config.json`` key ``rlfold_reward_head``)."""
    return str(getattr(model.config, HEAD_KEY, None) or DEFAULT_HEAD)


__all__ = ["DEFAULT_HEAD", "HEAD_KEY", "LastTokenHead", "RewardHead", "SentenceHead", "encode", "head_of",
           "head_of_model", "sentence_positions", "token_outputs"]
