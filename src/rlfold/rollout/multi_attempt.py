"""Multi-attempt rollouts ("Learning from Failures in Multi-Attempt RL", arXiv 2503.04808;
methods/rewards.md section 12b).

Every row first answers the prompt. A row whose attempt the verifier rejects gets the feedback text
appended to its context and answers again, until an attempt is accepted, its attempt allowance is
used up, or its token budget runs out. The returned response of a row is

    attempt 1 + feedback + attempt 2 + feedback + ... + attempt k

token in, token out: attempts are the sampled ids (their stop token included), feedback spans are
the tokenizer's ids of the feedback text (``add_special_tokens=False``). ``response_texts`` are the
decoded attempts joined by the feedback text as configured, so the ``multi_attempt`` reward can split
them with the same string (a tokenizer that does not round-trip the feedback text is warned about at
construction). ``response_mask`` is 0 on feedback tokens (and padding),
their sample/policy log-probs and entropy are 0; the finish reason is the last attempt's.

Feedback tokens are *context* for later attempts, not padding: recomputing the log-probs of a batch
must attend to them. ``MultiAttemptBatch.response_attention_mask`` (1 on attempt and feedback
tokens, 0 on padding) is the mask to attend with; ``response_mask`` is the loss mask.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlfold.core.errors import ConfigError, DataError
from rlfold.core.types import FINISH_LENGTH, FINISH_STOP, RolloutBatch
from rlfold.rewards.multi_attempt import DEFAULT_FEEDBACK, attempt_verifier, render_feedback
from rlfold.rollout.hf_engine import ENGINES, HFEngine, _device
from rlfold.rollout.sampling import SamplingParams

Verifier = Callable[[int, str], bool]
BUDGETS = ("total", "per_attempt")


@dataclass
class MultiAttemptBatch(RolloutBatch):
    """A ``RolloutBatch`` with the attempt structure of each row.

    ``attempts_used[i]``: attempts row ``i`` made (1..K). ``response_attention_mask`` [N, R]: 1 on
    every response token the model saw (attempts and feedback), 0 on padding. ``select``/``concat``
    return plain ``RolloutBatch`` es, which keep the attention mask but not the counts (the count is
    also ``len(split_attempts(text))``).
    """

    attempts_used: list[int] = field(default_factory=list)


@ENGINES.register("multi_attempt")
class MultiAttemptEngine:
    """Wraps ``HFEngine``: up to ``attempts`` tries per row, with ``feedback`` between tries.

    ``verifier(prompt_index, attempt_text) -> bool`` judges one attempt; ``prompt_index`` indexes
    the ``prompts`` list of the current ``generate`` call (all ``params.n`` samples of a prompt
    share it) and ``attempt_text`` is the decoded text of that attempt alone (special tokens
    skipped). The engine only sees prompt texts, so the caller sets ``engine.verifier`` before each
    ``generate`` from the gold answers of those prompts (e.g. with
    ``rlfold.rewards.calibration.attempt_verifier(answers)``, which judges as the ``multi_attempt``
    reward does); ``generate`` raises ``ConfigError`` while it is unset.

    ``feedback`` may contain ``{left}``, replaced by the number of attempts still left (the paper's
    "You have {N-1} attempts left"). ``min_attempts``: if set, each prompt's allowance is drawn
    uniformly from ``min_attempts..attempts`` (the paper trains with 1..5), with the sampling
    generator; otherwise every row gets ``attempts``.

    ``token_budget``: ``"total"`` (default, as the paper's generation limit): ``params.max_new_tokens``
    bounds the sampled tokens of all attempts of a row together (feedback tokens not counted);
    ``"per_attempt"``: each attempt may sample up to ``params.max_new_tokens``. An attempt cut at the
    limit ends the row's episode (finish ``length``, as the paper's over-limit case); so does a
    total budget used up exactly at a stop.

    After ``generate``, ``last_attempts`` holds the attempt count of each row (also on the returned
    ``MultiAttemptBatch.attempts_used``).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        attempts: int = 5,
        feedback: str = DEFAULT_FEEDBACK,
        verifier: Verifier | None = None,
        min_attempts: int | None = None,
        token_budget: str = "total",
    ) -> None:
        if attempts < 1:
            raise ConfigError(f"multi_attempt engine: attempts must be >= 1, got {attempts}")
        if min_attempts is not None and not 1 <= min_attempts <= attempts:
            raise ConfigError(f"multi_attempt engine: min_attempts must be in 1..attempts ({attempts}), "
                              f"got {min_attempts}")
        if token_budget not in BUDGETS:
            raise ConfigError(f"multi_attempt engine: token_budget must be one of {', '.join(BUDGETS)}, "
                              f"got {token_budget!r}")
        if not feedback:
            raise ConfigError("multi_attempt engine: the feedback text must not be empty")
        self.inner = HFEngine(model, tokenizer)
        self.model, self.tokenizer = model, tokenizer
        self.pad_id, self.eos_id = self.inner.pad_id, self.inner.eos_id
        self.attempts, self.min_attempts = attempts, min_attempts
        self.feedback, self.token_budget = feedback, token_budget
        self.verifier = verifier
        self.last_attempts: list[int] = []
        for left in sorted({max(attempts - 1, 1), 1}):  # fail early on a text the tokenizer cannot encode
            text = render_feedback(feedback, left)
            back = tokenizer.decode(self._feedback_ids(left), skip_special_tokens=False)
            if back != text:
                warnings.warn(
                    f"multi_attempt engine: the feedback text {text!r} does not survive the tokenizer round trip "
                    f"(its ids decode to {back!r}); the model sees the ids, response_texts keep the text as given",
                    stacklevel=2,
                )
                break

    def _feedback_ids(self, left: int) -> list[int]:
        text = render_feedback(self.feedback, left)
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ConfigError(f"multi_attempt engine: the feedback text {text!r} tokenizes to no tokens")
        return ids

    def _allowances(self, n_prompts: int, n: int, generator: torch.Generator | None) -> list[int]:
        if self.min_attempts is None:
            return [self.attempts] * (n_prompts * n)
        draws = torch.randint(self.min_attempts, self.attempts + 1, (n_prompts,),
                              generator=generator, device=generator.device if generator is not None else "cpu")
        return [int(k) for k in draws.tolist() for _ in range(n)]

    def bind_prompts(self, prompts) -> None:
        """Judge the next ``generate`` call's attempts against these prompts' gold answers (trainer hook)."""
        self.verifier = attempt_verifier([p.answer for p in prompts])

    def generate(
        self,
        prompts: list[str],
        params: SamplingParams,
        generator: torch.Generator | None = None,
    ) -> MultiAttemptBatch:
        """Sample ``params.n`` multi-attempt responses per prompt; rows ``[p0 s0, p0 s1, ..., p1 s0, ...]``."""
        if not prompts:
            raise DataError("MultiAttemptEngine.generate: got an empty list of prompts")
        if self.verifier is None:
            raise ConfigError(
                "MultiAttemptEngine.generate: no verifier set; set engine.verifier = fn(prompt_index, attempt_text) "
                "-> bool from the gold answers of the prompts before generating"
            )
        prompt_ids, prompt_mask = self.inner._encode(list(prompts), params.n)
        n_rows = prompt_ids.shape[0]
        if generator is None and params.seed is not None:
            # one generator for all attempts (HFEngine would re-seed at every call)
            generator = torch.Generator(device=_device(self.model))
            generator.manual_seed(params.seed)
        allowance = self._allowances(len(prompts), params.n, generator)
        prompt_rows = [prompt_ids[i, prompt_mask[i].bool()].tolist() for i in range(n_rows)]

        ids: list[list[int]] = [[] for _ in range(n_rows)]
        loss: list[list[int]] = [[] for _ in range(n_rows)]
        s_lp: list[list[float]] = [[] for _ in range(n_rows)]
        p_lp: list[list[float]] = [[] for _ in range(n_rows)]
        ent: list[list[float]] = [[] for _ in range(n_rows)]
        texts = [""] * n_rows
        used = [0] * n_rows  # sampled tokens so far
        made = [0] * n_rows  # attempts made
        reasons = [FINISH_LENGTH] * n_rows
        active = list(range(n_rows))

        was_training = self.model.training
        self.model.eval()
        try:
            while active:
                budgets = [params.max_new_tokens - used[r] if self.token_budget == "total" else params.max_new_tokens
                           for r in active]
                ctx_ids, ctx_mask = self._left_pad([prompt_rows[r] + ids[r] for r in active])
                step = params.model_copy(update={"max_new_tokens": max(budgets)})
                with torch.no_grad():
                    tokens, tmask, slp, plp, entropy, why = self.inner._sample(ctx_ids, ctx_mask, step, generator)
                still: list[int] = []
                for j, r in enumerate(active):
                    length = min(int(tmask[j].sum()), budgets[j])
                    reason = why[j] if length == int(tmask[j].sum()) else FINISH_LENGTH
                    attempt = tokens[j, :length].tolist()
                    ids[r] += attempt
                    loss[r] += [1] * length
                    s_lp[r] += slp[j, :length].tolist()
                    p_lp[r] += plp[j, :length].tolist()
                    ent[r] += entropy[j, :length].tolist()
                    text = self.inner._decode(attempt)
                    texts[r] += text
                    used[r] += length
                    made[r] += 1
                    reasons[r] = reason
                    room = self.token_budget == "per_attempt" or used[r] < params.max_new_tokens
                    if (reason == FINISH_STOP and made[r] < allowance[r] and room
                            and not self.verifier(r // params.n, text)):
                        fb = self._feedback_ids(allowance[r] - made[r])
                        ids[r] += fb
                        loss[r] += [0] * len(fb)
                        s_lp[r] += [0.0] * len(fb)
                        p_lp[r] += [0.0] * len(fb)
                        ent[r] += [0.0] * len(fb)
                        texts[r] += render_feedback(self.feedback, allowance[r] - made[r])
                        still.append(r)
                active = still
        finally:
            self.model.train(was_training)

        width = max(len(x) for x in ids)  # >= 1: every attempt samples at least one token

        def right(rows: list[list], fill, dtype) -> torch.Tensor:
            return torch.tensor([x + [fill] * (width - len(x)) for x in rows], dtype=dtype)

        self.last_attempts = list(made)
        return MultiAttemptBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=right(ids, self.pad_id, torch.long),
            response_mask=right(loss, 0, torch.long),
            sample_logprobs=right(s_lp, 0.0, torch.float32),
            policy_logprobs=right(p_lp, 0.0, torch.float32),
            finish_reasons=reasons,
            response_texts=texts,
            entropy=right(ent, 0.0, torch.float32),
            attempts_used=list(made),
            response_attention_mask=right([[1] * len(x) for x in ids], 0, torch.long),
        )

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        return out, mask
