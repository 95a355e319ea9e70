"""rlfold: reinforcement-learning post-training of language models, one recipe per method."""

__version__ = "0.1.0"
