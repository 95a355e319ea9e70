"""Task interface and the JSONL loader with row-level validation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rlfold.core.errors import DataError
from rlfold.core import registry
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


TASKS = registry.TASKS

REQUIRED_FIELDS = ("prompt", "answer")


def load_jsonl_prompts(path: str | Path) -> list[Prompt]:
    """Read ``{"prompt": ..., "answer": ...}`` rows; a malformed row is reported by file and line."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"dataset file {path} is a directory; expected a JSONL file of prompt/answer rows")
    if not path.is_file():
        raise DataError(f"dataset file {path} does not exist")
    prompts: list[Prompt] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{path}:{lineno}: expected a JSON object with fields {', '.join(map(repr, REQUIRED_FIELDS))}, "
                    f"got {type(row).__name__}"
                )
            missing = [f for f in REQUIRED_FIELDS if f not in row]
            if missing:
                raise DataError(
                    f"{path}:{lineno}: row is missing field(s) {', '.join(map(repr, missing))}"
                    f" (has {', '.join(map(repr, row)) or 'none'})"
                )
            for f in REQUIRED_FIELDS:
                value = row[f]
                if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                    raise DataError(
                        f"{path}:{lineno}: field {f!r} must be a string or number, got {json.dumps(value)[:60]}"
                    )
            meta = {k: v for k, v in row.items() if k not in REQUIRED_FIELDS}
            prompts.append(Prompt(text=str(row["prompt"]), answer=str(row["answer"]), meta=meta))
    if not prompts:
        raise DataError(f"dataset file {path} is empty (no rows); expected one JSON object per line")
    return prompts
