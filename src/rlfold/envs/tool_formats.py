"""How an agent's turn writes a tool call or an answer, and how a tool's result is written back.

A format is a registered ``ToolFormat``: ``parse`` reads one model turn into an ``Action`` (a call of
a tool, a final answer, or neither), ``stop_strings`` end a turn right after a call so the tool runs
before the model goes on, and ``observation`` / ``invalid`` / ``failure`` render the text appended
after the turn (tokenised on its own, loss mask 0). Search results are ``Doc`` lists that a format
numbers its own way; every other tool result is plain text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Collection, Literal, Protocol, Sequence, Union

from rlfold.core.registry import TOOL_FORMATS


@dataclass(frozen=True)
class Doc:
    """One retrieved passage."""

    title: str
    text: str


ToolOutput = Union[str, Sequence[Doc]]


@dataclass(frozen=True)
class Action:
    """What one model turn asks for: ``call`` a tool with ``argument``, give the ``answer``, or ``invalid``."""

    kind: Literal["call", "answer", "invalid"]
    tool: str = ""
    argument: str = ""


class ToolFormat(Protocol):
    """The text protocol between the model and its tools (see the module docstring)."""

    def stop_strings(self, tools: Collection[str]) -> list[str]: ...

    def parse(self, text: str, tools: Collection[str]) -> Action: ...

    def observation(self, tool: str, output: ToolOutput) -> str: ...

    def invalid(self) -> str: ...

    def failure(self, tool: str, message: str) -> str: ...


SEARCH_R1_INVALID = ("\nMy previous action is invalid. If I want to search, I should put the query between <search> "
                     "and </search>. If I want to give the final answer, I should put the answer between <answer> "
                     "and </answer>. Let me try again.\n")


@TOOL_FORMATS.register("search_r1")
class SearchR1Format:
    """Search-R1 (arXiv 2503.09516): ``<tool> arg </tool>`` calls, ``<information>`` results, ``<answer>``.

    The action is the first ``<(tool|answer)>(.*?)</\\1>`` of the turn (Search-R1's
    ``postprocess_predictions``), any registered tool name standing for ``search``; a turn is cut
    after the first closing call tag. Documents render as ``Doc j(Title: t) text`` lines;
    ``invalid`` is Search-R1's own retry message (``invalid_message`` replaces it, e.g. for a
    character-level tiny model whose context cannot hold 200 characters).
    """

    def __init__(self, answer_tag: str = "answer", information_tag: str = "information",
                 invalid_message: str = SEARCH_R1_INVALID) -> None:
        self.answer_tag, self.information_tag, self.invalid_message = answer_tag, information_tag, invalid_message

    def stop_strings(self, tools: Collection[str]) -> list[str]:
        return [f"</{t}>" for t in sorted(tools)]

    def parse(self, text: str, tools: Collection[str]) -> Action:
        names = "|".join(re.escape(t) for t in sorted({*tools, self.answer_tag}, key=len, reverse=True))
        m = re.search(rf"<({names})>(.*?)</\1>", text, flags=re.DOTALL)
        if m is None:
            return Action("invalid")
        if m.group(1) == self.answer_tag:
            return Action("answer", argument=m.group(2).strip())
        return Action("call", tool=m.group(1), argument=m.group(2).strip())

    def observation(self, tool: str, output: ToolOutput) -> str:
        body = output if isinstance(output, str) else "".join(
            f"Doc {j}(Title: {d.title}) {d.text}\n" for j, d in enumerate(output, 1))
        return f"\n\n<{self.information_tag}>{body}</{self.information_tag}>\n\n"

    def invalid(self) -> str:
        return self.invalid_message

    def failure(self, tool: str, message: str) -> str:
        return self.observation(tool, f"error: {message}")


@TOOL_FORMATS.register("r1_searcher")
class R1SearcherFormat:
    """R1-Searcher (arXiv 2503.05592): ``<|begin_of_query|> q <|end_of_query|>`` and a documents block.

    The turn stops at ``<|end_of_query|>``; the query is the text after the last
    ``<|begin_of_query|>``; the result is ``\\n\\n<|begin_of_documents|>\\n(1)doc1\\n...<|end_of_documents|>\\n\\n``
    ("None" when nothing is retrieved), a turn with ``<answer>...</answer>`` ends the episode. The one
    tool this format calls is the one registered under ``tool`` (default ``search``).
    """

    BEGIN, END = "<|begin_of_query|>", "<|end_of_query|>"
    DOCS_BEGIN, DOCS_END = "<|begin_of_documents|>", "<|end_of_documents|>"

    def __init__(self, tool: str = "search") -> None:
        self.tool = tool

    def stop_strings(self, tools: Collection[str]) -> list[str]:
        return [self.END]

    def parse(self, text: str, tools: Collection[str]) -> Action:
        if text.rstrip().endswith(self.END) and self.BEGIN in text:
            query = text.rsplit(self.BEGIN, 1)[1].rsplit(self.END, 1)[0].strip()
            return Action("call", tool=self.tool, argument=query) if query else Action("invalid")
        m = re.search(r"<answer>(.*?)</answer>", text, flags=re.DOTALL)
        return Action("answer", argument=m.group(1).strip()) if m else Action("invalid")

    def observation(self, tool: str, output: ToolOutput) -> str:
        if isinstance(output, str):
            body = (output or "None") + "\n"
        else:
            body = "".join(f"({j}){d.text}\n" for j, d in enumerate(output, 1)) or "None\n"
        return f"\n\n{self.DOCS_BEGIN}\n{body}{self.DOCS_END}\n\n"

    def invalid(self) -> str:
        return ""

    def failure(self, tool: str, message: str) -> str:
        return self.observation(tool, f"error: {message}")


__all__ = ["Action", "Doc", "R1SearcherFormat", "SEARCH_R1_INVALID", "SearchR1Format", "ToolFormat", "ToolOutput"]
