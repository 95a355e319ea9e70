"""Algorithm layer: pure tensor functions registered under their literature names.

Importing this package registers every part: advantage estimators (``ADVANTAGES``), per-token
policy losses (``POLICY_LOSSES``), loss aggregations (``AGGREGATIONS``), KL estimators
(``KL_ESTIMATORS``) and sequence-level regularisers (``REGULARIZERS``). No model, no I/O, no
global state besides these registries.
"""

from __future__ import annotations

from rlfold.algos import advantages, aggregation, critic, group_filters, kl, policy_losses, selection, token_advantages, decs
from rlfold.algos import hdpo  # noqa: F401  (registers the hdpo advantage)
from rlfold.algos import aepo  # noqa: F401  (registers aepo_clip and aepo_entropy_advantage)
from rlfold.algos import d3s  # noqa: F401  (registers the d3s_samples and d3s_tokens selections)
from rlfold.algos import cepo  # noqa: F401  (registers the cepo selection)
from rlfold.algos import mhpo  # noqa: F401  (registers the mhpo policy loss)
from rlfold.algos import entropy_cov  # noqa: F401  (registers the clip_cov and kl_cov policy losses)
from rlfold.algos import adora  # noqa: F401  (registers the adora advantage)
from rlfold.algos import sign_reinforce  # noqa: F401  (registers w_reinforce and the psr_nsr selection)
from rlfold.algos import unlikeliness  # noqa: F401  (registers the unlikeliness advantage)
from rlfold.algos import ace  # noqa: F401  (registers the ace advantage)
from rlfold.algos import copg  # noqa: F401  (registers the copg advantage: online CoPG)
from rlfold.algos import riskpo  # noqa: F401  (registers the riskpo advantage)
from rlfold.algos import spans  # noqa: F401  (registers the after_marker selection)
from rlfold.algos import disco  # noqa: F401  (registers the disco and drpo policy losses)
from rlfold.algos import preference  # noqa: F401  (registers PREFERENCE_LOSSES)
from rlfold.algos import occupancy, regularizers  # noqa: F401  (registers REGULARIZERS: chi2_occupancy)
from rlfold.algos import pipo  # noqa: F401  (registers the pipo replay part)
from rlfold.algos import spae  # noqa: F401  (registers the spae advantage)
from rlfold.algos.replay import REPLAYS
from rlfold.algos.advantages import ADVANTAGES
from rlfold.algos.aggregation import AGGREGATIONS, Aggregation, aggregate
from rlfold.algos.kl import KL_ESTIMATORS
from rlfold.algos.policy_losses import POLICY_LOSSES
from rlfold.core.registry import GROUP_FILTERS, REGULARIZERS, SELECTIONS

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "GROUP_FILTERS",
    "Aggregation",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "REGULARIZERS",
    "REPLAYS",
    "SELECTIONS",
    "advantages",
    "aggregate",
    "aggregation",
    "critic",
    "group_filters",
    "selection",
    "token_advantages",
    "kl",
    "occupancy",
    "regularizers",
    "policy_losses",
]
