"""Token-level advantage estimators (returns, REINFORCE++, ReMax, GAE); placeholder filled below."""

from __future__ import annotations
