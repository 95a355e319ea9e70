"""Rollouts of a PrimeIntellect ``verifiers`` (v1) environment: its agent program talks to the policy over HTTP.

A v1 environment runs the agent as a separate program (its *harness*) that reaches the model through an
OpenAI-compatible endpoint; the environment scores the finished trace with its own ``@vf.reward``
functions. This engine serves its inner engine (``inner``, by default ``hf``) on loopback with
``rlfold.rollout.openai_server.OpenAIServer``, points the environment's client at it (an ``eval`` client:
the environment relays each model call of the program unchanged), runs ``params.n`` episodes per request
and assembles each row from exactly the token ids and log-probs the server recorded for that episode's
trace (the ``X-Session-ID`` header verifiers sends is the trace id): model tokens loss mask 1, the ids
of the messages between two model calls (tool results, user turns) mask 0, nothing re-tokenised.

Tasks: a prompt whose ``meta["vf_task"]`` holds a dict is that task's data (the fields of the taskset's
``TaskData`` type); otherwise the task is built from the prompt: ``prompt`` = its chat messages
(``meta["messages"]``) or its text, and the ``answer_field`` (if the data type has it) = its answer.

Extras per row: ``env/reward`` (the trace's weighted reward), ``env/reward/<name>`` (each named reward),
``turns`` (model calls), ``env/errors`` (1 when the episode failed, its trace carries errors, the
program made no model call, or a later call did not continue the earlier context: the row ends there),
``env/prefix_breaks``. The ``env_reward`` reward passes ``env/reward`` on to rlfold's reward layer
(None, i.e. unscorable, on a row with an error). A failed episode is logged as a warning naming the
environment, the row and the error, and the run goes on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from typing import Annotated, Any, Sequence

import torch
from pydantic import Field

from rlfold.core.errors import ConfigError, DataError
from rlfold.core.options import registered
from rlfold.core.registry import ENGINES
from rlfold.core.types import FINISH_STOP, Prompt, RolloutBatch
from rlfold.rollout.base import EngineContext, GenerationRequest, WrappingEngine, encode_request
from rlfold.core.seeding import derive_seed
from rlfold.rollout.openai_server import SEED_HEADER, CallRecord, OpenAIServer, assemble_calls
from rlfold.rollout.sampling import SamplingParams

logger = logging.getLogger(__name__)

TASK_KEY = "vf_task"  # Prompt.meta: the verifiers task data of a row, as a dict
INSTALL_HINT = "pip install 'rlfold[agents]' (verifiers==0.4.0)"


def import_verifiers() -> Any:
    """``verifiers.v1``, or a ConfigError naming the extra that installs it."""
    try:
        import verifiers.v1 as vf
    except ImportError as exc:
        raise ConfigError(f"rollout.engine=verifiers needs the verifiers package: {INSTALL_HINT} ({exc})") from None
    return vf


@ENGINES.register("verifiers")
class VerifiersEngine(WrappingEngine):
    """Episodes of a ``verifiers`` v1 environment over an rlfold engine served on loopback (see the module docstring).

    ``env``: the verifiers environment config (what ``vf.resolve_env_config`` takes, e.g.
    ``{taskset: {id: my_taskset}, agent: {runtime: {type: subprocess}}}``); ``inner`` / ``inner_kwargs``: the
    engine that generates; ``answer_field``: the task data field a prompt's answer fills; ``max_concurrent``:
    episodes at once (0: all); ``model_name``: the model id the program is told to use.
    """

    def __init__(self, ctx: EngineContext, *, env: dict[str, Any], inner: Annotated[str, registered(ENGINES)] = "hf",
                 inner_kwargs: dict[str, Any] | None = None, answer_field: str = "answer",
                 max_concurrent: Annotated[int, Field(ge=0)] = 0, model_name: str = "rlfold-policy") -> None:
        if inner == "verifiers":
            raise ConfigError("verifiers engine: inner must be another engine (e.g. 'hf'), not 'verifiers'")
        if max_concurrent < 0:
            raise ConfigError(f"verifiers engine: max_concurrent must be >= 0, got {max_concurrent}")
        self.vf = vf = import_verifiers()
        super().__init__(ENGINES.get(inner)(ctx, **(inner_kwargs or {})))
        self.tokenizer = ctx.tokenizer
        self.answer_field, self.max_concurrent = answer_field, max_concurrent
        try:
            config = vf.resolve_env_config(dict(env))
            self.env = vf.load_environment(config)
        except Exception as exc:  # noqa: BLE001 - a bad env config or an uninstalled taskset, named for the user
            raise ConfigError(f"verifiers engine: cannot load the environment {env!r}: {type(exc).__name__}: {exc}") from None
        self.env_id = str(config.taskset.id)
        self.server = OpenAIServer(self.inner, ctx.tokenizer, model_name=model_name)
        weakref.finalize(self, self.server.close)
        self.model_name = model_name
        self._task_cls = type(self.env.taskset).task_type()

    # ---------------------------------------------------------- engine contract
    def close(self) -> None:
        """Stop the loopback server."""
        self.server.close()

    def task_for(self, prompt: Prompt) -> Any:
        """The verifiers task of a row (see the module docstring)."""
        data_cls = self._task_cls.data_type()
        meta = prompt.meta if isinstance(prompt.meta, dict) else {}
        if isinstance(meta.get(TASK_KEY), dict):
            fields = dict(meta[TASK_KEY])
        else:
            fields = {"prompt": meta.get("messages") or prompt.text}
            if self.answer_field in data_cls.model_fields:
                fields[self.answer_field] = prompt.answer
        try:
            data = data_cls.model_validate(fields)
        except Exception as exc:  # noqa: BLE001 - pydantic's message names the field
            raise DataError(f"verifiers engine: prompt {prompt.text!r} does not make a {data_cls.__name__}: {exc}") from None
        return self._task_cls(data, self.env.taskset.config.task)

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams, seed: int) -> RolloutBatch:
        """``params.n`` episodes per request; rows ``[r0 s0, r0 s1, ..., r1 s0, ...]``."""
        if not requests:
            raise DataError("verifiers engine: got an empty list of requests")
        if any(r.context_ids is not None for r in requests):
            raise ConfigError("verifiers engine: the verifiers environment runs its own episodes; it cannot continue "
                              "a context (do not set rollout.env with rollout.engine=verifiers)")
        tasks = [self.task_for(r.prompt) for r in requests for _ in range(params.n)]
        self.server.params = params.model_copy(update={"n": 1})
        self.server.seed = seed
        self.server.clear()
        outcomes = asyncio.run(self._episodes(tasks, [derive_seed(seed, "episode", i) for i in range(len(tasks))]))
        rows = [self._row(i, requests[i // params.n], out) for i, out in enumerate(outcomes)]
        self.server.clear()
        return self._batch(rows)

    # ------------------------------------------------------------------ helpers
    def model_context(self, seed: int) -> Any:
        """The verifiers model context of one episode: the loopback endpoint, and the episode's seed in a header
        (its model calls sample the same whatever order concurrent episodes reach the server in)."""
        client = self.vf.EvalClientConfig(base_url=self.server.base_url, api_key_var="RLFOLD_VERIFIERS_API_KEY",
                                          headers={SEED_HEADER: str(seed)})
        return self.vf.ModelContext(model=self.model_name, client=client)

    async def _episodes(self, tasks: list[Any], seeds: list[int]) -> list[Any]:
        from verifiers.v1.env import RunSlot

        gate = asyncio.Semaphore(self.max_concurrent) if self.max_concurrent else None

        async def one(task: Any, seed: int) -> Any:
            try:
                return await self.env.run_slot(RunSlot(task), self.model_context(seed), gate)
            except Exception as exc:  # noqa: BLE001 - an episode that raises is a counted outcome, not a crash
                return exc

        async with self.env.serving():
            return await asyncio.gather(*(one(t, s) for t, s in zip(tasks, seeds)))

    def _row(self, i: int, request: GenerationRequest, outcome: Any) -> dict[str, Any]:
        problems: list[str] = []
        calls: list[CallRecord] = []
        rewards: dict[str, float] = {}
        reward = 0.0
        if isinstance(outcome, BaseException):
            problems.append(f"{type(outcome).__name__}: {outcome}")
        else:
            problems += [f"{e.type}: {e.message}" for e in outcome.errors]
            if not outcome.traces:
                problems.append("the episode has no trace")
            else:
                trace = outcome.traces[0]
                problems += [f"{e.type}: {e.message}" for e in trace.errors]
                calls = self.server.take(trace.id)
                for name, r in trace.rewards.items():
                    if r is not None and math.isfinite(float(r.score)):
                        rewards[name] = float(r.score)
                try:
                    reward = float(trace.reward)
                except Exception as exc:  # noqa: BLE001 - a malformed reward is an error of the environment
                    problems.append(f"reward: {type(exc).__name__}: {exc}")
                if not math.isfinite(reward):
                    problems.append(f"reward {reward} is not finite")
                    reward = 0.0
        prompt, cols, breaks = assemble_calls(calls)
        if not calls:
            problems.append("the agent program made no model call")
            prompt = encode_request(self.tokenizer, request, i, engine="verifiers engine")
            cols = {"ids": [self.pad_id], "loss": [0], "slp": [0.0], "plp": [0.0], "ent": [0.0]}
        if breaks:
            problems.append(f"{breaks} model call(s) did not continue the earlier context (row ends before them)")
        if problems:
            logger.warning("verifiers environment %r: row %d (prompt %r): %s; the row counts in env/errors and its "
                           "reward is unscorable", self.env_id, i, request.prompt.text, "; ".join(problems))
        return {"prompt": prompt, "cols": cols, "attn": [1 if calls else 0] * len(cols["ids"]),
                "finish": calls[-1 - breaks].finish_reason if calls else FINISH_STOP,
                "turns": len(calls) - breaks, "errors": float(bool(problems)), "breaks": float(breaks),
                "reward": reward, "rewards": rewards}

    def _batch(self, rows: list[dict[str, Any]]) -> RolloutBatch:
        p_width = max(len(r["prompt"]) for r in rows)
        r_width = max(len(r["cols"]["ids"]) for r in rows)

        def right(values: list[list], fill: float, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([v + [fill] * (r_width - len(v)) for v in values], dtype=dtype)

        prompt_ids = torch.tensor([[self.pad_id] * (p_width - len(r["prompt"])) + r["prompt"] for r in rows])
        prompt_mask = torch.tensor([[0] * (p_width - len(r["prompt"])) + [1] * len(r["prompt"]) for r in rows])
        names = sorted({k for r in rows for k in r["rewards"]})
        extras: dict[str, Any] = {
            "turns": [r["turns"] for r in rows], "env/reward": [r["reward"] for r in rows],
            "env/errors": [r["errors"] for r in rows], "env/prefix_breaks": [r["breaks"] for r in rows],
            **{f"env/reward/{k}": [r["rewards"].get(k, 0.0) for r in rows] for k in names},
        }
        ids = [r["cols"]["ids"] for r in rows]
        return RolloutBatch(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask,
            response_ids=right(ids, self.pad_id, torch.long),
            response_mask=right([r["cols"]["loss"] for r in rows], 0, torch.long),
            sample_logprobs=right([r["cols"]["slp"] for r in rows], 0.0, torch.float32),
            policy_logprobs=right([r["cols"]["plp"] for r in rows], 0.0, torch.float32),
            finish_reasons=[r["finish"] for r in rows],
            response_texts=[self.tokenizer.decode(x, skip_special_tokens=True) if r["turns"] else ""
                            for x, r in zip(ids, rows)],
            entropy=right([r["cols"]["ent"] for r in rows], 0.0, torch.float32),
            response_attention_mask=right([r["attn"] for r in rows], 0, torch.long),
            extras=extras,
        )


__all__ = ["TASK_KEY", "VerifiersEngine", "import_verifiers"]
