"""LoRA on the policy through peft (Hu et al. 2021, arXiv 2106.09685).

The policy module is the transformers model with peft's LoRA layers injected (only the adapters
train); its KL reference is the same module inside peft's ``disable_adapter()``; engines with
weights of their own and the saved model directories get merged plain weights, W + (alpha / r) B A
under the base model's parameter names, computed one parameter at a time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ContextManager

import torch
from torch import Tensor

from rlfold.core.errors import ConfigError
from rlfold.models.policy import NamedTensors, Policy

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_DIR = "adapter"
SHARD_BYTES = 1 << 30  # merged weights are written in safetensors shards of at most about this size


def _peft() -> Any:
    try:
        import peft
    except ImportError as exc:
        raise ConfigError("model.lora needs the peft package, which is not installed: pip install 'rlfold[lora]' "
                          f"(or set model.lora=null for full fine-tuning) [{exc}]") from None
    return peft


def _linear_modules(model: torch.nn.Module) -> list[str]:
    """The dotted names of the model's ``nn.Linear`` modules, the output embedding (often tied) excluded."""
    out = model.get_output_embeddings() if isinstance(model, _pretrained()) else None
    return [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not out and name]


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct last name components of the model's linear modules (what ``target_modules`` takes)."""
    return sorted({name.rsplit(".", 1)[-1] for name in _linear_modules(model)})


def _pretrained() -> type:
    from transformers import PreTrainedModel

    return PreTrainedModel


def target_modules(model: torch.nn.Module, targets: list[str] | None) -> list[str]:
    """The checked ``model.lora.target_modules`` (None: the default projections the model has)."""
    names = linear_module_names(model)
    full = _linear_modules(model)
    known = ", ".join(names) or "none"
    if targets is None:
        chosen = [t for t in DEFAULT_TARGETS if t in names]
        if not chosen:
            raise ConfigError(f"model.lora.target_modules: the model has none of the default projections "
                              f"({', '.join(DEFAULT_TARGETS)}); set it to some of its linear modules: {known}")
        return chosen
    for t in targets:
        if t not in names and not any(n == t or n.endswith("." + t) for n in full):
            raise ConfigError(f"model.lora.target_modules: the model has no linear module {t!r}; its linear "
                              f"modules are: {known}")
    return list(targets)


def lora_policy(model: torch.nn.Module, lora: Any) -> Policy:
    """Wrap ``model`` (a transformers causal LM) with LoRA adapters per ``lora`` (a ``LoraConfig``)."""
    peft = _peft()
    targets = target_modules(model, lora.target_modules)
    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                             bias=lora.bias, task_type="CAUSAL_LM")
    wrapped = peft.get_peft_model(model, config)
    adapted = LoraModel(wrapped)
    return Policy(module=adapted.module, saved=MergedSave(adapted), weights=adapted,
                  state={"adapter": AdapterState(adapted.module)}, base_view=adapted.adapters_disabled)


class LoraModel:
    """A peft-wrapped policy: its module, its base-model view and its merged weights."""

    def __init__(self, wrapped: Any) -> None:
        from peft.tuners.lora import LoraLayer

        self.peft = wrapped
        self.module: torch.nn.Module = wrapped.get_base_model()  # the transformers model, adapters injected
        self.layers = {name: m for name, m in self.module.named_modules() if isinstance(m, LoraLayer)}

    def adapters_disabled(self) -> ContextManager[Any]:
        """A context in which the module computes the base model (peft's ``disable_adapter``)."""
        return self.peft.disable_adapter()

    def _merged(self, layer: Any, weight: Tensor) -> Tensor:
        merged = weight.detach().clone()
        if layer.merged or layer.disable_adapters:
            return merged
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A:
                merged += layer.get_delta_weight(adapter).to(merged.dtype)
        return merged

    @torch.no_grad()
    def named_weights(self) -> NamedTensors:
        """The merged weights under the base model's names, computed one parameter at a time."""
        for name, p in self.module.named_parameters():
            if ".lora_" in name:
                continue
            prefix, sep, leaf = name.partition(".base_layer.")
            if not sep:
                yield name, p.detach()
            elif leaf == "weight" and prefix in self.layers:
                yield f"{prefix}.weight", self._merged(self.layers[prefix], p)
            else:
                yield f"{prefix}.{leaf}", p.detach()

    def plain_copy(self) -> torch.nn.Module:
        """A plain transformers module with the merged weights (built from the config, no peft layers)."""
        from transformers import AutoModelForCausalLM

        first = next(self.module.parameters())
        copy = AutoModelForCausalLM.from_config(self.module.config, dtype=first.dtype).to(first.device)
        own = dict(copy.named_parameters())
        sent = set()
        with torch.no_grad():
            for name, t in self.named_weights():
                own[name].copy_(t)
                sent.add(name)
        missing = sorted(set(own) - sent)
        if missing:
            raise ConfigError(f"LoRA policy: the merged weights lack {', '.join(missing[:5])}")
        return copy.eval()


class MergedSave:
    """What checkpoints and ``final/`` save for a LoRA policy: a plain HF model directory of the merged weights
    (no peft needed to load it) and the adapter in ``adapter/``. A checkpoint's merged weights are checked on
    resume; the exact adapter comes back from the trainer state (``AdapterState``), the base from model.path."""

    def __init__(self, lora: LoraModel) -> None:
        self.lora = lora

    def parameters(self):
        return self.lora.module.parameters()

    def buffers(self):
        return self.lora.module.buffers()

    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        module = self.lora.module
        module.config.save_pretrained(root)
        if module.generation_config is not None:
            module.generation_config.save_pretrained(root)
        shards: list[dict[str, Tensor]] = [{}]
        size = total = 0
        for name, t in self.lora.named_weights():
            nbytes = t.numel() * t.element_size()
            if shards[-1] and size + nbytes > SHARD_BYTES:
                self._write(root, shards, save_file)
                shards.append({})
                size = 0
            shards[-1][name] = t.contiguous().cpu()
            size, total = size + nbytes, total + nbytes
        self._write(root, shards, save_file, total=total)
        self.lora.peft.save_pretrained(root / ADAPTER_DIR)

    def _write(self, root: Path, shards: list[dict[str, Tensor]], save_file: Any, total: int | None = None) -> None:
        """Write the newest shard (freeing its tensors); at the end (``total`` bytes given), name the shards and
        write the index."""
        i = len(shards)
        if shards[-1]:
            save_file(shards[-1], str(root / f"shard-{i:05d}.safetensors"), metadata={"format": "pt"})
            shards[-1] = {name: torch.empty(0) for name in shards[-1]}
        if total is None:
            return
        if len(shards) == 1:
            (root / "shard-00001.safetensors").rename(root / "model.safetensors")
            return
        n, weight_map = len(shards), {}
        for j, shard in enumerate(shards, 1):
            final = f"model-{j:05d}-of-{n:05d}.safetensors"
            (root / f"shard-{j:05d}.safetensors").rename(root / final)
            weight_map.update({name: final for name in shard})
        (root / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1, sort_keys=True) + "\n",
            encoding="utf-8")

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Check a checkpoint's merged weights against the policy's names and shapes (nothing is written:
        the base weights are the frozen ones of model.path and the adapter is restored from the trainer state)."""
        want = {name: tuple(t.shape) for name, t in self.lora.named_weights()}
        odd = [f"{n} missing" if n not in state else f"{n} has shape {tuple(state[n].shape)}, not {shape}"
               for n, shape in want.items() if n not in state or tuple(state[n].shape) != shape]
        if odd:
            raise ConfigError("the checkpoint's model does not match the LoRA policy's base model: "
                              + "; ".join(odd[:5]))


class AdapterState:
    """The trainable (adapter) parameters as registered state, so a resume restores them exactly."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.params = {name: p for name, p in module.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, Tensor]:
        return {name: p.detach().clone() for name, p in self.params.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if set(state) != set(self.params):
            odd = sorted(set(state) ^ set(self.params))
            raise ConfigError(f"the checkpoint's adapter does not match model.lora (parameters {odd[:5]})")
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(state[name])


__all__ = ["ADAPTER_DIR", "DEFAULT_TARGETS", "AdapterState", "LoraModel", "MergedSave", "linear_module_names",
           "lora_policy", "target_modules"]
