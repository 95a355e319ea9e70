"""Atomic, verified checkpoints.

A checkpoint directory is written under a temporary name and renamed; ``latest`` is replaced
atomically. Each checkpoint holds ``manifest.json``: the size and sha256 of every other file in it,
checked before a resume loads anything (``verify_checkpoint``). The trainer state loads with
``weights_only=True``: a checkpoint never runs pickled code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlfold.core.errors import RlfoldError

CKPT_DIR = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.pt"
MANIFEST = "manifest.json"
STEP_RE = re.compile(r"step_(\d+)")


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root: Path) -> None:
    """``manifest.json``: size and sha256 of every file under ``root``."""
    files = {rel: {"size": (root / rel).stat().st_size, "sha256": _sha256(root / rel)} for rel in _files(root)}
    (root / MANIFEST).write_text(json.dumps({"files": files}, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def verify_checkpoint(ckpt: Path) -> list[str]:
    """What is wrong with checkpoint ``ckpt`` (missing files, bad sizes or checksums); empty if intact."""
    if not ckpt.is_dir():
        return [f"{ckpt.name} does not exist"]
    try:
        files = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no files listed")
    except FileNotFoundError:
        return [f"{MANIFEST} is missing (written by an older rlfold, or damaged)"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{MANIFEST} is unreadable ({exc})"]
    problems = []
    if STATE_FILE not in files:
        problems.append(f"{MANIFEST} does not list {STATE_FILE}")
    for rel, want in sorted(files.items()):
        p = ckpt / rel
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            problems.append(f"{rel} is missing")
            continue
        except OSError as exc:
            problems.append(f"{rel} is unreadable ({exc.strerror})")
            continue
        try:
            if size != want["size"]:
                problems.append(f"{rel} has {size} bytes, the manifest says {want['size']}")
            elif _sha256(p) != want["sha256"]:
                problems.append(f"{rel} fails its sha256 check")
        except (OSError, KeyError, TypeError) as exc:
            problems.append(f"{rel} cannot be checked ({exc})")
    return problems


def save_pretrained_atomic(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dest: Path, state: dict[str, Any] | None = None
) -> None:
    """Save a HF model directory (plus ``state`` and a manifest, if given) under a temporary name, then swap it in."""
    tmp = dest.with_name(f".tmp-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if state is not None:
        torch.save(state, tmp / STATE_FILE)
        write_manifest(tmp)
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
    """Write ``checkpoints/step_XXXXXXX`` (model, tokenizer, trainer state, manifest) and point ``latest`` at it."""
    root = run_dir / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    save_pretrained_atomic(model, tokenizer, final, state)
    atomic_write_text(root / LATEST, final.name)
    _prune(root, keep, protect=final.name)
    return final


def _prune(root: Path, keep: int, protect: str) -> None:
    done = checkpoints(root.parent)
    for p in done[:-keep]:
        if p.name != protect:
            shutil.rmtree(p, ignore_errors=True)


def checkpoints(run_dir: Path) -> list[Path]:
    """The ``checkpoints/step_*`` directories of ``run_dir``, oldest first."""
    root = run_dir / CKPT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_RE.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(STEP_RE.fullmatch(p.name).group(1)))  # type: ignore[union-attr]


def step_of(ckpt: Path) -> int:
    m = STEP_RE.fullmatch(ckpt.name)
    if m is None:
        raise ValueError(f"{ckpt.name} is not a checkpoint name (step_NNNNNNN)")
    return int(m.group(1))


def remove_leftovers(run_dir: Path) -> None:
    """Remove temporary directories a killed checkpoint write left behind (call only while holding the run lock)."""
    root = run_dir / CKPT_DIR
    for old in root.glob(".old-step_*"):
        dest = root / old.name[len(".old-"):]
        if not dest.exists():  # killed between moving the old copy aside and renaming the new one in
            os.replace(old, dest)
    for leftover in (*root.glob(".tmp-step_*"), *root.glob(".old-step_*")):
        shutil.rmtree(leftover, ignore_errors=True)


def read_latest(run_dir: Path) -> str | None:
    """What ``checkpoints/latest`` says (stripped), or None if there is no such file."""
    try:
        return (run_dir / CKPT_DIR / LATEST).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        return f"<unreadable: {exc}>"


def latest_checkpoint(run_dir: Path, clean: bool = True) -> Path | None:
    """The checkpoint ``latest`` names if it is there (not verified), after removing leftovers (``clean``)."""
    if clean:
        remove_leftovers(run_dir)
    name = read_latest(run_dir)
    if name is None or not STEP_RE.fullmatch(name):
        return None
    ckpt = run_dir / CKPT_DIR / name
    return ckpt if (ckpt / STATE_FILE).is_file() else None


def newest_intact(run_dir: Path, exclude: str | None = None) -> Path | None:
    """The newest checkpoint that passes ``verify_checkpoint`` (other than ``exclude``), or None."""
    for p in reversed(checkpoints(run_dir)):
        if p.name != exclude and not verify_checkpoint(p):
            return p
    return None


def load_state(ckpt: Path) -> dict[str, Any]:
    """The trainer state of ``ckpt``, loaded with ``weights_only=True``."""
    path = ckpt / STATE_FILE
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError as exc:
        raise RlfoldError(f"{path} is missing") from exc
    except Exception as exc:  # noqa: BLE001  (unpickling errors have many types)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RlfoldError(f"cannot load {path} safely (weights_only=True): {first}") from exc
    if not isinstance(state, dict):
        raise RlfoldError(f"{path} holds a {type(state).__name__}, not a trainer state")
    return state


__all__ = ["CKPT_DIR", "LATEST", "MANIFEST", "STATE_FILE", "atomic_write_text", "checkpoints", "latest_checkpoint",
           "load_state", "newest_intact", "read_latest", "remove_leftovers", "save_checkpoint",
           "save_pretrained_atomic", "step_of", "verify_checkpoint", "write_manifest"]
