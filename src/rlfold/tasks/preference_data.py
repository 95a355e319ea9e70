"""Preference datasets: pairs, ranked lists and unpaired labels, validated row by row.

Three kinds of row (the column names are options, ``PreferenceColumns``):

- **pairs** ``{"prompt", "chosen", "rejected"}``, optionally ``"margin"`` (a number, e.g. Llama 2's
  preference-strength margin);
- **lists** ``{"prompt", "responses": [...], "scores": [...]}`` (a ranked list: higher score is better);
- **unpaired** ``{"prompt", "completion", "label"}`` (KTO's desirable ``true`` / undesirable ``false``).

The prompt is a string or a list of chat messages (``{"role", "content"}``, TRL's conversational
format); a completion is a string or a list holding one assistant message. Every other column is kept
in ``meta`` (``flipped`` of a synthetic dataset, for instance). A bad row is a ``DataError`` naming the
file and line, or, with ``bad_rows="skip"``, a skip counted by reason (``PreferenceData.skipped``):
a missing or mistyped field, ``chosen == rejected``, an empty completion, a ranked list with fewer than
two responses or with all scores equal, scores that are not finite numbers.

Files are read by ``tasks.files`` (JSONL line by line; Parquet, CSV, JSON and ``save_to_disk``
directories through ``datasets``), which also gives the sha256 fingerprint the run directory records.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from rlfold.core.errors import DataError
from rlfold.core.types import Prompt
from rlfold.tasks.files import DataSource, file_format, hf_rows, jsonl_rows, sha256_of
from rlfold.tasks.rows import MESSAGES, _show, check_messages

Kind = Literal["pairs", "lists", "unpaired"]
KINDS: tuple[Kind, ...] = ("pairs", "lists", "unpaired")


@dataclass(frozen=True)
class PreferenceColumns:
    """Which column holds each field of a preference row."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    responses: str = "responses"
    scores: str = "scores"
    completion: str = "completion"
    label: str = "label"
    margin: str = "margin"

    def required(self, kind: Kind) -> tuple[str, ...]:
        """The columns a row of ``kind`` must have besides the prompt."""
        return {"pairs": (self.chosen, self.rejected), "lists": (self.responses, self.scores),
                "unpaired": (self.completion, self.label)}[kind]


@dataclass
class PreferenceExample:
    """One validated row: a prompt and K responses with their scores (pairs: [chosen, rejected], [1, 0])."""

    prompt: Prompt
    responses: list[str]
    scores: list[float]
    where: str
    margin: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreferenceData:
    """The examples of one dataset, their kind, where they came from and the rows skipped (reason -> count)."""

    kind: Kind
    examples: list[PreferenceExample]
    source: DataSource | None = None
    skipped: Counter = field(default_factory=Counter)

    def skip_report(self) -> str:
        """``"3 rows (chosen equals rejected: 2, empty completion: 1)"`` or ``"no rows"``."""
        n = sum(self.skipped.values())
        if not n:
            return "no rows"
        parts = ", ".join(f"{why}: {c}" for why, c in sorted(self.skipped.items()))
        return f"{n} row{'s' * (n != 1)} ({parts})"


class _Skip(Exception):
    """A row that is bad in a way ``bad_rows="skip"`` may skip; ``reason`` is the counted category."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def detect_kind(row: Any, cols: PreferenceColumns, where: str) -> Kind:
    """The kind of a row from the columns it has (pairs, then lists, then unpaired)."""
    if isinstance(row, dict):
        for kind in KINDS:
            if all(c in row for c in cols.required(kind)):
                return kind
    fields = "; ".join(f"{k}: {', '.join(map(repr, (cols.prompt, *cols.required(k))))}" for k in KINDS)
    has = ", ".join(map(repr, row)) if isinstance(row, dict) else type(row).__name__
    raise DataError(f"{where}: not a preference row (has {has or 'nothing'}); expected the fields of one of "
                    f"the kinds {fields} (column names: preference.*_key)")


def _prompt(row: dict[str, Any], cols: PreferenceColumns, where: str) -> Prompt:
    if cols.prompt not in row:
        raise DataError(f"{where}: row is missing field {cols.prompt!r} (has {', '.join(map(repr, row))}); set "
                        "preference.prompt_key to the column holding the prompt")
    value = row[cols.prompt]
    if isinstance(value, (list, tuple)):
        messages = check_messages(where, cols.prompt, value)
        users = [m["content"] for m in messages if m["role"] == "user"]
        return Prompt(text=users[-1] if users else messages[-1]["content"], answer="", meta={MESSAGES: messages})
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field {cols.prompt!r} must be a string or a list of chat messages, got "
                        f"{_show(value)}")
    if not str(value).strip():
        raise _Skip("empty prompt", f"{where}: field {cols.prompt!r} is empty")
    return Prompt(text=str(value), answer="")


def _completion(value: Any, key: str, where: str) -> str:
    """A completion: a string, or a list of messages whose last is the assistant's reply."""
    if isinstance(value, (list, tuple)):
        messages = check_messages(where, key, value)
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: field {key!r} is a message list whose last message is "
                            f"{messages[-1]['role']!r}; a completion must end with the assistant's message")
        value = messages[-1]["content"]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string (or an assistant message), got {_show(value)}")
    if not value.strip():
        raise _Skip("empty completion", f"{where}: field {key!r} is an empty completion (nothing to score)")
    return value


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise DataError(f"{where}: field {key!r} must be a finite number, got {_show(value)}")
    return float(value)


def _label(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return float(value)
    raise DataError(f"{where}: field {key!r} must be true (desirable) or false (undesirable), got {_show(value)}")


def parse_row(row: Any, where: str, kind: Kind, cols: PreferenceColumns) -> PreferenceExample:
    """One row as a ``PreferenceExample``; raises ``DataError`` (or ``_Skip`` for a skippable defect)."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [c for c in cols.required(kind) if c not in row or row[c] is None]
    if missing:
        raise DataError(f"{where}: {kind} row is missing field(s) {', '.join(map(repr, missing))} (has "
                        f"{', '.join(map(repr, row))}); the dataset's first row made it a {kind} dataset")
    prompt = _prompt(row, cols, where)
    margin = None
    if kind == "pairs":
        responses = [_completion(row[cols.chosen], cols.chosen, where),
                     _completion(row[cols.rejected], cols.rejected, where)]
        if responses[0] == responses[1]:
            raise _Skip("chosen equals rejected", f"{where}: {cols.chosen!r} equals {cols.rejected!r} "
                                                  f"({_show(responses[0])}): the pair prefers nothing")
        scores = [1.0, 0.0]
        if row.get(cols.margin) is not None:
            margin = _number(row[cols.margin], cols.margin, where)
    elif kind == "lists":
        items, values = row[cols.responses], row[cols.scores]
        if not isinstance(items, (list, tuple)) or not isinstance(values, (list, tuple)):
            raise DataError(f"{where}: fields {cols.responses!r} and {cols.scores!r} must be lists, got "
                            f"{_show(items)} and {_show(values)}")
        if len(items) != len(values):
            raise DataError(f"{where}: {cols.responses!r} has {len(items)} responses but {cols.scores!r} has "
                            f"{len(values)} scores")
        if len(items) < 2:
            raise _Skip("ranked list with fewer than 2 responses",
                        f"{where}: a ranked list needs at least 2 responses, got {len(items)}")
        responses = [_completion(v, f"{cols.responses}[{i}]", where) for i, v in enumerate(items)]
        scores = [_number(v, f"{cols.scores}[{i}]", where) for i, v in enumerate(values)]
        if len(set(scores)) == 1:
            raise _Skip("ranked list with all scores equal",
                        f"{where}: every response of the ranked list has the score {scores[0]:g}: it ranks nothing")
    else:
        responses = [_completion(row[cols.completion], cols.completion, where)]
        scores = [_label(row[cols.label], cols.label, where)]
    used = {cols.prompt, cols.margin, *cols.required(kind)}
    meta = {k: v for k, v in row.items() if k not in used}
    return PreferenceExample(prompt=prompt, responses=responses, scores=scores, where=where, margin=margin, meta=meta)


def parse_rows(rows: Iterable[tuple[str, Any]], cols: PreferenceColumns = PreferenceColumns(),
               kind: Kind | Literal["auto"] = "auto", bad_rows: Literal["error", "skip"] = "error",
               what: str = "dataset") -> PreferenceData:
    """Validated examples of ``(where, row)`` pairs; the kind comes from the first row unless given."""
    examples: list[PreferenceExample] = []
    skipped: Counter = Counter()
    for where, row in rows:
        if kind == "auto":
            kind = detect_kind(row, cols, where)
        try:
            examples.append(parse_row(row, where, kind, cols))
        except _Skip as exc:
            if bad_rows == "error":
                raise DataError(f"{exc} (preference.bad_rows=skip skips such rows and counts them)") from None
            skipped[exc.reason] += 1
    if kind == "auto" or not examples:
        extra = f"; skipped {sum(skipped.values())} bad rows" if skipped else ""
        raise DataError(f"{what} has no usable preference rows{extra}")
    return PreferenceData(kind=kind, examples=examples, skipped=skipped)


def load_preferences(path: str | Path, split: str = "train", cols: PreferenceColumns = PreferenceColumns(),
                     kind: Kind | Literal["auto"] = "auto",
                     bad_rows: Literal["error", "skip"] = "error") -> PreferenceData:
    """The validated examples of a JSONL / Parquet / CSV / JSON file or ``save_to_disk`` directory, and its
    fingerprint."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"preference dataset {path} does not exist")
    fmt = file_format(path)
    rows = jsonl_rows(path) if fmt == "jsonl" else iter(hf_rows(path, fmt))
    data = parse_rows(rows, cols, kind, bad_rows, what=f"preference dataset {path}")
    data.source = DataSource(split=split, path=str(path.resolve()), format=fmt,
                             rows=len(data.examples) + sum(data.skipped.values()), sha256=sha256_of(path))
    return data


# ----- converting between kinds --------------------------------------------------------------------


def as_kind(data: PreferenceData, kind: Kind) -> PreferenceData:
    """The examples in the kind a loss accepts: pairs are lists of two; a list becomes its best-vs-worst pair;
    a pair becomes two unpaired examples (chosen desirable, rejected undesirable; TRL's unpairing)."""
    if data.kind == kind:
        return data
    out: list[PreferenceExample] = []
    for ex in data.examples:
        if kind == "lists" and data.kind == "pairs":
            out.append(ex)
        elif kind == "pairs" and data.kind == "lists":
            best = max(range(len(ex.scores)), key=lambda i: (ex.scores[i], -i))
            worst = min(range(len(ex.scores)), key=lambda i: (ex.scores[i], i))
            out.append(PreferenceExample(ex.prompt, [ex.responses[best], ex.responses[worst]], [1.0, 0.0], ex.where,
                                         None, ex.meta))
        elif kind == "unpaired" and data.kind == "pairs":
            out += [PreferenceExample(ex.prompt, [ex.responses[0]], [1.0], ex.where, None, ex.meta),
                    PreferenceExample(ex.prompt, [ex.responses[1]], [0.0], ex.where, None, ex.meta)]
        else:
            raise DataError(f"a {data.kind} dataset cannot be used as {kind} data (accepted conversions: pairs -> "
                            "lists, lists -> pairs, pairs -> unpaired)")
    return PreferenceData(kind=kind, examples=out, source=data.source, skipped=data.skipped)


__all__ = ["KINDS", "Kind", "PreferenceColumns", "PreferenceData", "PreferenceExample", "as_kind", "detect_kind",
           "load_preferences", "parse_row", "parse_rows"]
