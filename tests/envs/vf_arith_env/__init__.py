"""A small verifiers v1 environment of the library's own kind, for the adapter tests.

``ArithTaskset``: two-digit additions (``vf.TaskData`` with an ``answer``), scored by a ``@vf.reward`` on the
agent's last reply. A prompt whose answer is ``"boom"`` makes the reward raise and one whose answer is
``"nan"`` makes it return a string: environments that answer garbage. ``LocalChatHarness``: verifiers' own
chat program (the ``null`` harness's), run with this interpreter instead of a ``uv`` script, so it needs no
network; it reaches the model through the interception endpoint like any harness.
"""

from __future__ import annotations

import json
import sys

import verifiers.v1 as vf
from verifiers.v1.dialects.chat import message_to_wire
from verifiers.v1.harnesses.null import NullHarness
from verifiers.v1.harnesses.utils.launch import CHAT_PROGRAM_SOURCE


class ArithData(vf.TaskData):
    answer: str = ""


class ArithTask(vf.Task[ArithData]):
    @vf.reward(weight=1.0)
    async def correct(self, trace: vf.Trace) -> float:
        replies = [m for m in (trace.branches[-1].messages if trace.branches else []) if m.role == "assistant"]
        text = str(replies[-1].content or "") if replies else ""
        if self.data.answer == "boom":
            raise RuntimeError("the grader crashed")
        if self.data.answer == "nan":
            return "not a number"  # type: ignore[return-value]
        return float(text.strip() == self.data.answer)


class ArithConfig(vf.TasksetConfig):
    num_tasks: int = 8


class ArithTaskset(vf.Taskset[ArithTask, ArithConfig]):
    def load(self):
        for i in range(self.config.num_tasks):
            a, b = 10 + 7 * i, 25 + 3 * i
            yield ArithTask(ArithData(prompt=f"{a}+{b}=", answer=str(a + b)), self.config.task)


class LocalChatHarness(NullHarness):
    """The null harness's chat program, run by this Python (no uv, no network)."""

    async def setup(self, runtime: vf.Runtime) -> None:
        return None

    async def launch(self, ctx, trace, runtime, endpoint, secret, mcp_urls, data, tool_interception_url=None):
        path = "vf_chat_program.py"
        await runtime.write(path, CHAT_PROGRAM_SOURCE.encode())
        system, prompt = self.resolve_prompt(data)
        argv = [sys.executable, path, f"--base-url={endpoint}", f"--api-key={secret}", f"--model={ctx.model}"]
        if system:
            argv.append(f"--system-prompt={system}")
        if isinstance(prompt, str):
            argv.append(f"--prompt={prompt}")
        elif prompt is not None:  # a resumed exchange: the conversation so far
            messages = f".vf-initial-messages-{trace.id}.json"
            await runtime.write(messages, json.dumps([message_to_wire(m) for m in prompt]).encode())
            argv.append(f"--initial-messages-file={messages}")
        return await runtime.run_program(argv, dict(self.config.resolved_env))


__all__ = ["ArithTaskset", "LocalChatHarness"]
