"""The registry of replay parts (``algo.replay``), in the core so that configuration validates against it.

A replay part sees each prepared batch after its update and may hand back a batch to train on once
more (``algos.replay``). It lives beside the other registries' layer for the same reason they do: the
config checks ``algo.replay.name`` and its options without importing the algorithm layer.
"""

from __future__ import annotations

from rlfold.core.registry import Registry

REPLAYS: Registry = Registry("replay part")  # algo.replay.name: pipo (algos.pipo)

__all__ = ["REPLAYS"]
