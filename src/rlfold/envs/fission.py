"""Fission-GRPO's error-recovery episodes with a rule-based error simulator (arXiv 2601.15625).

Fission-GRPO sends the failed tool calls of its GRPO rollouts to an error simulator (an SFT'd
Qwen3-32B) that writes a diagnostic f which does not leak the answer, then samples G' recovery
rollouts from [x; tau_err; f] and GRPO-normalises them within that "fission group". Here the LLM
simulator is replaced by a fixed rule: with probability ``error_rate`` an episode's first tool call
is answered with a simulated error and the ``diagnostic`` instead of the tool's result, so the model
has to recover in its next turn. The branching of G' recovery rollouts from one shared error prefix
is not here (it needs a rollout collector; see ``FissionToolAgentEnv``).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from pydantic import Field

from rlfold.core.contracts import EnvStep
from rlfold.core.errors import ConfigError
from rlfold.core.registry import ENVIRONMENTS
from rlfold.core.seeding import derive_seed, generator_for
from rlfold.core.types import FINISH_LENGTH, Prompt
from rlfold.envs.tool_agent import ToolAgentEnv, ToolSpec, _Episode

DEFAULT_DIAGNOSTIC = "the search service rejected the query; retry with the entity name only"
SIMULATED_ERRORS = "tools/simulated_errors"
_PLACEHOLDERS = ("tool", "argument")

__all__ = ["DEFAULT_DIAGNOSTIC", "FissionToolAgentEnv", "SIMULATED_ERRORS"]


@dataclass
class _FissionEpisode(_Episode):
    inject: bool = False
    injected: bool = False


def _check_diagnostic(diagnostic: str) -> None:
    if not diagnostic.strip():
        raise ConfigError("fission_tool_agent environment: the diagnostic text must not be empty")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(diagnostic) if f is not None]
    except ValueError as e:
        raise ConfigError(f"fission_tool_agent environment: diagnostic {diagnostic!r} is not a valid template "
                          f"({e}); write literal braces as {{{{ and }}}}") from None
    bad = [f for f in fields if f not in _PLACEHOLDERS]
    if bad:
        raise ConfigError(f"fission_tool_agent environment: diagnostic placeholder {{{bad[0]}}} is unknown; "
                          f"it may use {{tool}} and {{argument}} (the failed call's tool and argument)")


@ENVIRONMENTS.register("fission_tool_agent")
class FissionToolAgentEnv(ToolAgentEnv):
    """Fission-GRPO error simulator, rule-based (Fission-GRPO, arXiv 2601.15625): the first call may fail.

    A ``tool_agent`` environment (same options: ``tools``, ``format``, ``format_kwargs``,
    ``timeout_s``, ``max_invalid``) whose ``reset`` draws, from the episode seed, whether this episode
    gets a simulated error (probability ``error_rate``). In such an episode the first tool call (the
    first turn that calls one of ``tools``; invalid turns do not count) is not run: the model gets
    the format's error text with ``diagnostic`` (``search_r1``: ``<information>error: the search
    service rejected the query; retry with the entity name only</information>``), the episode goes on
    (``done=False``) and every later call is answered by the tool as usual. ``diagnostic`` may use
    ``{tool}`` and ``{argument}`` (the call's tool name and argument) and must not contain the answer:
    it plays the part of the paper's SFT'd LLM simulator, whose diagnostics are written not to leak
    it. The multi-turn engine gives the G samples of a prompt the same episode seed, so a prompt's
    whole group is in the error condition or none of it: within an injected group every sample that
    calls a tool meets the error, so GRPO compares recoveries with recoveries (and with samples that
    answered without a call). ``info``: the ``tool_agent`` keys plus ``tools/simulated_errors`` (1 on the injected
    turn, which also counts in ``tools/calls`` but not in ``tools/errors``).

    What the full method adds (not here): after the normal rollouts, branch G' recovery rollouts
    from one shared prefix [x; tau_err; f] of each failed trajectory and normalise their rewards
    within that fission group (a rollout collector, with a fission-group id for the advantage).
    """

    def __init__(self, *, tools: dict[str, ToolSpec], format: str = "search_r1",
                 format_kwargs: dict[str, Any] | None = None, timeout_s: Annotated[float, Field(gt=0)] = 10.0,
                 max_invalid: Annotated[int, Field(ge=0)] = 1,
                 error_rate: Annotated[float, Field(ge=0, le=1)] = 0.5,
                 diagnostic: str = DEFAULT_DIAGNOSTIC) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ConfigError(f"fission_tool_agent environment: error_rate must be in [0, 1], got {error_rate}")
        _check_diagnostic(diagnostic)
        super().__init__(tools=tools, format=format, format_kwargs=format_kwargs, timeout_s=timeout_s,
                         max_invalid=max_invalid)
        self.error_rate, self.diagnostic = float(error_rate), diagnostic

    def reset(self, prompt: Prompt, seed: int) -> _FissionEpisode:
        draw = torch.rand(1, generator=generator_for(derive_seed(seed, "fission_error")), dtype=torch.float64)
        return _FissionEpisode(inject=bool(draw.item() < self.error_rate))

    def step(self, state: _Episode, text: str, finish: str) -> EnvStep:
        if isinstance(state, _FissionEpisode) and state.inject and not state.injected and finish != FINISH_LENGTH:
            action = self.format.parse(text, self.tools)
            if action.kind == "call" and action.tool in self.tools:
                state.injected = True
                state.calls += 1
                info = {"tools/calls": 1.0, "tools/errors": 0.0, "tools/timeouts": 0.0, "tools/latency_s": 0.0,
                        "tools/invalid": 0.0, SIMULATED_ERRORS: 1.0}
                message = self.diagnostic.format(tool=action.tool, argument=action.argument)
                return EnvStep(observation=self.format.failure(action.tool, message), done=False, info=info)
        out = super().step(state, text, finish)
        return EnvStep(observation=out.observation, done=out.done, info={**out.info, SIMULATED_ERRORS: 0.0})
