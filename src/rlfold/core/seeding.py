"""Per-call seeds: every random draw of a run is a pure function of (run seed, where it happens).

An engine call gets an integer seed, never a generator object, so the same seed reaches an engine in
another process (vLLM, a Ray actor) and a resumed run draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(base: int, *keys: int | str) -> int:
    """A 63-bit seed from the run seed and the keys naming the call (step, round, purpose ...)."""
    text = ":".join(str(k) for k in (base, *keys))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def generator_for(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


__all__ = ["derive_seed", "generator_for"]
