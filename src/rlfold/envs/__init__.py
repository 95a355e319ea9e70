"""Environments the model talks to between turns (``rlfold.core.contracts.Environment``).

Importing this package registers the built-in environments in ``ENVIRONMENTS``; the generic
multi-turn engine (``rlfold.rollout.multi_turn``) runs any of them over any engine.
"""

from rlfold.core.registry import ENVIRONMENTS
from rlfold.envs.fission import FissionToolAgentEnv
from rlfold.envs.followups import ShuffledOptions  # registers the "shuffled_options" follow-up
from rlfold.envs.multi_attempt import MultiAttemptEnv
from rlfold.envs.skyrl import SkyRLGymEnv
from rlfold.envs.tool_agent import ToolAgentEnv
from rlfold.envs.tool_formats import Action, Doc, R1SearcherFormat, SearchR1Format
from rlfold.envs.tools import BM25Search, Calculator, PythonRunner

__all__ = ["Action", "BM25Search", "Calculator", "Doc", "ENVIRONMENTS", "FissionToolAgentEnv", "MultiAttemptEnv",
           "PythonRunner", "R1SearcherFormat", "SearchR1Format", "ShuffledOptions", "SkyRLGymEnv", "ToolAgentEnv"]
