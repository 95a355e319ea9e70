"""Dataset files to prompts: JSONL read line by line, Parquet / CSV / JSON / ``save_to_disk`` directories
through Hugging Face ``datasets`` (local files only), and the sha256 fingerprint of what was read.

JSONL keeps its own reader so that every error names the file and line (a row that is not UTF-8, not
JSON, not an object); the other formats are read whole by ``datasets`` (the optional extra
``rlfold[data]``) and their errors name the file and the row number.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from rlfold.core.errors import DataError
from rlfold.core.types import Prompt
from rlfold.tasks.rows import Columns, row_to_prompt

# File suffix -> format read by ``datasets``; any other file is JSONL, a directory is a ``save_to_disk`` dataset.
HF_FORMATS = {".parquet": "parquet", ".csv": "csv", ".json": "json"}
DISK = "save_to_disk"


@dataclass
class DataSource:
    """One dataset file a task read: its split, resolved path, format, row count and sha256."""

    split: str
    path: str
    format: str
    rows: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def file_format(path: Path) -> str:
    """``jsonl``, ``parquet``, ``csv``, ``json`` (by suffix) or ``save_to_disk`` (a directory)."""
    if path.is_dir():
        return DISK
    return HF_FORMATS.get(path.suffix.lower(), "jsonl")


def sha256_of(path: Path) -> str:
    """sha256 of a file's bytes; of a directory, of its files' relative paths and sha256s in sorted order."""
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{sha256_of(f)}\n".encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """``("file:line", value)`` for each non-blank line: UTF-8 (a leading BOM allowed) and valid JSON."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def _hf_datasets() -> Any:
    """The ``datasets`` module, offline (never the hub), quiet; a ``DataError`` saying how to install it."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise DataError("reading Parquet, CSV, JSON or save_to_disk datasets needs the Hugging Face `datasets` "
                        "package: pip install 'rlfold[data]' (JSONL files need nothing extra)") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors become our DataError instead
    return datasets


def hf_rows(path: Path, fmt: str) -> list[tuple[str, Any]]:
    """``("file: row n", row)`` for each row of a local Parquet / CSV / JSON file or ``save_to_disk`` directory."""
    ds = _hf_datasets()
    what = {DISK: "a dataset saved with save_to_disk", "parquet": "a Parquet file"}.get(fmt, f"a {fmt.upper()} file")
    if fmt == DISK and not any((path / name).is_file() for name in ("dataset_info.json", "state.json",
                                                                    "dataset_dict.json")):
        raise DataError(f"dataset {path} is a directory but not a dataset saved with Dataset.save_to_disk (no "
                        "state.json / dataset_info.json); expected a JSONL, Parquet or CSV file or such a directory")
    if fmt != DISK and path.stat().st_size == 0:
        raise DataError(f"dataset file {path} is empty (no rows)")
    with tempfile.TemporaryDirectory(prefix="rlfold-datasets-") as cache:
        try:
            if fmt == DISK:
                data = ds.load_from_disk(str(path), keep_in_memory=True)
            else:
                data = ds.load_dataset(fmt, data_files=str(path), split="train", cache_dir=cache,
                                       keep_in_memory=True)
        except Exception as exc:  # noqa: BLE001 - pyarrow, pandas and datasets each raise their own kinds
            if "corresponds to no data" in str(exc):  # a file with a schema and no rows
                raise DataError(f"dataset file {path} is empty (no rows)") from None
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"dataset file {path}: cannot read it as {what} ({type(exc).__name__}: "
                            f"{reason[:200]})") from None
        if isinstance(data, ds.DatasetDict):
            raise DataError(f"dataset {path} holds the splits {', '.join(map(repr, data))}; point "
                            "task.train_file / task.held_out_file at one split's directory")
        rows = data.to_list()
    return [(f"{path}: row {i}", row) for i, row in enumerate(rows, start=1)]


def load_prompts(path: str | Path, split: str = "train", cols: Columns = Columns()) -> tuple[list[Prompt], DataSource]:
    """The prompts of a dataset file (or ``save_to_disk`` directory) and its fingerprint; each row is
    validated (``rows.row_to_prompt``) and a bad one is a ``DataError`` naming the file and row."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset file {path} does not exist")
    fmt = file_format(path)
    rows = jsonl_rows(path) if fmt == "jsonl" else iter(hf_rows(path, fmt))
    prompts = [row_to_prompt(row, where, cols) for where, row in rows]
    if not prompts:
        expected = "one JSON object per line" if fmt == "jsonl" else "at least one row"
        raise DataError(f"dataset file {path} is empty (no rows); expected {expected}")
    return prompts, DataSource(split=split, path=str(path.resolve()), format=fmt, rows=len(prompts),
                               sha256=sha256_of(path))



def files_or_generated(train_file: str | None, held_out_file: str | None, cols: Columns,
                       make_train: Callable[[], list[Prompt]], make_held: Callable[[], list[Prompt]]
                       ) -> tuple[list[Prompt], list[Prompt], list[DataSource]]:
    """Train and held-out prompts, each read from its dataset file when one is given (``load_prompts``), else
    made by its generator (called only then); and the files read."""
    sources: list[DataSource] = []
    splits: list[list[Prompt]] = []
    for split, path, make in (("train", train_file, make_train), ("held_out", held_out_file, make_held)):
        if path:
            prompts, src = load_prompts(path, split, cols)
            sources.append(src)
        else:
            prompts = make()
        splits.append(prompts)
    return splits[0], splits[1], sources

__all__ = ["DataSource", "HF_FORMATS", "file_format", "hf_rows", "files_or_generated", "jsonl_rows", "load_prompts",
           "sha256_of"]
