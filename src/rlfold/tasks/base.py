"""Task interface and the JSONL loader with row-level validation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlfold.core.errors import DataError
from rlfold.core.registry import Registry
from rlfold.core.types import Prompt


@dataclass
class Task:
    """A train split and a held-out split of prompts, plus the default reward function names."""

    name: str
    train: list[Prompt]
    held_out: list[Prompt]
    rewards: list[str]

    def __post_init__(self) -> None:
        if not self.train:
            raise DataError(f"task {self.name!r}: the training split is empty")
        if not self.held_out:
            raise DataError(f"task {self.name!r}: the held-out split is empty")


TASKS: Registry[Callable[..., Task]] = Registry("task")

REQUIRED_FIELDS = ("prompt", "answer")


def load_jsonl_prompts(path: str | Path) -> list[Prompt]:
    """Read ``{"prompt": ..., "answer": ...}`` rows; a malformed row is reported by file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file {path} does not exist")
    prompts: list[Prompt] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [f for f in REQUIRED_FIELDS if f not in row]
            if missing:
                raise DataError(
                    f"{path}:{lineno}: row is missing field(s) {', '.join(map(repr, missing))}"
                    f" (has {', '.join(map(repr, row)) or 'none'})"
                )
            for f in REQUIRED_FIELDS:
                if not isinstance(row[f], (str, int, float)):
                    raise DataError(f"{path}:{lineno}: field {f!r} must be a string or number")
            meta = {k: v for k, v in row.items() if k not in REQUIRED_FIELDS}
            prompts.append(Prompt(text=str(row["prompt"]), answer=str(row["answer"]), meta=meta))
    if not prompts:
        raise DataError(f"dataset file {path} is empty (no rows)")
    return prompts
