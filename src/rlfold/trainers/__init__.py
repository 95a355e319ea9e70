"""Trainers: the shared run loop and the steps it runs (``TRAINERS``: online RL, offline preference
optimisation, reward modelling, Q♯ value-guided decoding); supervised fine-tuning."""

from rlfold.trainers import online as _online  # noqa: F401  (registers the "online" trainer)
from rlfold.trainers import preference as _preference  # noqa: F401  (registers the "preference" trainer)
from rlfold.trainers import guided_decoding as _guided_decoding  # noqa: F401  (registers "guided_decoding")
from rlfold.trainers import reward_modeling as _reward_modeling  # noqa: F401  (registers "reward_modeling")
from rlfold.trainers import trackers as _trackers  # noqa: F401  (registers the experiment trackers)
