"""Tasks: datasets of prompts with verifiable answers."""

from rlfold.tasks.base import TASKS, Task, load_jsonl_prompts
from rlfold.tasks import arithmetic as _arithmetic  # noqa: F401  (registers "arith")
from rlfold.tasks import verbose_arith as _verbose_arith  # noqa: F401  (registers "verbose_arith")
from rlfold.tasks import confidence_arith as _confidence_arith  # noqa: F401  (registers "confidence_arith")
from rlfold.tasks import choice_arith as _choice_arith  # noqa: F401  (registers "choice_arith")
from rlfold.tasks import knowledge as _knowledge  # noqa: F401  (registers "search_qa")
from rlfold.tasks.sampling import PromptSampler  # registers the "uniform" sampler
from rlfold.tasks.domain_mix import DomainMixSampler  # registers the "domain_mix" sampler

__all__ = ["TASKS", "DomainMixSampler", "PromptSampler", "Task", "load_jsonl_prompts"]
