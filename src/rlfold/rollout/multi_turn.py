"""The generic multi-turn engine: any ``Environment`` over any engine, token in, token out.

Each row is an episode: the inner engine samples a model turn after the exact context ids so far
(prompt, earlier turns, observations); the environment answers with an observation, which is
tokenised on its own and appended with loss mask 0 and attention 1; the episode goes on until the
environment says done, a turn is cut at the token limit, ``max_turns`` turns were made or the token
budget is spent (``turn_budget="total"``: ``params.max_new_tokens`` bounds all model turns of an
episode together; ``"per_turn"``: each turn). Nothing is re-tokenised between turns.

The returned response of a row is ``turn 1 + observation 1 + turn 2 + ...``; ``response_texts``
joins the decoded turns and the observation texts as given; ``extras`` holds ``turns`` (model turns
per episode), ``env/errors`` (1 for an episode ended because its environment raised or answered
something that is not an ``EnvStep``; logged as a warning naming the row) and the environment's
``info`` summed over the episode (``env/<key>``, or the key itself when it has a ``/``).

Every turn stops at the environment's ``stop_strings`` as well as the request's. The environments of
one turn's episodes step in ``workers`` threads at once, so slow tools of different rows overlap.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Sequence

import torch

from rlfold.core.contracts import Environment, EnvStep
from rlfold.core.errors import ConfigError, DataError
from rlfold.core.seeding import derive_seed
from rlfold.core.types import FINISH_LENGTH, FINISH_STOP, RolloutBatch
from rlfold.rollout.base import Engine, GenerationRequest, WrappingEngine
from rlfold.rollout.sampling import SamplingParams

LOG = logging.getLogger("rlfold")
ENV_ERRORS = "env/errors"


def _checked(out: Any) -> EnvStep:
    """``out`` if it is a well-formed ``EnvStep``, else a ``TypeError`` saying what is wrong with it."""
    if not isinstance(out, EnvStep):
        raise TypeError(f"step returned {type(out).__name__}, not an EnvStep")
    if not isinstance(out.observation, str):
        raise TypeError(f"the observation is {type(out.observation).__name__}, not text")
    if not isinstance(out.info, dict) or not all(isinstance(v, (int, float)) for v in out.info.values()):
        raise TypeError("info is not a dict of numbers")
    return out


class MultiTurnEngine(WrappingEngine):
    """Runs ``env`` episodes over ``inner`` (see the module docstring); it follows the engine contract."""

    def __init__(self, inner: Engine, tokenizer: Any, env: Environment, *, max_turns: int = 16,
                 turn_budget: Literal["total", "per_turn"] = "total", workers: int = 8) -> None:
        if max_turns < 1:
            raise ConfigError(f"multi-turn engine: max_turns must be >= 1, got {max_turns}")
        if turn_budget not in ("total", "per_turn"):
            raise ConfigError(f"multi-turn engine: turn_budget must be 'total' or 'per_turn', got {turn_budget!r}")
        super().__init__(inner)
        self.tokenizer, self.env = tokenizer, env
        if workers < 1:
            raise ConfigError(f"multi-turn engine: workers must be >= 1, got {workers}")
        self.max_turns, self.turn_budget, self.workers = max_turns, turn_budget, workers
        self.name = type(env).__name__
        self._obs_cache: dict[str, list[int]] = {}

    def _observation_ids(self, text: str) -> list[int]:
        if text not in self._obs_cache:
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if not ids:
                raise DataError(f"multi-turn engine: the observation {text!r} tokenizes to no tokens")
            self._obs_cache[text] = ids
        return self._obs_cache[text]

    def _reset(self, prompt: Any, seed: int, row: int) -> tuple[Any, bool]:
        try:
            return self.env.reset(prompt, seed), True
        except Exception as e:  # noqa: BLE001 - a failing environment ends its episode, not the run
            LOG.warning("environment %s: reset raised %s: %s on row %d (prompt %r); the episode ends after its "
                        "first turn", self.name, type(e).__name__, e, row, prompt.text)
            return None, False

    def _step(self, state: Any, text: str, finish: str, row: int) -> EnvStep | None:
        try:
            return _checked(self.env.step(state, text, finish))
        except Exception as e:  # noqa: BLE001 - a failing environment ends its episode, not the run
            LOG.warning("environment %s: %s: %s on row %d; the episode ends here", self.name, type(e).__name__, e, row)
            return None

    def _step_all(self, pool: ThreadPoolExecutor | None, jobs: list[tuple[Any, str, str, int]]) -> list[EnvStep | None]:
        if pool is None or len(jobs) < 2:
            return [self._step(*j) for j in jobs]
        return list(pool.map(lambda j: self._step(*j), jobs))

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams, seed: int) -> RolloutBatch:
        """``params.n`` episodes per request; rows ``[r0 s0, r0 s1, ..., r1 s0, ...]`` as a single-turn engine's."""
        if not requests:
            raise DataError("multi-turn engine: got an empty list of requests")
        n = params.n
        stops = list(dict.fromkeys([*params.stop_strings, *self.env.stop_strings]))
        params = params.model_copy(update={"stop_strings": stops})
        first = self.inner.generate(requests, params, derive_seed(seed, "turn", 0))
        n_rows = first.size
        resets = [self._reset(requests[r // n].prompt, derive_seed(seed, "episode", r // n), r) for r in range(n_rows)]
        states = [st for st, _ in resets]
        errors = [0.0 if ok else 1.0 for _, ok in resets]
        prompt_rows = [first.prompt_ids[i, first.prompt_mask[i].bool()].tolist() for i in range(n_rows)]
        cols: dict[str, list[list]] = {k: [[] for _ in range(n_rows)] for k in ("ids", "loss", "slp", "plp", "ent")}
        texts = [""] * n_rows
        used = [0] * n_rows
        turns = [0] * n_rows
        info: list[dict[str, float]] = [{} for _ in range(n_rows)]
        reasons = [FINISH_LENGTH] * n_rows
        active, batch, turn = list(range(n_rows)), first, 0
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="rlfold-env") if self.workers > 1 else None
        try:
            while active:
                for j, r in enumerate(active):
                    length = int(batch.response_mask[j].sum())
                    self._append(cols, r, batch, j, length)
                    texts[r] += batch.response_texts[j]
                    used[r] += length
                    turns[r] += 1
                    reasons[r] = batch.finish_reasons[j]
                live = [(j, r) for j, r in enumerate(active) if not errors[r]]
                outs = self._step_all(pool, [(states[r], batch.response_texts[j], reasons[r], r) for j, r in live])
                still: list[int] = []
                for (j, r), out in zip(live, outs):
                    if out is None:
                        errors[r] = 1.0
                        continue
                    for k, v in out.info.items():
                        info[r][k] = info[r].get(k, 0.0) + float(v)
                    room = self.turn_budget == "per_turn" or used[r] < params.max_new_tokens
                    if out.done or reasons[r] != FINISH_STOP or turns[r] >= self.max_turns or not room:
                        continue
                    if out.observation:
                        obs = self._observation_ids(out.observation)
                        cols["ids"][r] += obs
                        cols["loss"][r] += [0] * len(obs)
                        for k in ("slp", "plp", "ent"):
                            cols[k][r] += [0.0] * len(obs)
                        texts[r] += out.observation
                    still.append(r)
                active = still
                if not active:
                    break
                turn += 1
                reqs = [GenerationRequest(prompt=requests[r // n].prompt, context_ids=prompt_rows[r] + cols["ids"][r],
                                          max_new_tokens=(params.max_new_tokens - used[r] if self.turn_budget == "total"
                                                          else params.max_new_tokens))
                        for r in active]
                batch = self.inner.generate(reqs, params.model_copy(update={"n": 1}), derive_seed(seed, "turn", turn))
        finally:
            if pool is not None:
                pool.shutdown(wait=False)
        return self._batch(first, cols, texts, reasons, turns, info, errors)

    @staticmethod
    def _append(cols: dict[str, list[list]], r: int, batch: RolloutBatch, j: int, length: int) -> None:
        cols["ids"][r] += batch.response_ids[j, :length].tolist()
        cols["loss"][r] += [1] * length
        cols["slp"][r] += batch.sample_logprobs[j, :length].tolist()
        cols["plp"][r] += batch.policy_logprobs[j, :length].tolist()
        ent = batch.entropy[j, :length].tolist() if batch.entropy is not None else [0.0] * length
        cols["ent"][r] += ent

    def _batch(self, first: RolloutBatch, cols: dict[str, list[list]], texts: list[str], reasons: list[str],
               turns: list[int], info: list[dict[str, float]], errors: list[float]) -> RolloutBatch:
        width = max(len(x) for x in cols["ids"])  # >= 1: every turn samples at least one token

        def right(rows: list[list], fill: float, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([x + [fill] * (width - len(x)) for x in rows], dtype=dtype)

        keys = sorted({k for d in info for k in d})
        extras: dict[str, Any] = {"turns": turns, ENV_ERRORS: errors,
                                  **{(k if "/" in k else f"env/{k}"): [d.get(k, 0.0) for d in info] for k in keys}}
        return RolloutBatch(
            prompt_ids=first.prompt_ids, prompt_mask=first.prompt_mask,
            response_ids=right(cols["ids"], self.pad_id, torch.long),
            response_mask=right(cols["loss"], 0, torch.long),
            sample_logprobs=right(cols["slp"], 0.0, torch.float32),
            policy_logprobs=right(cols["plp"], 0.0, torch.float32),
            finish_reasons=reasons, response_texts=texts,
            entropy=right(cols["ent"], 0.0, torch.float32),
            response_attention_mask=right([[1] * len(x) for x in cols["ids"]], 0, torch.long),
            extras=extras,
        )


__all__ = ["MultiTurnEngine"]
