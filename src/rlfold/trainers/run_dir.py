"""The run directory: its exclusive lock, the checks before a run writes to it, the config and data
fingerprint it keeps, and the clean start of a fresh run (step 1 of the run loop)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import yaml

from rlfold.core.config import RunConfig
from rlfold.core.errors import ConfigError, DataError
from rlfold.trainers import checkpoint as ckpt
from rlfold.trainers.metrics import METRICS_FILE, SAMPLES_FILE, RunDirError, truncate_after_step

CONFIG_FILE = "config.yaml"
DATA_FILE = "data_fingerprint.json"  # the dataset files a run read: path, format, rows, sha256
LOCK_FILE = ".lock"
LOG_FILES = (METRICS_FILE, SAMPLES_FILE)
# Keys a resumed run may change without invalidating the checkpoint.
RESUMABLE_KEYS = {"train.steps", "checkpoint.every", "checkpoint.keep", "log.progress", "log.samples_per_step",
                  "eval.every", "run_dir", "threads", "log.trackers", "log.project", "log.run_name"}



def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


# ----- 1. the run directory ------------------------------------------------------------------------


class RunLock:
    """Exclusive lock of a run directory: ``fcntl.flock`` on ``RUN_DIR/.lock``, which names the holder.

    A second process is refused with a ``RunDirError`` naming the holder's pid. The kernel drops a
    flock when its process dies, so a lock file left by a killed run does not block. Within one
    process a directory's lock is shared (re-entrant, counted): the lock guards against other
    processes, and tests build several ``Run`` objects of one directory. ``release`` (or garbage
    collection of the handle) gives it back; the last release removes the lock file.
    """

    _held: dict[Path, dict[str, Any]] = {}

    def __init__(self, key: Path) -> None:
        self.key = key
        self._finalizer = weakref.finalize(self, RunLock._release_key, key, os.getpid())

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        key = Path(os.path.abspath(run_dir))
        held = cls._held.get(key)
        if held is not None and held["pid"] == os.getpid():
            held["count"] += 1
            return cls(key)
        path = key / LOCK_FILE
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RunDirError(f"cannot create the lock file {path} of run directory {run_dir}: "
                                  f"{_reason(exc)}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunDirError(
                        f"run directory {run_dir} is in use by another rlfold process ({holder}); nothing was "
                        "written. Wait for that run to end (or stop it), or choose another run_dir") from None
                raise RunDirError(f"cannot lock {path}: {_reason(exc)}") from exc
            # A holder releasing the lock removes the file: make sure we locked the file that is there now.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}\nstarted {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise RunDirError(f"cannot write the lock file {path}: {_reason(exc)}") from exc
        cls._held[key] = {"fd": fd, "count": 1, "pid": os.getpid(), "path": path}
        return cls(key)

    @property
    def held(self) -> bool:
        return self._finalizer.alive

    def release(self) -> None:
        self._finalizer()

    @classmethod
    def _release_key(cls, key: Path, pid: int) -> None:
        held = cls._held.get(key)
        if held is None or held["pid"] != pid or os.getpid() != pid:  # a forked child never releases
            return
        held["count"] -= 1
        if held["count"] > 0:
            return
        del cls._held[key]
        try:
            if os.path.samestat(os.fstat(held["fd"]), os.stat(held["path"])):
                os.unlink(held["path"])
        except OSError:
            pass  # an unwritable or vanished directory: the kernel still drops the lock below
        os.close(held["fd"])


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace")
    except OSError:
        text = ""
    fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    if "pid" not in fields:
        return "pid unknown"
    return f"pid {fields['pid']}" + (f", started {fields['started']}" if "started" in fields else "")


def make_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` (and its parents); a ``RunDirError`` naming the path if that is impossible."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise RunDirError(f"cannot create run directory {run_dir}: {exc.filename or run_dir} exists and is not a "
                          "directory") from exc
    except NotADirectoryError as exc:
        raise RunDirError(f"cannot create run directory {run_dir}: a parent of it is a regular file, not a "
                          "directory") from exc
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {run_dir}: {_reason(exc)}") from exc
    except ValueError as exc:  # an embedded NUL byte
        raise RunDirError(f"cannot create run directory {run_dir!r}: {exc}") from exc


def _has_checkpoints(run_dir: Path) -> bool:
    return bool(ckpt.checkpoints(run_dir)) or ckpt.read_latest(run_dir) is not None


def _read_saved_config(run_dir: Path) -> dict[str, Any]:
    cfg_file = run_dir / CONFIG_FILE
    if not cfg_file.is_file():
        raise ConfigError(f"--resume {run_dir}: no {CONFIG_FILE} there; is it a run directory?")
    try:
        saved = yaml.safe_load(cfg_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        marked = isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None
        where = f"{cfg_file}:{exc.problem_mark.line + 1}:{exc.problem_mark.column + 1}" if marked else str(cfg_file)
        problem = (exc.problem if isinstance(exc, yaml.MarkedYAMLError) else None) or str(exc).splitlines()[0]
        raise ConfigError(f"--resume {run_dir}: {where}: the saved config is not valid YAML ({problem}); "
                          "was it edited or damaged?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--resume {run_dir}: cannot read {cfg_file}: {exc}") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume {run_dir}: {cfg_file} holds a {type(saved).__name__}, not the mapping of a "
                          "run's config; was it edited or damaged?")
    return saved


def check_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> None:
    """A resume needs the same config (but ``RESUMABLE_KEYS``); a new run must not reuse checkpoints."""
    if resume:
        saved = _flatten(_read_saved_config(run_dir))
        now = _flatten(cfg.model_dump(mode="json"))
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUMABLE_KEYS)
        if diff:
            raise ConfigError(
                f"--resume {run_dir}: the config differs from the run's saved {CONFIG_FILE} in "
                + ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in diff)
            )
    elif run_dir.is_dir() and _has_checkpoints(run_dir):
        raise ConfigError(
            f"run directory {run_dir} already holds checkpoints; pass --resume {run_dir} "
            "to continue it, or choose another run_dir"
        )


def write_config(cfg: RunConfig, run_dir: Path) -> None:
    make_run_dir(run_dir)
    try:
        ckpt.atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    except OSError as exc:
        raise RunDirError(f"cannot write {run_dir / CONFIG_FILE}: {_reason(exc)}") from exc


def write_data_fingerprint(run_dir: Path, sources: list[dict[str, Any]], resume: bool) -> None:
    """Write ``DATA_FILE`` (every dataset file's path, rows and sha256); a resume whose files changed since
    the run started is refused, naming the file."""
    path = run_dir / DATA_FILE
    if resume and path.is_file():
        try:
            saved = {(s["split"], s["path"]): s for s in json.loads(path.read_text(encoding="utf-8"))["files"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"--resume {run_dir}: cannot read {path}: {exc}") from None
        for src in sources:
            old = saved.get((src["split"], src["path"]))
            if old is not None and old.get("sha256") != src["sha256"]:
                raise DataError(f"--resume {run_dir}: dataset file {src['path']} changed since the run started "
                                f"(sha256 {old.get('sha256', '?')[:12]}... -> {src['sha256'][:12]}..., rows "
                                f"{old.get('rows')} -> {src['rows']}); resume with the data the run was started on")
    try:
        ckpt.atomic_write_text(path, json.dumps({"files": sources}, indent=2) + "\n")
    except OSError as exc:
        raise RunDirError(f"cannot write {path}: {_reason(exc)}") from exc


def start_clean(run_dir: Path) -> None:
    """A fresh run: empty the logs an earlier try left (it never checkpointed, else the run is refused)."""
    stale = [name for name in LOG_FILES if (run_dir / name).is_file() and (run_dir / name).stat().st_size]
    for name in stale:
        truncate_after_step(run_dir / name, -1)
    if stale:
        print(f"rlfold: {run_dir} holds {' and '.join(stale)} of an earlier try without checkpoints; "
              "starting them afresh", file=sys.stderr)


def _note(text: str) -> None:
    print(f"rlfold: {text}", file=sys.stderr)


__all__ = ["CONFIG_FILE", "DATA_FILE", "LOCK_FILE", "LOG_FILES", "RESUMABLE_KEYS", "RunLock", "check_run_dir",
           "make_run_dir", "start_clean", "write_config", "write_data_fingerprint"]
