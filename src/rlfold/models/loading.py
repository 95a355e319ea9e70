"""Resolve and load a causal LM + tokenizer directory, with errors that say what is wrong where."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from rlfold.core.errors import ModelLoadError

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def shipped_models() -> list[str]:
    """Names of the models that ship inside the package (``tiny-arith``)."""
    return sorted(p.name for p in ASSETS.iterdir() if (p / "config.json").is_file()) if ASSETS.is_dir() else []


def resolve_model_path(path: str) -> Path:
    """A directory path as given, or the name of a shipped model."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"model directory {p} has no config.json: not a Hugging Face model directory")
        return p
    if (ASSETS / path / "config.json").is_file():
        return ASSETS / path
    raise ModelLoadError(
        f"model path {path!r} is neither a directory nor a shipped model (shipped: {', '.join(shipped_models()) or 'none'})"
    )


def load_model_and_tokenizer(
    path: str, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load with ``AutoModelForCausalLM`` / ``AutoTokenizer`` (local files only: no hub access)."""
    resolved = resolve_model_path(path)
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise ModelLoadError(f"could not load a tokenizer from {resolved}: {exc}") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=dtype, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"could not load a causal LM from {resolved}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ModelLoadError(f"tokenizer in {resolved} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer
