"""Rollout layer: the engine contract, sampling parameters, engines and the multi-turn engine (token in, token out)."""

from rlfold.rollout.base import Engine, EngineContext, GenerationRequest, requests_for
from rlfold.rollout.build import build_engine, build_engines, build_eval_engine
from rlfold.rollout.hf_engine import ENGINES, HFEngine
from rlfold.rollout.multi_turn import MultiTurnEngine
from rlfold.rollout.openai_server import OpenAIServer
from rlfold.rollout.ray_engine import RayEngine
from rlfold.rollout.sampling import SamplingParams, process_logits
from rlfold.rollout.sharding import ShardedEngine
from rlfold.rollout.verifiers_engine import VerifiersEngine
from rlfold.rollout.vllm_engine import VLLMEngine
from rlfold.rollout.vllm_server import VLLMServerEngine

__all__ = ["ENGINES", "Engine", "EngineContext", "GenerationRequest", "HFEngine", "MultiTurnEngine", "OpenAIServer", "RayEngine", "ShardedEngine",
           "SamplingParams", "VerifiersEngine", "VLLMEngine", "VLLMServerEngine", "build_engine", "build_engines", "build_eval_engine", "process_logits", "requests_for"]
