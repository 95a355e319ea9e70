"""Checks of a run's inputs against its model, before anything is trained or written.

The online step calls them while it is built: the dtype before any model is loaded, the rest once
the policy and its tokenizer are loaded and before the reference model, critic or engines. The run
loop writes ``config.yaml`` only after the step was built, so a refused run leaves no directory.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rlfold.core.config import RunConfig
from rlfold.core.errors import ConfigError, DataError
from rlfold.core.types import Prompt
from rlfold.core.registry import REWARDS
from rlfold.rewards.base import needed_columns
from rlfold.rollout.base import chat_prompt_ids

# How many offending prompts or characters an error lists.
_SHOWN = 5


def check_dtype(cfg: RunConfig, cuda_available: bool | None = None) -> None:
    """``float16`` needs a CUDA device: on CPU its kernels are slow or missing and, without loss scaling,
    its range overflows in training; refuse it before a model is loaded."""
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if cfg.model.dtype == "float16" and not cuda:
        raise ConfigError(
            "model.dtype=float16 on a machine without a CUDA device: float16 is meant for GPUs (on CPU many of its "
            "kernels are slow or missing, and without loss scaling its narrow range, max 65504, overflows to inf/NaN "
            "in training). Use model.dtype=float32 (the CPU default) or model.dtype=bfloat16 (half the memory)")


def position_limit(model: Any) -> int | None:
    """The longest sequence the model can attend over (``max_position_embeddings``, GPT-2's
    ``n_positions``), or None when its config states none."""
    try:
        config = model.config.to_dict()
    except AttributeError:
        return None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def prompt_ids(tokenizer: Any, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Token ids of each prompt as the engines encode it: its chat messages through the chat template
    when it carries ``meta["messages"]`` (and the tokenizer has a template), else its text with the
    tokenizer's special tokens."""
    out: list[list[int] | None] = [None] * len(prompts)
    try:
        has_template = bool(tokenizer.chat_template)
    except AttributeError:
        has_template = False
    plain = [i for i, p in enumerate(prompts)
             if not (has_template and isinstance(p.meta, dict) and p.meta.get("messages"))]
    if plain:
        encoded = tokenizer([prompts[i].text for i in plain], add_special_tokens=True)["input_ids"]
        for i, ids in zip(plain, encoded):
            out[i] = list(ids)
    for i, p in enumerate(prompts):
        if out[i] is None:
            out[i] = chat_prompt_ids(tokenizer, p.meta["messages"])
    return out  # type: ignore[return-value]


def response_budget(cfg: RunConfig) -> int:
    """Model tokens of one training rollout at most (every turn of a multi-turn episode with
    ``turn_budget: per_turn``; the environment's observations come on top)."""
    r = cfg.rollout
    if r.env is not None and r.turn_budget == "per_turn":
        return r.max_new_tokens * r.max_turns
    return r.max_new_tokens


def check_prompts(cfg: RunConfig, model: Any, tokenizer: Any, train: Sequence[Prompt],
                  held_out: Sequence[Prompt]) -> None:
    """Each split is tokenised once, as the engines will: its characters must be known to the
    tokenizer (``check_known_characters``) and its longest prompt plus the response limit must fit the
    model's positions (``check_context``)."""
    splits = [("training", train, prompt_ids(tokenizer, train) if train else []),
              ("held-out", held_out, prompt_ids(tokenizer, held_out) if held_out else [])]
    check_known_characters(cfg, tokenizer, splits)
    check_context(cfg, model, splits)
    check_reward_columns(cfg, train)


def check_reward_columns(cfg: RunConfig, train: Sequence[Prompt]) -> None:
    """Every dataset column a configured reward function ``@needs`` must be a column of the training data."""
    have = sorted({k for p in train if isinstance(p.meta, dict) for k in p.meta})
    names = dict.fromkeys([r.name for r in cfg.rewards] + [cfg.accuracy_reward])
    for name in names:
        missing = [c for c in needed_columns(REWARDS.get(name)) if c not in have]
        if missing:
            source = cfg.task.train_file or "the generated training prompts"
            raise DataError(
                f"reward function {name!r} needs the dataset column(s) {', '.join(map(repr, missing))}, which "
                f"{source} lacks (its extra columns: {', '.join(have) or 'none'}); check the column names of the "
                "data and task.prompt_key / task.answer_key / task.messages_key")


def check_context(cfg: RunConfig, model: Any,
                  splits: Sequence[tuple[str, Sequence[Prompt], Sequence[Sequence[int]]]]) -> None:
    """The longest prompt plus the response limit must fit the model's positions: for the training
    prompts ``rollout.max_new_tokens`` (every turn with ``turn_budget: per_turn``), for the evaluated
    held-out prompts ``eval.max_new_tokens``. ``splits``: ``(name, prompts, their token ids)``."""
    limit = position_limit(model)
    if limit is None:
        return
    r = cfg.rollout
    budget = {"training": (response_budget(cfg), "rollout.max_new_tokens x rollout.max_turns"
                           if response_budget(cfg) != r.max_new_tokens else "rollout.max_new_tokens"),
              "held-out": (cfg.eval.max_new_tokens or r.max_new_tokens, "eval.max_new_tokens" if cfg.eval.max_new_tokens
                           else "eval.max_new_tokens (= rollout.max_new_tokens)")}
    for split, prompts, ids in splits:
        if not prompts:
            continue
        new, key = budget[split]
        lengths = [len(x) for x in ids]
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        n = lengths[longest]
        if n + new > limit:
            room = (f"at most {limit - n} response tokens fit after it; " if n < limit
                    else "the prompt alone fills the context; ")
            raise ConfigError(
                f"the longest {split} prompt ({_where(cfg, split, longest)}: {_clip(prompts[longest].text)!r}) is "
                f"{n} tokens, and "
                f"with {key}={new} a sequence reaches {n + new} tokens, beyond the {limit} positions of model "
                f"{cfg.model.path!r} (max_position_embeddings / n_positions of its config): {room}lower "
                f"{key.split()[0]}, shorten or drop the long prompts, or use a model with a longer context")


def check_known_characters(cfg: RunConfig, tokenizer: Any,
                           splits: Sequence[tuple[str, Sequence[Prompt], Sequence[Sequence[int]]]]) -> None:
    """Prompt characters the tokenizer maps to its unknown token are invisible to the model: refuse them
    (``task.allow_unknown_chars`` runs anyway), naming the prompts and the characters."""
    try:
        unk = tokenizer.unk_token_id
    except AttributeError:
        unk = None
    if unk is None or cfg.task.allow_unknown_chars:
        return
    for split, prompts, ids in splits:
        bad = [i for i, x in enumerate(ids) if unk in x]
        if not bad:
            continue
        lines = []
        for i in bad[:_SHOWN]:
            found = unknown_characters(tokenizer, prompts[i].text, unk)
            lines.append(f"{_where(cfg, split, i)} {_clip(prompts[i].text)!r}: "
                         + (", ".join(f"{c!r} (U+{ord(c):04X})" for c in found) or "its chat template"))
        more = f" (the first {_SHOWN} of them)" if len(bad) > _SHOWN else ""
        raise DataError(
            f"{len(bad)} {split} prompt(s) have characters the tokenizer of model {cfg.model.path!r} maps to "
            f"{tokenizer.unk_token!r}, so the model cannot read them{more}: " + "; ".join(lines)
            + ". Replace or remove those characters in the data, use a model whose tokenizer covers them, or set "
              "task.allow_unknown_chars=true to train anyway")


def unknown_characters(tokenizer: Any, text: str, unk: int) -> list[str]:
    """The characters of ``text`` covered by an unknown token (by the tokenizer's offsets when it has
    them, else one character at a time)."""
    found: dict[str, None] = {}
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        for tok, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
            if tok == unk:
                found.update(dict.fromkeys(text[a:b] or "?"))
    except (NotImplementedError, TypeError, ValueError, KeyError):
        for ch in dict.fromkeys(text):
            if unk in tokenizer(ch, add_special_tokens=False)["input_ids"]:
                found[ch] = None
    return [c for c in found if not c.isspace()] or list(found)


def check_stop_tokens(cfg: RunConfig, tokenizer: Any) -> None:
    """Every ``rollout.stop_token_ids`` entry must be a token id of the tokenizer."""
    size = len(tokenizer)
    bad = [t for t in cfg.rollout.stop_token_ids if not 0 <= t < size]
    if bad:
        one = len(bad) == 1
        raise ConfigError(
            f"rollout.stop_token_ids: {', '.join(map(str, bad))} {'is not a token id' if one else 'are not token ids'} "
            f"of the tokenizer of model {cfg.model.path!r} (ids 0..{size - 1}), so generation could never stop on "
            f"{'it' if one else 'them'}; use ids of that tokenizer (tokenizer.convert_tokens_to_ids) or "
            "rollout.stop_strings")


def _where(cfg: RunConfig, split: str, index: int) -> str:
    """Where prompt ``index`` of a split comes from: the row of its JSONL file, or its position."""
    path = cfg.task.train_file if split == "training" else cfg.task.held_out_file
    return f"row {index + 1} of {path}" if path else f"{split} prompt #{index}"


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


__all__ = ["check_context", "check_dtype", "check_known_characters", "check_prompts", "check_reward_columns",
           "check_stop_tokens", "position_limit", "prompt_ids", "response_budget", "unknown_characters"]
