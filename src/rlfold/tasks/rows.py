"""Dataset rows to prompts: the column mapping, and the validation of each row (errors name file and row)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rlfold.core.errors import DataError
from rlfold.core.types import Prompt

# Roles a chat message may have; the key under which a prompt carries its messages (``requests_for`` reads it).
ROLES = ("system", "user", "assistant")
MESSAGES = "messages"


@dataclass(frozen=True)
class Columns:
    """Which column of a dataset holds the prompt text, the gold answer and the chat messages."""

    prompt: str = "prompt"
    answer: str = "answer"
    messages: str = "messages"


def _show(value: Any, n: int = 60) -> str:
    """A short JSON rendering of a bad value (``str`` for what JSON cannot hold)."""
    return json.dumps(value, default=str)[:n]


def _scalar(where: str, key: str, value: Any) -> str:
    """A prompt or answer value: a string or a number, as text."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field {key!r} must be a string or number, got {_show(value)}")
    return str(value)


def check_messages(where: str, key: str, value: Any) -> list[dict[str, str]]:
    """A non-empty list of ``{role, content}`` dicts with a known role and string content, as plain dicts."""
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"{where}: field {key!r} must be a non-empty list of {{\"role\": ..., \"content\": ...}} "
                        f"messages, got {_show(value)}")
    out: list[dict[str, str]] = []
    for j, m in enumerate(value, start=1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {j} of field {key!r} must be an object with 'role' and 'content', "
                            f"got {_show(m)}")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: message {j} of field {key!r} has unknown role {_show(m['role'])} "
                            f"(expected one of {', '.join(ROLES)})")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: message {j} of field {key!r} ({m['role']}) must have string content, "
                            f"got {_show(m['content'])}")
        extra = sorted(k for k, v in m.items() if k not in ("role", "content") and v is not None)
        if extra:
            raise DataError(f"{where}: message {j} of field {key!r} has key(s) {', '.join(map(repr, extra))}; "
                            "only 'role' and 'content' are supported")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _text_of(messages: list[dict[str, str]]) -> str:
    """The prompt text a chat row is shown and logged as: its last user message (else its last message)."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else messages[-1]["content"]


def row_to_prompt(row: Any, where: str, cols: Columns = Columns()) -> Prompt:
    """One validated row as a ``Prompt``: text from the prompt column (or the last user message of the
    messages column), answer from the answer column, every other column in ``meta`` (chat messages
    under ``meta["messages"]``). ``where`` (``file:line`` or ``file: row n``) starts every error."""
    uses_chat = isinstance(row, dict) and row.get(cols.messages) is not None
    required = ([] if uses_chat else [cols.prompt]) + [cols.answer]
    if not isinstance(row, dict):
        fields = ", ".join(map(repr, (cols.prompt, cols.answer)))
        raise DataError(f"{where}: expected a JSON object with fields {fields}, got {type(row).__name__}")
    missing = [f for f in required if f not in row]
    if missing:
        hint = ""
        if cols.prompt in missing:
            hint = (f"; set task.prompt_key to the column holding the prompt text, or give chat messages in "
                    f"column {cols.messages!r} (task.messages_key)")
        elif cols.answer in missing and cols.answer != Columns.answer:
            hint = " (task.answer_key)"
        raise DataError(f"{where}: row is missing field(s) {', '.join(map(repr, missing))}"
                        f" (has {', '.join(map(repr, row)) or 'none'}){hint}")
    if cols.messages != MESSAGES and MESSAGES in row:
        raise DataError(f"{where}: column {MESSAGES!r} is reserved for chat messages, but task.messages_key is "
                        f"{cols.messages!r}; rename the column or set task.messages_key={MESSAGES}")
    messages = check_messages(where, cols.messages, row[cols.messages]) if uses_chat else None
    has_text = cols.prompt in row and (row[cols.prompt] is not None or messages is None)
    text = _scalar(where, cols.prompt, row[cols.prompt]) if has_text else _text_of(messages or [])
    answer = _scalar(where, cols.answer, row[cols.answer])
    meta = {k: v for k, v in row.items() if k not in (cols.prompt, cols.answer, cols.messages)}
    if messages is not None:
        meta[MESSAGES] = messages
    return Prompt(text=text, answer=answer, meta=meta)


__all__ = ["Columns", "MESSAGES", "ROLES", "check_messages", "row_to_prompt"]
