"""Atomic checkpoints: a directory is written under a temporary name and renamed; ``latest`` is replaced atomically."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

CKPT_DIR = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.pt"


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old or the new content, never a torn file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_pretrained_atomic(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dest: Path, state: dict[str, Any] | None = None
) -> None:
    """Save a HF model directory (plus ``state`` if given) under a temporary name, then swap it into place."""
    tmp = dest.with_name(f".tmp-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if state is not None:
        torch.save(state, tmp / STATE_FILE)
    _fsync_tree(tmp)
    old = dest.with_name(f".old-{dest.name}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``checkpoints/step_XXXXXXX`` (model, tokenizer, trainer state) and point ``latest`` at it."""
    root = run_dir / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    save_pretrained_atomic(model, tokenizer, final, state)
    atomic_write_text(root / LATEST, final.name)
    _prune(root, keep, protect=final.name)
    return final


def _prune(root: Path, keep: int, protect: str) -> None:
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for p in done[:-keep]:
        if p.name != protect:
            shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names, after removing any half-written temporary directory."""
    root = run_dir / CKPT_DIR
    for leftover in (*root.glob(".tmp-step_*"), *root.glob(".old-step_*")):
        shutil.rmtree(leftover, ignore_errors=True)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    ckpt = root / pointer.read_text(encoding="utf-8").strip()
    return ckpt if (ckpt / STATE_FILE).is_file() else None


def load_state(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt / STATE_FILE, weights_only=False)
