"""A task's prompts for a given tokenizer: chat messages for its chat template, or plain text.

Called once the tokenizer is known (the task is built before the model is loaded). With a chat
template (and ``use_template``), every prompt carries ``meta["messages"]``: its own chat messages, or
its text as one user message, after the system prompt when one is configured; the engines encode
exactly those messages (``rollout.base.encode_request``), so the ids trained on are the template's.
Without one, prompts stay plain text, and a row holding chat messages (or a system prompt) is an error.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from rlfold.core.errors import ConfigError, DataError
from rlfold.core.types import Prompt
from rlfold.tasks.base import Task
from rlfold.tasks.rows import MESSAGES


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def as_chat(prompt: Prompt, system_prompt: str | None) -> Prompt:
    """``prompt`` with ``meta["messages"]``: its own messages or its text as a user turn, after the system
    prompt (unless its messages start with a system message of their own)."""
    messages = list(prompt.meta.get(MESSAGES) or [{"role": "user", "content": prompt.text}])
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return replace(prompt, meta={**prompt.meta, MESSAGES: messages})


def _where(task: Task, split: str, index: int) -> str:
    """Where prompt ``index`` of a split comes from: its dataset file's row, or its position."""
    source = next((s for s in task.sources if s.split == split), None)
    return f"{source.path}: row {index + 1}" if source else f"{split} prompt #{index}"


def _check_plain(task: Task, splits: Sequence[tuple[str, list[Prompt]]], why: str) -> None:
    """Without a chat template no prompt may hold chat messages."""
    for split, prompts in splits:
        for i, p in enumerate(prompts):
            if p.meta.get(MESSAGES):
                raise DataError(f"{_where(task, split, i)}: the row holds chat messages, but {why}; give a plain "
                                "prompt column (task.prompt_key) or use a model with a chat template")


def for_tokenizer(task: Task, tokenizer: Any, system_prompt: str | None = None, use_template: bool = True,
                  model: str = "the model") -> Task:
    """The task with its prompts in the form the engines should encode for ``tokenizer`` (module docstring)."""
    splits = [("train", task.train), ("held_out", task.held_out)]
    if not (use_template and has_chat_template(tokenizer)):
        why = ("task.chat_template is false" if not use_template
               else f"the tokenizer of model {model!r} has no chat template")
        if system_prompt:
            raise ConfigError(f"task.system_prompt is set, but {why}: a system prompt needs the chat template; "
                              "unset task.system_prompt or write the instruction into the prompts")
        _check_plain(task, splits, why)
        return task
    return replace(task, train=[as_chat(p, system_prompt) for p in task.train],
                   held_out=[as_chat(p, system_prompt) for p in task.held_out])


__all__ = ["as_chat", "for_tokenizer", "has_chat_template"]
