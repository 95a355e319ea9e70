"""The vLLM engines' plain-data parts, without vLLM: the one-to-one mapping of sampling parameters, how
vLLM's per-token log-probs become rlfold's two log-prob fields, rows -> batch, and the error when vLLM
is missing or cannot import."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from rlfold.core.errors import ConfigError, DataError
from rlfold.core.types import FINISH_LENGTH, FINISH_STOP
from rlfold.rollout import vllm_common
from rlfold.rollout.assemble import RowOutput, batch_from_rows, finish_reason
from rlfold.rollout.sampling import SamplingParams
from rlfold.rollout.vllm_common import is_plain, row_output, row_seed, sampling_kwargs


def test_sampling_parameters_map_one_to_one():
    p = SamplingParams(temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=32, n=4, stop_token_ids=[7],
                       stop_strings=["\n"], ignore_eos=True)
    kw = sampling_kwargs(p, max_tokens=12, seed=123)
    assert kw == {"n": 1, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "max_tokens": 12, "seed": 123,
                  "stop_token_ids": [7], "stop": ["\n"], "include_stop_str_in_output": True, "ignore_eos": True,
                  "logprobs": 0, "detokenize": True, "skip_special_tokens": True}
    greedy = sampling_kwargs(SamplingParams(temperature=0.0), max_tokens=4, seed=9)
    assert greedy["seed"] is None and greedy["temperature"] == 0.0 and greedy["stop"] is None
    assert greedy["detokenize"] is False  # no stop string: nothing needs the text


def test_row_seeds_are_distinct_and_reproducible():
    seeds = [row_seed(5, r) for r in range(64)]
    assert len(set(seeds)) == 64 and seeds == [row_seed(5, r) for r in range(64)]
    assert all(0 <= s < 2**63 for s in seeds) and row_seed(6, 0) != row_seed(5, 0)


@pytest.mark.parametrize("params, plain", [
    (SamplingParams(temperature=0.0, top_p=0.5), True),
    (SamplingParams(temperature=1.0), True),
    (SamplingParams(temperature=0.7), False),
    (SamplingParams(top_p=0.9), False),
    (SamplingParams(top_k=3), False),
])
def test_plain_sampling(params, plain):
    assert is_plain(params) is plain


def test_row_output_fills_sampling_and_policy_logprobs_by_the_kind_of_sampling():
    lps = [-0.5, -0.25]
    greedy = row_output([1, 2], [5, 2], lps, "stop", SamplingParams(temperature=0.0), "x")
    assert greedy.sample == [0.0, 0.0] and greedy.policy == lps and greedy.finish == FINISH_STOP
    plain = row_output([1], [5, 2], lps, "length", SamplingParams(), "x")
    assert plain.sample == lps and plain.policy == lps and plain.finish == FINISH_LENGTH
    hot = row_output([1], [5, 2], lps, "stop", SamplingParams(temperature=0.5), "x")
    assert hot.sample == lps and all(math.isnan(x) for x in hot.policy)


def test_finish_reasons():
    assert [finish_reason(r) for r in ("stop", "length", "abort", None)] == [FINISH_STOP, FINISH_LENGTH,
                                                                           FINISH_LENGTH, FINISH_LENGTH]


def test_rows_become_a_left_and_right_padded_batch():
    rows = [RowOutput([1, 2, 3], [7], [-0.1], [-0.2], FINISH_STOP, "a"),
            RowOutput([4], [8, 9, 2], [-0.3, -0.4, -0.5], [-0.6, -0.7, -0.8], FINISH_LENGTH, "bc")]
    b = batch_from_rows(rows, pad_id=0)
    assert b.prompt_ids.tolist() == [[1, 2, 3], [0, 0, 4]] and b.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert b.response_ids.tolist() == [[7, 0, 0], [8, 9, 2]] and b.response_mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert torch.allclose(b.sample_logprobs, torch.tensor([[-0.1, 0, 0], [-0.3, -0.4, -0.5]]))
    assert torch.allclose(b.policy_logprobs, torch.tensor([[-0.2, 0, 0], [-0.6, -0.7, -0.8]]))
    assert b.finish_reasons == [FINISH_STOP, FINISH_LENGTH] and b.response_texts == ["a", "bc"]


@pytest.mark.parametrize("rows, match", [
    ([], "no rows"),
    ([RowOutput([1], [], [], [])], "row 0 has an empty response"),
    ([RowOutput([1], [2, 3], [-1.0], [-1.0, -1.0])], "2 tokens but 1 sampling"),
])
def test_bad_rows_are_errors(rows, match):
    with pytest.raises(DataError, match=match):
        batch_from_rows(rows, pad_id=0)


def test_missing_vllm_names_the_extra(monkeypatch):
    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "vllm":
            raise ModuleNotFoundError("No module named 'vllm'")
        return real(name, *a, **k)

    monkeypatch.setattr(vllm_common.importlib, "import_module", fake)
    with pytest.raises(ConfigError, match=r"rollout.engine=vllm needs vLLM.*rlfold\[vllm\].*test_vllm_cpu.sh"):
        vllm_common.import_vllm("vllm")


def test_a_vllm_that_cannot_import_names_the_cause(monkeypatch):
    """The CUDA wheel on a machine without a GPU installs but fails at import with a native error."""
    def fake(name, *a, **k):
        raise RuntimeError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(vllm_common.importlib, "import_module", fake)
    with pytest.raises(ConfigError, match=r"installed but cannot be imported \(RuntimeError: libcuda.*rlfold\[vllm\]"):
        vllm_common.import_vllm("vllm_server")
