"""A tool-using agent's episode: each model turn calls a tool or answers (Search-R1, arXiv 2503.09516)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlfold.core.config import check_part_options
from rlfold.core.contracts import EnvStep
from rlfold.core.errors import ConfigError
from rlfold.core.registry import ENVIRONMENTS, TOOL_FORMATS, TOOLS
from rlfold.core.types import FINISH_LENGTH, Prompt
from rlfold.envs.tool_formats import ToolFormat, ToolOutput


class ToolSpec(BaseModel):
    """A registered tool and its options."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="registered tool (bm25, calculator, python)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the tool")

    @model_validator(mode="after")
    def _registered_with_valid_options(self) -> "ToolSpec":
        """The tool is registered and ``kwargs`` fit its signature (checked when the config loads)."""
        check_part_options(("kwargs",), "tool", self.name, TOOLS.get(self.name), self.kwargs, n_positional=0)
        return self


@dataclass
class _Episode:
    calls: int = 0
    invalid: int = 0


def call_with_timeout(tool: Any, argument: str, timeout_s: float) -> tuple[str, ToolOutput | str]:
    """``("ok", output)``, ``("error", message)`` or ``("timeout", message)`` of one tool call.

    The call runs in a daemon thread: a tool that hangs is abandoned after ``timeout_s`` (its thread
    cannot be killed, so a tool that may hang for good should bound itself, as ``python`` does) and
    never blocks the run or the interpreter's exit."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["out"] = tool(argument)
        except BaseException as e:  # noqa: BLE001 - any failure of a tool is reported to the model
            box["err"] = f"{type(e).__name__}: {e}"

    t = threading.Thread(target=run, name="rlfold-tool", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        return "timeout", f"the tool timed out after {timeout_s:g} s"
    if "err" in box:
        return "error", box["err"]
    out = box.get("out")
    if not isinstance(out, str) and not (isinstance(out, (list, tuple)) and all(hasattr(d, "text") for d in out)):
        return "error", f"the tool returned {type(out).__name__}, not text or documents"
    return "ok", out


@ENVIRONMENTS.register("tool_agent")
class ToolAgentEnv:
    """Tool-use episodes in the Search-R1 loop (arXiv 2503.09516): call, read the result, answer.

    Each model turn is parsed by the registered ``format`` (``search_r1``: ``<search> q </search>``
    ... ``<answer> a </answer>``; ``r1_searcher``); a call runs the tool of that name from ``tools``
    (a call name -> ``{name, kwargs}`` of a registered tool) within ``timeout_s`` and its result is the
    next observation; an answer ends the episode. A tool that raises or times out is answered with
    the format's error text and counted (``tools/errors``, ``tools/timeouts``). A turn that neither
    calls nor answers gets the format's invalid-action text (Search-R1's retry message) up to
    ``max_invalid`` times, then the episode ends. Per turn ``info`` holds ``tools/calls``,
    ``tools/errors``, ``tools/timeouts``, ``tools/latency_s`` and ``tools/invalid``, summed per
    episode by the multi-turn engine.
    """

    def __init__(self, *, tools: dict[str, ToolSpec], format: str = "search_r1",
                 format_kwargs: dict[str, Any] | None = None, timeout_s: Annotated[float, Field(gt=0)] = 10.0,
                 max_invalid: Annotated[int, Field(ge=0)] = 1) -> None:
        if not tools:
            raise ConfigError("tool_agent environment: name at least one tool under tools (e.g. {search: {name: bm25, "
                              "kwargs: {corpus: search-corpus.jsonl}}})")
        if not timeout_s > 0:
            raise ConfigError(f"tool_agent environment: timeout_s must be > 0, got {timeout_s}")
        specs = {k: v if isinstance(v, ToolSpec) else ToolSpec.model_validate(v) for k, v in tools.items()}
        self.format: ToolFormat = TOOL_FORMATS.get(format)(**(format_kwargs or {}))
        self.tools = {call: TOOLS.get(s.name)(**s.kwargs) for call, s in specs.items()}
        self.timeout_s, self.max_invalid = timeout_s, max_invalid
        self.stop_strings: tuple[str, ...] = tuple(self.format.stop_strings(self.tools))

    def reset(self, prompt: Prompt, seed: int) -> _Episode:
        return _Episode()

    def step(self, state: _Episode, text: str, finish: str) -> EnvStep:
        info = {"tools/calls": 0.0, "tools/errors": 0.0, "tools/timeouts": 0.0, "tools/latency_s": 0.0,
                "tools/invalid": 0.0}
        if finish == FINISH_LENGTH:
            return EnvStep(done=True, info=info)
        action = self.format.parse(text, self.tools)
        if action.kind == "answer":
            return EnvStep(done=True, info=info)
        if action.kind == "invalid" or action.tool not in self.tools:
            info["tools/invalid"] = 1.0
            state.invalid += 1
            message = self.format.invalid()
            return EnvStep(observation=message, done=not message or state.invalid > self.max_invalid, info=info)
        state.calls += 1
        info["tools/calls"] = 1.0
        start = time.perf_counter()
        status, out = call_with_timeout(self.tools[action.tool], action.argument, self.timeout_s)
        info["tools/latency_s"] = time.perf_counter() - start
        if status == "ok":
            return EnvStep(observation=self.format.observation(action.tool, out), done=False, info=info)
        info["tools/errors"] = 1.0
        info["tools/timeouts"] = float(status == "timeout")
        return EnvStep(observation=self.format.failure(action.tool, str(out)), done=False, info=info)


__all__ = ["ToolAgentEnv", "ToolSpec", "call_with_timeout"]
