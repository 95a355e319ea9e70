"""The preference datasets of a run: read from ``preference.train_file`` / ``held_out_file``, or sampled
synthetically from the task with the reference policy (``preference_synth``); split, fingerprinted and
checked against the model's context length. Shared by the preference and reward-model trainers."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from rlfold.core.config import RunConfig
from rlfold.core.errors import DataError
from rlfold.core.seeding import derive_seed
from rlfold.rollout.base import chat_prompt_ids
from rlfold.tasks import Task
from rlfold.tasks.files import DataSource
from rlfold.tasks.preference_data import (PreferenceColumns, PreferenceData, PreferenceExample, load_preferences,
                                          parse_rows)
from rlfold.trainers.preference_synth import synthesize


def columns_of(cfg: RunConfig) -> PreferenceColumns:
    """The column mapping of ``preference.*_key``."""
    p = cfg.preference
    return PreferenceColumns(prompt=p.prompt_key, chosen=p.chosen_key, rejected=p.rejected_key,
                             responses=p.responses_key, scores=p.scores_key, completion=p.completion_key,
                             label=p.label_key, margin=p.margin_key)


@dataclass
class PreferenceSplits:
    """Training and held-out examples (same kind), and the dataset descriptions for ``data_fingerprint.json``."""

    train: PreferenceData
    held_out: PreferenceData
    sources: list[dict[str, Any]] = field(default_factory=list)


def _rows_sha256(rows: list[dict[str, Any]]) -> str:
    """sha256 of the rows as canonical JSONL (what ``rlfold data synth`` would write)."""
    h = hashlib.sha256()
    for row in rows:
        h.update((json.dumps(row, sort_keys=True) + "\n").encode())
    return h.hexdigest()


def synthetic_rows(cfg: RunConfig, task: Task, engine: Any, kind: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The synthetic rows of ``kind`` and their description (sampler settings, dropped prompts, sha256)."""
    sc = cfg.preference.synthetic
    prompts = task.train[: sc.prompts] if sc.prompts else task.train
    rewards = [(r.name, r.weight, r.kwargs) for r in cfg.rewards]
    rows, dropped = synthesize(engine, prompts, rewards, kind=kind, samples=sc.samples,
                               max_new_tokens=cfg.rollout.max_new_tokens, temperature=sc.temperature, seed=cfg.seed,
                               selection=sc.selection, rso_beta=sc.rso_beta, flip_fraction=sc.flip_fraction,
                               progress=cfg.log.progress)
    if not rows:
        raise DataError(f"the synthetic preference dataset is empty: none of the {len(prompts)} prompts gave "
                        f"responses that score differently ({dict(dropped)}); raise preference.synthetic.samples "
                        "or the temperature, or give preference.train_file")
    source = DataSource(split="train", path=f"synthetic:{task.name}", format="synthetic", rows=len(rows),
                        sha256=_rows_sha256(rows))
    desc = {**source.as_dict(), **sc.model_dump(), "prompts": len(prompts), "dropped": dict(dropped)}
    return rows, desc


def held_out_split(data: PreferenceData, fraction: float, seed: int) -> tuple[PreferenceData, PreferenceData]:
    """A seeded split of the examples by prompt (every example of one prompt on one side)."""
    prompts = sorted({ex.prompt.text for ex in data.examples})
    rng = random.Random(derive_seed(seed, "preference_held_out"))
    rng.shuffle(prompts)
    held = set(prompts[: max(1, int(round(fraction * len(prompts))))]) if fraction > 0 else set()
    train = [ex for ex in data.examples if ex.prompt.text not in held]
    test = [ex for ex in data.examples if ex.prompt.text in held]
    if not train:
        raise DataError(f"holding out {fraction:.0%} of the preference prompts leaves no training example; lower "
                        "preference.held_out_fraction or give preference.held_out_file")
    return (PreferenceData(data.kind, train, data.source, data.skipped),
            PreferenceData(data.kind, test, data.source))


def preference_splits(cfg: RunConfig, task: Task, engine: Any, kind: str | None = None) -> PreferenceSplits:
    """The run's training and held-out preference data (``kind`` forces the synthetic kind; files say theirs)."""
    p = cfg.preference
    cols = columns_of(cfg)
    sources: list[dict[str, Any]] = []
    if p.train_file is None:
        want = kind or ("pairs" if p.kind == "auto" else p.kind)
        rows, desc = synthetic_rows(cfg, task, engine, want)
        data = parse_rows(((f"synthetic:{task.name}: row {i}", r) for i, r in enumerate(rows, start=1)), cols,
                          want, p.bad_rows, what="the synthetic preference dataset")
        sources.append(desc)
    else:
        data = load_preferences(p.train_file, "train", cols, p.kind, p.bad_rows)
        sources.append({**data.source.as_dict(), "skipped": dict(data.skipped)})
    if p.held_out_file is not None:
        held = load_preferences(p.held_out_file, "held_out", cols, data.kind, p.bad_rows)
        sources.append({**held.source.as_dict(), "skipped": dict(held.skipped)})
        train = data
    else:
        train, held = held_out_split(data, p.held_out_fraction, cfg.seed)
    return PreferenceSplits(train=train, held_out=held, sources=sources)


def check_lengths(data: PreferenceData, tokenizer: Any, max_length: int, bad_rows: str) -> PreferenceData:
    """Refuse (or skip, counted) examples whose prompt + longest completion exceed ``max_length`` tokens."""
    keep: list[PreferenceExample] = []
    for ex in data.examples:
        n_prompt = len(encode_prompt(tokenizer, ex))
        longest = max(len(encode_completion(tokenizer, r)) for r in ex.responses)
        if n_prompt + longest <= max_length:
            keep.append(ex)
            continue
        msg = (f"{ex.where}: prompt ({n_prompt} tokens) + longest completion ({longest} tokens) is longer than the "
               f"model's context of {max_length} tokens")
        if bad_rows == "error":
            raise DataError(msg + "; shorten it, raise preference.max_length if the model allows, or set "
                                  "preference.bad_rows=skip to skip such rows")
        data.skipped["longer than the model's context"] += 1
    if not keep:
        raise DataError(f"every preference example is longer than the model's context of {max_length} tokens")
    return PreferenceData(data.kind, keep, data.source, data.skipped)


def encode_prompt(tokenizer: Any, ex: PreferenceExample) -> list[int]:
    """The prompt's token ids: its chat messages through the chat template, else its text."""
    messages = ex.prompt.meta.get("messages")
    if messages is not None:
        if not tokenizer.chat_template:
            raise DataError(f"{ex.where}: the prompt is chat messages but the tokenizer has no chat template")
        return chat_prompt_ids(tokenizer, messages)
    return list(tokenizer(ex.prompt.text, add_special_tokens=True)["input_ids"])


def encode_completion(tokenizer: Any, text: str) -> list[int]:
    """A completion's token ids, ending in the eos token (which the model must learn to emit)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def context_length(model: torch.nn.Module, configured: int) -> int:
    """``preference.max_length``, or the model's ``max_position_embeddings`` when that is 0."""
    if configured:
        return configured
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(cfg.max_position_embeddings)


__all__ = ["PreferenceSplits", "check_lengths", "columns_of", "context_length", "encode_completion",
           "encode_prompt", "held_out_split", "preference_splits", "synthetic_rows"]
