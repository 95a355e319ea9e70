"""Preference-optimisation losses (``PREFERENCE_LOSSES``): pure functions of sequence log-probs.

Importing this package registers every loss. The shared input (``PreferenceLogps``), the declaration
of what a loss consumes (``preference_loss``) and the reader of that declaration (``spec_of``) live in
``base``; the losses are grouped by family in the sibling modules:

- ``pairwise`` (kinds ``pairs``): dpo, cdpo, ipo, hinge_norm, slic_hf, rso_hinge, rdpo, rpo, sigmoid_norm,
  cpl, copg (also ``lists``), dno, nca_pair, exo_pair, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero,
  apo_down, discopop, dr_dpo, hypo, cpo, simpo, alphapo, orpo;
- ``unpaired`` (kinds ``unpaired``): kto, apo_zero_unpaired, bco;
- ``listwise`` (kinds ``lists`` and ``pairs``): lipo_lambda, listmle, list_softmax_ce, list_pairwise_logistic,
  list_pairwise_hinge.

Not registered: the token-level objectives of ``token`` (aligndistil_loss, ce_u_loss, coipo_contrast,
coipo_scale), which need logits, and RSO's rejection sampler ``rso.rso_accept``.
"""

from __future__ import annotations

from rlfold.algos.preference import base, listwise, pairwise, rso, token_level, unpaired  # noqa: F401  (registers the losses)
from rlfold.algos.preference.base import PREFERENCE_LOSSES, LossSpec, PreferenceLogps, preference_loss, spec_of

__all__ = ["PREFERENCE_LOSSES", "LossSpec", "PreferenceLogps", "preference_loss", "spec_of"]
