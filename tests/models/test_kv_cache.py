"""models.kv_cache: the KV-cache keyword per model across the past_key_values -> cache rename."""

import dataclasses

from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from rlfold.models import kv_cache as kv


class _Old(nn.Module):
    def forward(self, input_ids, past_key_values=None, use_cache=False):  # a transformers 4.x-style forward
        return None


class _Wrapper(nn.Module):
    def forward(self, *args, **kwargs):
        return None


def test_the_model_s_own_keyword_wins_and_a_kwargs_wrapper_gets_the_library_s():
    assert kv.cache_argument(kv.forward_parameters(_Old())) == "past_key_values"
    assert kv.cache_argument({"input_ids": None, "cache": None}) == "cache"
    assert kv.cache_argument(kv.forward_parameters(_Wrapper())) == kv.LIBRARY_CACHE


def test_the_library_name_is_the_output_field_of_this_transformers():
    fields = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
    assert kv.LIBRARY_CACHE in fields


def test_returned_cache_reads_either_key_and_none_without():
    assert kv.returned_cache({"logits": 1, "cache": "c"}) == "c"
    assert kv.returned_cache({"logits": 1, "past_key_values": "p"}) == "p"
    assert kv.returned_cache({"logits": 1}) is None
