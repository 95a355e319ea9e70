"""Critic losses and diagnostics (value-model PPO); placeholder."""

from __future__ import annotations
