"""rlfold: reinforcement-learning post-training of language models, one recipe per method."""

__version__ = "0.1.0"

# Every layer registers its built-in parts into the core registries when imported; importing the
# package registers them all, so configurations can name any of them.
from rlfold import algos, envs, rewards, rollout, tasks, trainers  # noqa: E402,F401
