"""Checkpoints of a data-parallel run: model and optimiser in per-rank shards (torch.distributed.checkpoint).

A checkpoint directory of such a run holds, beside what a single-process one holds (the HF model of
the full weights, gathered to rank 0, the tokenizer, ``trainer_state.pt`` and the manifest):

- ``dcp/``: model and optimiser state written by every rank (``torch.distributed.checkpoint``);
- ``rng/rank_N.pt``: the global RNG state of rank N.

The optimiser is not in ``trainer_state.pt`` (its FSDP2 state is DTensors); the data position (the
prompt sampler) and the other registered state are, from rank 0, since every rank runs the same driver.
Rank 0 writes the directory under a temporary name and renames it into place, as in ``checkpoint.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from rlfold.trainers import checkpoint as ckpt
from rlfold.trainers.distributed import Parallel, full_state_dict
from rlfold.trainers.state import GlobalRNG, Stateful, collect_state

DCP_DIR = "dcp"
RNG_DIR = "rng"


def split_objects(objects: dict[str, Stateful]) -> tuple[dict[str, Stateful], list[torch.optim.Optimizer]]:
    """The registered objects saved as plain state, and the optimisers saved with DCP."""
    optims = [o for o in objects.values() if isinstance(o, torch.optim.Optimizer)]
    plain = {k: o for k, o in objects.items() if not isinstance(o, torch.optim.Optimizer)}
    return plain, optims


def _dcp_state(model: torch.nn.Module, optims: list[torch.optim.Optimizer]) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    for i, opt in enumerate(optims):
        state[f"optim_{i}"] = get_optimizer_state_dict(model, opt)
    return state


def _rngs(objects: dict[str, Stateful]) -> list[GlobalRNG]:
    return [o for o in objects.values() if isinstance(o, GlobalRNG)]


def save(run_dir: Path, step: int, model: Any, tokenizer: Any, objects: dict[str, Stateful], keep: int,
         par: Parallel) -> Path:
    """Write ``checkpoints/step_XXXXXXX`` of every rank's shards (collective); rank 0 points ``latest`` at it."""
    import torch.distributed.checkpoint as dcp

    root = run_dir / ckpt.CKPT_DIR
    final = root / f"step_{step:07d}"
    tmp = final.with_name(f".tmp-{final.name}")
    if par.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / RNG_DIR).mkdir(parents=True)
    par.barrier()
    plain, optims = split_objects(objects)
    dcp.save(_dcp_state(model, optims), checkpoint_id=str(tmp / DCP_DIR))
    for rng in _rngs(objects):
        torch.save(rng.state_dict(), tmp / RNG_DIR / f"rank_{par.rank}.pt")
    weights = full_state_dict(model, par)
    state = collect_state(plain)
    par.barrier()
    if par.is_main:
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / ckpt.STATE_FILE)
        ckpt.write_manifest(tmp)
        ckpt._fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        ckpt.atomic_write_text(root / ckpt.LATEST, final.name)
        ckpt._prune(root, keep, protect=final.name)
    par.barrier()
    return final


def load(path: Path, model: Any, objects: dict[str, Stateful], par: Parallel) -> None:
    """Model and optimiser shards of checkpoint ``path``, and this rank's RNG state (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    _, optims = split_objects(objects)
    state = _dcp_state(model, optims)
    dcp.load(state, checkpoint_id=str(path / DCP_DIR))
    set_model_state_dict(model, state["model"])
    for i, opt in enumerate(optims):
        set_optimizer_state_dict(model, opt, state[f"optim_{i}"])
    own = path / RNG_DIR / f"rank_{par.rank}.pt"
    for rng in _rngs(objects):
        rng.load_state_dict(torch.load(own, weights_only=True))


def save_final(model: Any, tokenizer: Any, dest: Path, par: Parallel) -> None:
    """``final/``: a plain HF directory of the full weights, gathered to rank 0 (collective)."""
    weights = full_state_dict(model, par)
    if par.is_main:
        tmp = dest.with_name(f".tmp-{dest.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        ckpt._fsync_tree(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    par.barrier()


__all__ = ["DCP_DIR", "RNG_DIR", "load", "save", "save_final", "split_objects"]
