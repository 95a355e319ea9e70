"""Rollouts with a plain transformers model: batched, KV-cached sampling that records exact log-probs."""

from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlfold.core.errors import ConfigError, DataError
from rlfold.core import registry
from rlfold.core.masked import positions_from_mask as _positions
from rlfold.core.types import FINISH_LENGTH, FINISH_STOP, RolloutBatch
from rlfold.rollout.sampling import SamplingParams, process_logits

ENGINES = registry.ENGINES


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def sequence_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    with_entropy: bool = False,
    response_attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[N, R]`` (float32) of the response tokens under ``model``, and optionally the
    per-token entropy of the plain policy; one forward over prompt + response, gradients flow.

    Positions where ``response_mask`` is 0 are set to 0 in both outputs. ``response_attention_mask``
    (default: ``response_mask``) says which response tokens are attended to, e.g. tool output or
    feedback the model did not produce but sees.
    """
    device = _device(model)
    n_prompt = prompt_ids.shape[1]
    n_resp = response_ids.shape[1]
    ids = torch.cat([prompt_ids, response_ids], dim=1).to(device)
    resp_mask = response_mask.to(device)
    attend = resp_mask if response_attention_mask is None else response_attention_mask.to(device)
    mask = torch.cat([prompt_mask.to(device), attend], dim=1).long()
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False)
    logits = out.logits[:, n_prompt - 1 : n_prompt + n_resp - 1].float()
    logp_all = torch.log_softmax(logits, dim=-1)
    keep = resp_mask.bool()
    logprobs = logp_all.gather(-1, ids[:, n_prompt:].unsqueeze(-1)).squeeze(-1)
    logprobs = logprobs.masked_fill(~keep, 0.0)
    entropy = None
    if with_entropy:
        entropy = -(logp_all.exp() * logp_all).sum(-1).masked_fill(~keep, 0.0)
    return logprobs, entropy


@ENGINES.register("hf")
class HFEngine:
    """Generates with a ``transformers`` causal LM in this process (CPU or one GPU)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model = model
        self.tokenizer = tokenizer
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id
        if pad is None:
            raise ConfigError("HFEngine: the tokenizer has neither a pad_token nor an eos_token to pad with")
        self.pad_id = int(pad)
        self.eos_id = tokenizer.eos_token_id
        try:
            self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
            self._keep_arg = False

    # ------------------------------------------------------------------ helpers
    def _encode(self, prompts: list[str], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows: list[list[int]] = []
        for i, text in enumerate(prompts):
            ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
            if len(ids) == 0:
                raise DataError(f"HFEngine.generate: prompt {i} ({text!r}) tokenizes to no tokens")
            rows.extend([list(ids)] * n)
        width = max(len(r) for r in rows)
        prompt_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            prompt_ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            prompt_mask[i, width - len(r) :] = 1
        return prompt_ids, prompt_mask

    def _forward(self, ids, mask, pos, cache):
        kwargs = {"logits_to_keep": 1} if self._keep_arg else {}
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True, **kwargs
        )
        return out.logits[:, -1, :].float(), out.past_key_values

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # --------------------------------------------------------------- generation
    def generate(
        self,
        prompts: list[str],
        params: SamplingParams,
        generator: torch.Generator | None = None,
    ) -> RolloutBatch:
        """Sample ``params.n`` responses per prompt; rows are ``[p0 s0, p0 s1, ..., p1 s0, ...]``."""
        if not prompts:
            raise DataError("HFEngine.generate: got an empty list of prompts")
        prompt_ids, prompt_mask = self._encode(list(prompts), params.n)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                cols = self._sample(prompt_ids, prompt_mask, params, generator)
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

    def _sample(self, prompt_ids, prompt_mask, params: SamplingParams, generator):
        device = _device(self.model)
        n_rows = prompt_ids.shape[0]
        if generator is None and params.seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(params.seed)
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

        for step in range(params.max_new_tokens):
            raw, cache = self._forward(step_ids, mask, step_pos, cache)
            policy_logp = torch.log_softmax(raw, dim=-1)
            if params.greedy:
                token = raw.argmax(dim=-1)
                sample_lp = torch.zeros(n_rows, dtype=torch.float32, device=device)
            else:
                processed = process_logits(raw, params)
                sample_logp = torch.log_softmax(processed, dim=-1)
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
            active = active & ~finished_now
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
