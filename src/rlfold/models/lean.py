"""A lean forward for Llama-family decoders (Qwen2, Llama, Mistral): the parameters and maths of the
transformers module with less work around them.

transformers' forward serves every use (hooks, caches of many kinds, attention back-ends, output
dataclasses); a trainer needs three things and this module does only those:

- ``logits(ids, mask, pos, start, stop)``: a full forward whose final norm and LM head run only on the
  positions ``start:stop`` whose log-probs are read (the response), not the prompt;
- attention in bf16 as two batched matrix products with the grouped key/value heads read in place, not
  copied: on the CPU the fused ``scaled_dot_product_attention`` kernel's bf16 backward is several times
  slower than the rest of the layer (in float32 the fused kernel is faster and is used);
- ``LeanCache``: generation with a key/value cache allocated once for the whole response, written in place
  (transformers' dynamic cache concatenates, copying itself at every token).

A model is run this way only when :func:`why_not_lean` finds nothing it would compute differently
(exact ``nn.Linear`` projections, so no peft adapter or quantised layer; SiLU; the default rotary
embedding; no sliding window; no gradient checkpointing); otherwise callers use the transformers
forward. In float32 the logits equal transformers' to float rounding (tested to 1e-5).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)
# architectures (the config's model_type) whose decoder layer is: RMSNorm, q/k/v/o projections with rotary
# embedding and grouped-query attention, RMSNorm, SiLU-gated MLP; both sublayers residual
LEAN_MODEL_TYPES = ("qwen2", "llama", "mistral")
_ENABLED: "weakref.WeakKeyDictionary[torch.nn.Module, LeanDecoder]" = weakref.WeakKeyDictionary()


def _checkpointing(model: torch.nn.Module) -> bool:
    """Whether transformers' activation checkpointing is on (its newer name first: the old one warns)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def why_not_lean(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot run on the lean path (None: it can)."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in LEAN_MODEL_TYPES:
        return f"architecture {kind or type(model).__name__!r} is not one of {', '.join(LEAN_MODEL_TYPES)}"
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "layers") or not hasattr(model, "lm_head"):
        return f"{type(model).__name__} is not a plain causal LM (model.layers, lm_head)"
    if getattr(config, "hidden_act", None) != "silu":
        return f"hidden_act={config.hidden_act!r} (the lean MLP is SiLU-gated)"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return f"rope_type={rope.get('rope_type')!r} (only the default rotary embedding)"
    if getattr(config, "use_sliding_window", False) or (kind == "mistral" and config.sliding_window is not None):
        return "a sliding attention window"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp != 1"
    if _checkpointing(model):
        return "gradient checkpointing is on"
    if type(model.lm_head) is not torch.nn.Linear:
        return f"lm_head is a {type(model.lm_head).__name__}"
    for i, layer in enumerate(base.layers):
        at, mlp = layer.self_attn, layer.mlp
        for name, mod in (("q_proj", at.q_proj), ("k_proj", at.k_proj), ("v_proj", at.v_proj), ("o_proj", at.o_proj),
                          ("gate_proj", mlp.gate_proj), ("up_proj", mlp.up_proj), ("down_proj", mlp.down_proj)):
            if type(mod) is not torch.nn.Linear:
                return f"layer {i} {name} is a {type(mod).__name__} (an adapter or quantised layer)"
        if getattr(at, "layer_type", "full_attention") not in (None, "full_attention"):
            return f"layer {i} uses {at.layer_type} attention"
    return None


def enable_lean(model: torch.nn.Module) -> bool:
    """Run ``model`` on the lean path from now on where it can (see :func:`why_not_lean`); whether it can."""
    if why_not_lean(model) is not None:
        return False
    _ENABLED[model] = LeanDecoder(model)
    return True


def use_lean(model: torch.nn.Module, forward: str, strategy: str = "single") -> bool:
    """Apply ``model.forward`` to the policy ``model``: the lean forward when asked for and possible (FSDP2 runs
    each layer's own forward, which gathers its shards, so it keeps transformers'); whether it is on."""
    if forward != "lean" or strategy == "fsdp2":
        return False
    why = why_not_lean(model)
    if why is not None:
        logger.info("model.forward=lean: using the transformers forward, since %s", why)
        return False
    _ENABLED[model] = LeanDecoder(model)
    return True


def lean_of(model: torch.nn.Module) -> "LeanDecoder | None":
    """The lean decoder of ``model`` if it was enabled and still qualifies (gradient checkpointing may be
    switched on later), else None."""
    dec = _ENABLED.get(model)
    if dec is None or _checkpointing(model):
        return None
    return dec


def _rotate_half(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _rms(x: Tensor, norm: torch.nn.Module) -> Tensor:
    """transformers' RMSNorm: in float32, back to the input dtype, times the weight."""
    if x.dtype == torch.float32 and norm.weight.dtype == torch.float32:  # the same maths, one fused op
        return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(dtype)


def _attend(q: Tensor, k: Tensor, v: Tensor, blocked: Tensor, scale: float) -> Tensor:
    """Grouped-query attention ``[n, H, l, d]`` from keys/values ``[n, KV, t, d]``; ``blocked [n, 1, l, t]`` is
    True where a query may not attend. In float32 (with more than one query) the fused kernel; else two
    products whose query heads of one key/value head are stacked as rows, so keys and values are read in
    place, never expanded to every query head, and the scores stay in the products' dtype (the softmax
    accumulates in float32)."""
    n, h, l, d = q.shape
    if q.dtype == torch.float32 and l > 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=~blocked, scale=scale, enable_gqa=True)
    kv = k.shape[1]
    group = h // kv
    with torch.autocast(q.device.type, enabled=False):  # q, k, v are already in the compute dtype
        scores = torch.matmul((q * scale).reshape(n, kv, group * l, d), k.transpose(-1, -2))
        scores = scores.view(n, kv, group, l, -1).masked_fill(blocked.unsqueeze(2), torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1).view(n, kv, group * l, -1)
        return torch.matmul(probs, v).view(n, h, l, d)


@dataclass
class LeanCache:
    """Keys and values ``[n, KV, capacity, d]`` per layer (allocated at the first write, in the dtype the
    layer computes them in), the key mask ``[n, capacity]`` and the filled length."""

    key_mask: Tensor
    weights: dict[torch.nn.Module, tuple[Tensor, Tensor | None]] | None = None  # linear weights cast once (autocast)
    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    length: int = 0

    def write(self, layer: int, k: Tensor, v: Tensor, span: int) -> tuple[Tensor, Tensor]:
        """Store layer ``layer``'s new keys/values after the cached ones; the first ``span`` positions."""
        if layer == len(self.keys):
            rows, capacity = self.key_mask.shape
            self.keys.append(k.new_zeros((rows, k.shape[1], capacity, k.shape[3])))
            self.values.append(v.new_zeros((rows, v.shape[1], capacity, v.shape[3])))
        s, end = self.length, self.length + k.shape[2]
        self.keys[layer][:, :, s:end] = k
        self.values[layer][:, :, s:end] = v
        return self.keys[layer][:, :, :span], self.values[layer][:, :, :span]


class LeanDecoder:
    """The lean forward of one model (its own parameters: nothing is copied)."""

    def __init__(self, model: torch.nn.Module) -> None:
        config = model.config
        self.model = weakref.proxy(model)
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim ** -0.5

    # ----------------------------------------------------------------- layers
    @staticmethod
    def _lin(mod: torch.nn.Linear, x: Tensor, cast: dict | None) -> Tensor:
        """The projection ``mod`` (called as a module, so its hooks run), or with weights cast for generation."""
        if cast is None:
            return mod(x)
        w, b = cast[mod]
        return F.linear(x, w, b)

    def _qkv(self, at, h: Tensor, cos: Tensor, sin: Tensor, cast: dict | None,
             cd: torch.dtype | None) -> tuple[Tensor, Tensor, Tensor]:
        n, l, _ = h.shape
        q = self._lin(at.q_proj, h, cast).view(n, l, self.heads, self.head_dim).transpose(1, 2)
        k = self._lin(at.k_proj, h, cast).view(n, l, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self._lin(at.v_proj, h, cast).view(n, l, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cd is not None:  # what autocast would cast them to at the products: once here
            q, k, v = q.to(cd), k.to(cd), v.to(cd)
        return q, k, v

    def _layers(self, x: Tensor, pos: Tensor, blocked: Tensor, cache: LeanCache | None) -> Tensor:
        base = self.model.model
        cos, sin = base.rotary_emb(x, pos)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        n, l, _ = x.shape
        cast = None if cache is None else cache.weights
        lin = self._lin
        # under autocast, each linear input is cast once (autocast casts it again for every linear reading it)
        cd = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        to_cd = (lambda t: t) if cd is None else (lambda t: t.to(cd))
        for i, layer in enumerate(base.layers):
            at = layer.self_attn
            q, k, v = self._qkv(at, to_cd(_rms(x, layer.input_layernorm)), cos, sin, cast, cd)
            if cache is not None:
                k, v = cache.write(i, k, v, blocked.shape[-1])
            o = _attend(q, k, v, blocked, self.scale).transpose(1, 2).reshape(n, l, -1)
            x = x + lin(at.o_proj, o, cast)
            h = to_cd(_rms(x, layer.post_attention_layernorm))
            mlp = layer.mlp
            x = x + lin(mlp.down_proj, F.silu(lin(mlp.gate_proj, h, cast)) * lin(mlp.up_proj, h, cast), cast)
        return x

    def _head(self, x: Tensor, cast: dict | None = None) -> Tensor:
        return self._lin(self.model.lm_head, _rms(x, self.model.model.norm), cast)

    # -------------------------------------------------------------- full pass
    def logits(self, ids: Tensor, mask: Tensor, pos: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """Logits ``[n, stop - start, V]`` of positions ``start:stop`` of a left- or right-padded batch
        (``mask``: 1 on attended tokens, ``pos``: position ids), causal attention over attended keys."""
        n, l = ids.shape
        x = self.model.model.embed_tokens(ids)
        allowed = torch.ones(l, l, dtype=torch.bool, device=ids.device).tril()[None] & mask.bool()[:, None, :]
        x = self._layers(x, pos, ~allowed[:, None], None)
        return self._head(x[:, start:stop])

    # ------------------------------------------------------------- generation
    def new_cache(self, rows: int, capacity: int, device: torch.device) -> LeanCache:
        """An empty cache for ``rows`` sequences of up to ``capacity`` tokens. Under autocast the linear
        weights are cast here once for the whole generation (autocast would cast them at every token)."""
        cast = None
        if torch.is_autocast_enabled(device.type):
            dtype = torch.get_autocast_dtype(device.type)
            cast = {m: (m.weight.detach().to(dtype), None if m.bias is None else m.bias.detach().to(dtype))
                    for m in self.model.modules() if isinstance(m, torch.nn.Linear)}
        return LeanCache(key_mask=torch.zeros(rows, capacity, dtype=torch.bool, device=device), weights=cast)

    def extend(self, cache: LeanCache, ids: Tensor, mask: Tensor, pos: Tensor) -> Tensor:
        """Feed ``ids [n, l]`` (``mask``: which are real tokens) after the cached ones; the last position's
        logits ``[n, V]``. The first call is the prefill, later ones one token each."""
        n, l = ids.shape
        s = cache.length
        if s + l > cache.key_mask.shape[1]:
            raise RuntimeError(f"lean cache holds {cache.key_mask.shape[1]} tokens, asked for {s + l}")
        cache.key_mask[:, s : s + l] = mask.bool()
        # a token attends over the whole cache, its empty end masked: the full tensors are contiguous, where a
        # slice of them would be copied by every (bf16) product; the prefill reads only its own positions
        span = s + l if s == 0 else cache.key_mask.shape[1]
        keys = cache.key_mask[:, :span]
        causal = torch.ones(l, span, dtype=torch.bool, device=ids.device).tril(diagonal=s)
        allowed = causal[None] & keys[:, None, :]
        x = self._layers(self.model.model.embed_tokens(ids), pos, ~allowed[:, None], cache)
        cache.length = s + l
        return self._head(x[:, -1:], cache.weights)[:, 0]


__all__ = ["LEAN_MODEL_TYPES", "LeanCache", "LeanDecoder", "enable_lean", "lean_of", "use_lean", "why_not_lean"]
