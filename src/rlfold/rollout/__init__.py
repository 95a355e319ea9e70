"""Rollout layer: sampling parameters and generation engines (token in, token out)."""

from rlfold.rollout.hf_engine import ENGINES, HFEngine, sequence_logprobs
from rlfold.rollout.multi_attempt import MultiAttemptBatch, MultiAttemptEngine
from rlfold.rollout.sampling import SamplingParams, process_logits

__all__ = ["ENGINES", "HFEngine", "MultiAttemptBatch", "MultiAttemptEngine", "SamplingParams", "process_logits", "sequence_logprobs"]
