"""Rollouts with a plain transformers model: batched, KV-cached sampling that records exact log-probs."""

from __future__ import annotations

from typing import Iterable, Literal, Sequence

import torch

from rlfold.core import registry
from rlfold.core.errors import ConfigError, DataError
from rlfold.core.masked import positions_from_mask as _positions
from rlfold.core.seeding import generator_for
from rlfold.core.types import FINISH_LENGTH, FINISH_STOP, RolloutBatch
from rlfold.models.kv_cache import cache_argument, forward_parameters, returned_cache
from rlfold.models.lean import LeanDecoder, enable_lean, lean_of
from rlfold.models.logprobs import model_device as _device
from rlfold.models.placement import compute_dtype, threads_for
from rlfold.rollout.base import EngineContext, GenerationRequest, encode_request, pad_id_of
from rlfold.rollout.sampling import SamplingParams, process_logits
from rlfold.rollout.weight_sync import full_tensor

ENGINES = registry.ENGINES

def _returned_cache(model, out):
    """The KV cache of a forward's output; a ConfigError naming the model when it returned none."""
    cache = returned_cache(out)
    if cache is None:
        raise ConfigError(f"hf engine: {type(model).__name__}.forward(use_cache=True) returned no KV cache "
                          f"(output fields: {', '.join(out.keys())}); the engine needs a model that caches")
    return cache


@ENGINES.register("hf")
class HFEngine:
    """Generates with a ``transformers`` causal LM in this process (CPU or one GPU).

    ``weights="shared"`` (default) samples with the trainer's own module, so new weights are there at
    once and the engine's log-probs are the trainer's. ``weights="copy"`` samples with a private copy
    that changes only through ``update_weights``, as an engine in another process would (vLLM): the
    trainer then recomputes old log-probs, and ``tis`` can compare both.
    """

    def __init__(self, ctx: EngineContext, *, weights: Literal["shared", "copy"] = "shared",
                 threads: int | Literal["auto"] = "auto") -> None:
        if weights not in ("shared", "copy"):
            raise ConfigError(f"hf engine: weights must be 'shared' or 'copy', got {weights!r}")
        if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
            raise ConfigError(f"hf engine: threads must be 'auto' or a count >= 0 (0: the process's), got {threads!r}")
        self.threads = threads
        self.shares_weights = weights == "shared"
        model = ctx.model
        if not self.shares_weights:
            model = ctx.policy_weights().plain_copy().eval().requires_grad_(False)
            if lean_of(ctx.model) is not None:
                enable_lean(model)
        self.model = model
        self.autocast = ctx.autocast
        tokenizer = ctx.tokenizer
        self.tokenizer = tokenizer
        self.pad_id = pad_id_of(tokenizer, "HFEngine")
        self.eos_id = tokenizer.eos_token_id
        forward_params = forward_parameters(model)
        self._keep_arg = "logits_to_keep" in forward_params
        self._cache_arg = cache_argument(forward_params)

    # ------------------------------------------------------------ weights, memory
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], streamed: bool = False) -> None:
        """Copy new weights into the engine's module (nothing to do when it shares the trainer's).

        Tensors are copied one at a time as they arrive, so ``streamed`` iterators need no buffer."""
        if self.shares_weights:
            return
        own = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in own:
                    raise ConfigError(f"hf engine: update_weights got {name!r}, which the engine's model does not "
                                      f"have (it has e.g. {', '.join(list(own)[:3])})")
                own[name].copy_(full_tensor(tensor).to(own[name].device, own[name].dtype))  # FSDP2: gathered

    def sleep(self) -> None:
        """Nothing to release: an in-process module keeps its memory."""

    def wake(self) -> None:
        """Nothing to retake (see ``sleep``)."""

    # ------------------------------------------------------------------ helpers
    def encode(self, request: GenerationRequest, index: int = 0) -> list[int]:
        """The prompt token ids of ``request`` (context ids, chat template, or the prompt text)."""
        return encode_request(self.tokenizer, request, index, engine="HFEngine")

    def _encode(self, requests: Sequence[GenerationRequest], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows: list[list[int]] = []
        for i, req in enumerate(requests):
            rows.extend([self.encode(req, i)] * n)
        width = max(len(r) for r in rows)
        prompt_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            prompt_ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            prompt_mask[i, width - len(r) :] = 1
        return prompt_ids, prompt_mask

    def _forward(self, ids, mask, pos, cache, capacity: int, lean: LeanDecoder | None):
        """Last-position logits [n, V] of feeding ``ids`` after ``cache`` (None: the prefill, which sizes a lean
        cache for ``capacity`` more tokens), and the new cache; on ``lean``'s forward when given."""
        if lean is not None:
            if cache is None:
                cache = lean.new_cache(ids.shape[0], ids.shape[1] + capacity, ids.device)
            return lean.extend(cache, ids, mask[:, -ids.shape[1]:], pos).float(), cache
        kwargs = {"logits_to_keep": 1} if self._keep_arg else {}
        kwargs[self._cache_arg] = cache
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **kwargs)
        return out.logits[:, -1, :].float(), _returned_cache(self.model, out)

    def decode_threads(self) -> int | None:
        """Torch threads for sampling on the CPU: ``auto`` (None) is one while a decode step's multiply-adds
        (rows x parameters) are small (``models.placement.threads_for``); 0: the process's count."""
        if self.threads == "auto":
            return None
        return self.threads or torch.get_num_threads()

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # --------------------------------------------------------------- generation
    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams, seed: int) -> RolloutBatch:
        """Sample ``params.n`` responses per request; rows are ``[r0 s0, r0 s1, ..., r1 s0, ...]``."""
        if not requests:
            raise DataError("HFEngine.generate: got an empty list of requests")
        prompt_ids, prompt_mask = self._encode(requests, params.n)
        limits = [min(r.max_new_tokens or params.max_new_tokens, params.max_new_tokens)
                  for r in requests for _ in range(params.n)]
        generator = None if params.greedy else generator_for(seed)
        was_training = self.model.training
        self.model.eval()
        work = prompt_ids.shape[0] * sum(p.numel() for p in self.model.parameters())
        try:
            with self.autocast():
                cdtype = compute_dtype(self.model)
            with threads_for(work, _device(self.model), self.decode_threads(), cdtype), torch.no_grad(), \
                    self.autocast():
                cols = self._sample(prompt_ids, prompt_mask, params, generator, limits)
        finally:
            self.model.train(was_training)
        tokens, token_mask, sample_lp, policy_lp, entropy, reasons = cols
        n_rows = prompt_ids.shape[0]
        lengths = token_mask.sum(-1)
        width = int(lengths.max())  # >= 1: every row samples at least one token
        response_ids, response_mask = tokens[:, :width].contiguous(), token_mask[:, :width].contiguous()
        s_lp, p_lp = sample_lp[:, :width].contiguous(), policy_lp[:, :width].contiguous()
        entropy = entropy[:, :width].contiguous()
        texts = [self._decode(response_ids[i, : int(lengths[i])].tolist()) for i in range(n_rows)]
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            sample_logprobs=s_lp,
            policy_logprobs=p_lp,
            finish_reasons=reasons,
            response_texts=texts,
            entropy=entropy,
        )

    def _sample(self, prompt_ids, prompt_mask, params: SamplingParams, generator, limits: list[int]):
        device = _device(self.model)
        n_rows = prompt_ids.shape[0]
        limit_t = torch.tensor(limits, dtype=torch.long, device=device)
        stop_ids = set(params.stop_token_ids)
        if self.eos_id is not None and not params.ignore_eos:
            stop_ids.add(int(self.eos_id))
        stop_t = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)

        mask = prompt_mask.to(device)
        step_ids = prompt_ids.to(device)
        step_pos = _positions(mask)
        cache = None
        active = torch.ones(n_rows, dtype=torch.bool, device=device)
        reasons = [FINISH_LENGTH] * n_rows
        out_tokens, out_mask, out_slp, out_plp, out_ent = [], [], [], [], []
        texts_needed = bool(params.stop_strings)
        so_far: list[list[int]] = [[] for _ in range(n_rows)]

        lean = lean_of(self.model)  # once per generation: the check walks the model's modules
        for step in range(params.max_new_tokens):
            raw, cache = self._forward(step_ids, mask, step_pos, cache, params.max_new_tokens, lean)
            policy_logp = torch.log_softmax(raw, dim=-1)
            if params.greedy:
                token = raw.argmax(dim=-1)
                sample_lp = torch.zeros(n_rows, dtype=torch.float32, device=device)
            else:
                processed = process_logits(raw, params)
                # plain sampling (temperature 1, no top-k/p) samples from the policy itself
                sample_logp = policy_logp if processed is raw else torch.log_softmax(processed, dim=-1)
                probs = sample_logp.exp()
                if generator is not None and generator.device != probs.device:
                    probs = probs.to(generator.device)  # e.g. a CPU generator with a GPU model
                token = torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(device)
                sample_lp = sample_logp.gather(-1, token[:, None]).squeeze(-1)
            policy_lp = policy_logp.gather(-1, token[:, None]).squeeze(-1)
            entropy = torch.special.entr(policy_logp.exp()).sum(-1)

            token = torch.where(active, token, torch.full_like(token, self.pad_id))
            out_tokens.append(token.cpu())
            out_mask.append(active.long().cpu())
            out_slp.append(torch.where(active, sample_lp, torch.zeros_like(sample_lp)).cpu())
            out_plp.append(torch.where(active, policy_lp, torch.zeros_like(policy_lp)).cpu())
            out_ent.append(torch.where(active, entropy, torch.zeros_like(entropy)).cpu())

            finished_now = active & torch.isin(token, stop_t)
            if texts_needed:
                for i in torch.nonzero(active & ~finished_now).flatten().tolist():
                    so_far[i].append(int(token[i]))
                    text = self._decode(so_far[i])
                    if any(s and s in text for s in params.stop_strings):
                        finished_now[i] = True
            for i in torch.nonzero(finished_now).flatten().tolist():
                reasons[i] = FINISH_STOP
            active = active & ~finished_now & (limit_t > step + 1)  # a row's own limit: finish "length"
            if not bool(active.any()):
                break

            mask = torch.cat([mask, torch.ones((n_rows, 1), dtype=mask.dtype, device=device)], dim=1)
            step_ids = token[:, None]
            step_pos = (mask.sum(-1, keepdim=True) - 1).clamp_(min=0)

        return (
            torch.stack(out_tokens, dim=1),
            torch.stack(out_mask, dim=1),
            torch.stack(out_slp, dim=1),
            torch.stack(out_plp, dim=1),
            torch.stack(out_ent, dim=1),
            reasons,
        )
