"""Rollout layer: sampling parameters and generation engines (token in, token out)."""

from rlfold.rollout.hf_engine import ENGINES, HFEngine, sequence_logprobs
from rlfold.rollout.sampling import SamplingParams, process_logits

__all__ = ["ENGINES", "HFEngine", "SamplingParams", "process_logits", "sequence_logprobs"]
