"""Preference-optimisation losses (``PREFERENCE_LOSSES``): pure functions of sequence log-probs.

Importing this package registers every loss. The shared input (``PreferenceLogps``), the declaration
of what a loss consumes (``preference_loss``) and the reader of that declaration (``spec_of``) live in
``base``; the losses are grouped by family in the sibling modules.
"""

from __future__ import annotations

from rlfold.algos.preference import base, pairwise  # noqa: F401  (registers the losses)
from rlfold.algos.preference.base import PREFERENCE_LOSSES, LossSpec, PreferenceLogps, preference_loss, spec_of

__all__ = ["PREFERENCE_LOSSES", "LossSpec", "PreferenceLogps", "preference_loss", "spec_of"]
