"""Resolve and load a causal LM + tokenizer directory, with errors that say what is wrong where."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from rlfold.core.errors import ModelLoadError
from rlfold.models.portable import PreTrainedTokenizerFast

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def shipped_models() -> list[str]:
    """Names of the models that ship inside the package (``tiny-arith``)."""
    return sorted(p.name for p in ASSETS.iterdir() if (p / "config.json").is_file()) if ASSETS.is_dir() else []


def _check_config_json(directory: Path) -> None:
    """``config.json`` must be a JSON object (checked here so the error names the file and line)."""
    cfg = directory / "config.json"
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{cfg} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{cfg}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{cfg}: expected a JSON object, got {type(data).__name__}")


def resolve_model_path(path: str) -> Path:
    """A directory path as given, or the name of a shipped model."""
    p = Path(path).expanduser()
    if path and p.is_dir():
        if not (p / "config.json").is_file():
            files = sorted(q.name for q in p.iterdir())[:10]
            raise ModelLoadError(
                f"model directory {p} has no config.json: not a Hugging Face model directory "
                f"(it holds: {', '.join(files) or 'nothing'})"
            )
        _check_config_json(p)
        return p
    if path and (ASSETS / path / "config.json").is_file():
        return ASSETS / path
    shipped = shipped_models()
    close = difflib.get_close_matches(path, shipped, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    what = "is a file, not a model directory" if p.is_file() else "is neither a directory nor a shipped model"
    raise ModelLoadError(f"model path {path!r} {what}{hint} (shipped models: {', '.join(shipped) or 'none'})")


# Tokenizer classes that mean "the tokenizers pipeline in tokenizer.json, as saved". transformers 5's
# AutoTokenizer maps them to the model type's class for some types (Qwen2Tokenizer for a Qwen2 config),
# which rebuilds a byte-level BPE pipeline around the vocabulary; rlfold loads the pipeline as saved.
# Tokenizers that rlfold builds are saved so that both agree (rlfold.models.portable).
_GENERIC_FAST = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def _tokenizer_class(directory: Path) -> type:
    """rlfold's ``PreTrainedTokenizerFast`` (saves as that portable class name) when the directory declares a
    generic tokenizers-backed class, else AutoTokenizer."""
    cfg = directory / "tokenizer_config.json"
    try:
        declared = json.loads(cfg.read_text(encoding="utf-8")).get("tokenizer_class") if cfg.is_file() else None
    except (OSError, ValueError):
        declared = None
    if declared in _GENERIC_FAST and (directory / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast
    return AutoTokenizer


def load_model_and_tokenizer(
    path: str, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load with ``AutoModelForCausalLM`` / ``AutoTokenizer`` (local files only: no hub access), the model
    moved to ``device`` (None: where it loaded, the CPU)."""
    resolved = resolve_model_path(path)
    hf_logging.disable_progress_bar()
    try:
        AutoConfig.from_pretrained(resolved, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{resolved / 'config.json'} is not a usable model config: {exc}") from exc
    try:
        tokenizer = _tokenizer_class(resolved).from_pretrained(resolved, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        files = ", ".join(sorted(q.name for q in resolved.iterdir()))
        raise ModelLoadError(f"could not load a tokenizer from {resolved} (files: {files}): {exc}") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=dtype, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        weights = sorted(q.name for q in resolved.iterdir() if q.suffix in (".safetensors", ".bin", ".pt"))
        named = f"weights: {', '.join(weights)}" if weights else "no weights file such as model.safetensors"
        raise ModelLoadError(f"could not load a causal LM from {resolved}: {exc} ({named})") from exc
    try:
        probe = tokenizer("1+1=2 a", add_special_tokens=False)["input_ids"]
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"the tokenizer in {resolved} cannot encode text: {exc}") from exc
    if not probe:
        # transformers falls back to an empty-vocabulary tokenizer when the files are missing.
        files = ", ".join(sorted(q.name for q in resolved.iterdir()))
        raise ModelLoadError(
            f"the tokenizer loaded from {resolved} has {len(tokenizer)} token(s) and encodes text to nothing: "
            f"the directory lacks tokenizer files such as tokenizer.json (it holds: {files})"
        )
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ModelLoadError(f"tokenizer in {resolved} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return (model if device is None else model.to(device)), tokenizer


def disable_dropout(model: torch.nn.Module) -> int:
    """Zero every dropout (modules and functional attention-dropout rates), as TRL's ``disable_dropout`` does.

    With dropout active the training forward differs from the rollout forward, so importance ratios
    and KL would be noisy even before the first update. Returns how many rates were changed.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p != 0.0:
            module.p = 0.0
            changed += 1
        for attr in ("attention_dropout", "attn_dropout", "dropout"):
            if isinstance(getattr(module, attr, None), float) and getattr(module, attr) != 0.0:
                setattr(module, attr, 0.0)
                changed += 1
    return changed
