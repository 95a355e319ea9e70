"""Task interface and the JSONL loader with row-level validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rlfold.core.errors import DataError
from rlfold.core import registry
from rlfold.core.types import Prompt
from rlfold.tasks.files import DataSource, jsonl_rows
from rlfold.tasks.rows import Columns, row_to_prompt


@dataclass
class Task:
    """A train split and a held-out split of prompts, plus the default reward function names and the
    dataset files the splits were read from (their fingerprints go to the run directory)."""

    name: str
    train: list[Prompt]
    held_out: list[Prompt]
    rewards: list[str]
    sources: list[DataSource] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.train:
            raise DataError(f"task {self.name!r}: the training split is empty")
        if not self.held_out:
            raise DataError(f"task {self.name!r}: the held-out split is empty")


TASKS = registry.TASKS

REQUIRED_FIELDS = ("prompt", "answer")


def load_jsonl_prompts(path: str | Path, cols: Columns = Columns()) -> list[Prompt]:
    """Read ``{"prompt": ..., "answer": ...}`` rows; a malformed row is reported by file and line."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"dataset file {path} is a directory; expected a JSONL file of prompt/answer rows")
    if not path.is_file():
        raise DataError(f"dataset file {path} does not exist")
    prompts = [row_to_prompt(row, where, cols) for where, row in jsonl_rows(path)]
    if not prompts:
        raise DataError(f"dataset file {path} is empty (no rows); expected one JSON object per line")
    return prompts
