"""Experiment trackers (``log.trackers``): what each wrote under the run directory, read back with an
offline reader, holds every metric of every step of ``metrics.jsonl`` and the samples; a missing
package, a typo and a remote trackio target are refused before training; an error still finishes
the trackers; a resumed run logs each step once."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from rlfold.core.config_loader import load_config
from rlfold.core.errors import ConfigError
from rlfold.trainers.loop import build_run
from rlfold.trainers.metrics import METRICS_FILE, SAMPLES_FILE, read_jsonl
from rlfold.trainers.trackers import (TB_DIR, TRACKIO_DIR, WANDB_DIR, WANDB_ID_FILE, TrackerContext,
                                      TrackioTracker, table)

RECIPE = "src/rlfold/recipes/grpo.yaml"
TINY = ["train.prompts_per_step=2", "rollout.n=2", "task.held_out_size=4", "eval.size=4", "log.progress=false",
        "checkpoint.every=0", "threads=1"]
ALL = "log.trackers=[tensorboard, wandb, trackio]"
# Environment variables that would send a tracker elsewhere: the runs here use the defaults.
TRACKER_ENV = ("WANDB_MODE", "WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "TRACKIO_DIR", "TRACKIO_SPACE_ID",
               "TRACKIO_SERVER_URL")


# ----- readers -----------------------------------------------------------------------------------


def expected(run: Path) -> dict[int, dict[str, float]]:
    """``{step: {metric: value}}`` of every numeric metric in metrics.jsonl (non-finite ones are logged as text)."""
    out: dict[int, dict[str, float]] = {}
    for row in read_jsonl(run / METRICS_FILE):
        out[int(row["step"])] = {
            k: float(v) for k, v in row.items()
            if k != "step" and ((isinstance(v, (int, float)) and not isinstance(v, bool))
                                or v in ("nan", "inf", "-inf"))}
    return out


def assert_same(got: dict[int, dict[str, float]], want: dict[int, dict[str, float]], rel: float = 0.0) -> None:
    """The same steps, the same metric names per step, the same values (``rel``: float32 storage)."""
    assert sorted(got) == sorted(want)
    for step, metrics in want.items():
        assert sorted(got[step]) == sorted(metrics), f"step {step}"
        for key, value in metrics.items():
            assert got[step][key] == pytest.approx(value, rel=rel, abs=1e-12 if rel else 0, nan_ok=True), \
                f"step {step} {key}"


def tensorboard_scalars(run: Path) -> tuple[dict[int, dict[str, float]], list[tuple[int, str]]]:
    """Scalars per step (each step at most once per tag) and the samples text of each step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / TB_DIR), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    got: dict[int, dict[str, float]] = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            assert tag not in got.setdefault(event.step, {}), f"{tag} logged twice at step {event.step}"
            got[event.step][tag] = event.value
    texts = [(e.step, e.tensor_proto.string_val[0].decode()) for tag in acc.Tags()["tensors"]
             if tag.startswith("samples") for e in acc.Tensors(tag)]
    return got, texts


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of a W&B transaction log (``run-<id>.wandb``): a 7-byte header, then 32 KiB blocks of
    chunks (4-byte checksum, 2-byte length, 1-byte type: full, first, middle, last) of protobuf records."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, block, pending = 7, 32 * 1024, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def wandb_history(path: Path) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """``{step: {key: value}}`` of the history rows (W&B's own ``_`` keys left out) and the exit codes."""
    rows: dict[int, dict[str, Any]] = {}
    exits: list[int] = []
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = rows.setdefault(record.history.step.num, {})
            for item in record.history.item:
                *outer, key = list(item.nested_key) or [item.key]  # a logged object: its fields, nested
                if not (outer or [key])[0].startswith("_"):
                    place = row
                    for part in outer:
                        place = place.setdefault(part, {})
                    place[key] = json.loads(item.value_json)
        elif kind == "exit":
            exits.append(record.exit.exit_code)
    return rows, exits


def wandb_files(run: Path) -> list[Path]:
    return sorted((run / WANDB_DIR).glob("offline-run-*/run-*.wandb"))


def trackio_rows(run: Path) -> tuple[dict[int, dict[str, float]], dict[int, list[dict[str, Any]]]]:
    """Metrics per step and sample tables per step from trackio's local database."""
    (db,) = (run / TRACKIO_DIR).glob("*.db")
    metrics: dict[int, dict[str, float]] = {}
    samples: dict[int, list[dict[str, Any]]] = {}
    with sqlite3.connect(db) as conn:
        for step, text in conn.execute("SELECT step, metrics FROM metrics WHERE run_name = ? ORDER BY id",
                                       (run.name,)):
            for key, value in json.loads(text).items():
                if key == "samples":
                    samples[step] = value["_value"]
                else:
                    assert key not in metrics.setdefault(step, {}), f"{key} logged twice at step {step}"
                    metrics[step][key] = float(value) if not isinstance(value, str) else float(value.lower())
    return metrics, samples


def samples_by_step(run: Path) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for row in read_jsonl(run / SAMPLES_FILE):
        out.setdefault(int(row["step"]), []).append(row)
    return out


# ----- one run with every tracker, in its own process (trackio reads TRACKIO_DIR when first imported) --


# The run's process records every name lookup and every connection that is not a local socket (an audit
# hook, written out when the process exits, after the trackers' own exit handlers).
NETWORK_PROBE = """
import atexit, sys
seen = []
def hook(event, args):
    if event == "socket.getaddrinfo" or (event == "socket.connect" and not isinstance(args[1], (str, bytes))):
        seen.append(f"{event} {args[:2] if event == 'socket.getaddrinfo' else args[1]!r}")
sys.addaudithook(hook)
atexit.register(lambda: open(sys.argv[1], "w").write("\\n".join(seen)))
from rlfold.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trackers") / "run"
    env = {k: v for k, v in os.environ.items() if k not in TRACKER_ENV}
    # The user-level directories W&B and trackio default to, moved aside, to see that nothing lands there
    # (matplotlib's and Hugging Face's stay where they are).
    import matplotlib
    from huggingface_hub.constants import HF_HOME

    xdg = run.parent / "xdg"
    env.update(XDG_CACHE_HOME=str(xdg / "cache"), XDG_DATA_HOME=str(xdg / "data"),
               XDG_CONFIG_HOME=str(xdg / "config"), MPLCONFIGDIR=matplotlib.get_configdir(),
               HF_HOME=env.get("HF_HOME", HF_HOME))
    argv = ["train", RECIPE, "train.steps=5", *TINY, ALL, f"run_dir={run}"]
    network = run.parent / "network.txt"
    proc = subprocess.run([sys.executable, "-c", NETWORK_PROBE, str(network), *argv], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(expected(run)) == [0, 1, 2, 3, 4, 5]
    assert network.read_text() == "", f"the run reached for the network:\n{network.read_text()}"
    assert not [p for p in xdg.rglob("*") if "wandb" in p.name or "trackio" in p.name]
    return run


def test_tensorboard_holds_every_metric_of_every_step(tracked_run):
    got, texts = tensorboard_scalars(tracked_run)
    assert_same(got, expected(tracked_run), rel=1e-6)  # TensorBoard stores float32
    samples = samples_by_step(tracked_run)
    assert sorted(step for step, _ in texts) == sorted(samples)
    for step, text in texts:
        assert text.splitlines()[0].startswith("| step | prompt | completion")
        assert len(text.splitlines()) == 2 + len(samples[step])


def test_wandb_offline_file_holds_every_metric_of_every_step(tracked_run):
    (path,) = wandb_files(tracked_run)
    run_id = (tracked_run / WANDB_DIR / WANDB_ID_FILE).read_text().strip()
    assert path.name == f"run-{run_id}.wandb"
    history, exits = wandb_history(path)
    assert exits == [0]  # finished: the offline file is complete
    assert list((tracked_run / WANDB_DIR / "data").rglob("*staging/*"))  # the tables staged for `wandb sync`
    tables = {step: row.pop("samples") for step, row in history.items() if "samples" in row}
    assert_same({s: {k: float(v) for k, v in row.items()} for s, row in history.items()}, expected(tracked_run))
    samples = samples_by_step(tracked_run)
    assert sorted(tables) == sorted(samples)
    for step, ref in tables.items():
        logged = json.loads((path.parent / "files" / ref["path"]).read_text())
        cols = logged["columns"]
        assert cols[:3] == ["step", "prompt", "completion"]
        assert [dict(zip(cols, r)) for r in logged["data"]] == samples[step]


def test_trackio_database_holds_every_metric_of_every_step(tracked_run):
    metrics, tables = trackio_rows(tracked_run)
    assert_same(metrics, expected(tracked_run))
    samples = samples_by_step(tracked_run)
    assert sorted(tables) == sorted(samples)
    for step, rows in tables.items():
        assert rows == samples[step]


# ----- in this process: resume, errors, refusals --------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    for key in TRACKER_ENV:
        monkeypatch.delenv(key, raising=False)


def test_resumed_run_logs_each_step_once(tmp_path, clean_env):
    run_dir = tmp_path / "run"
    trackers = "log.trackers=[tensorboard, wandb]"
    build_run(load_config(RECIPE, ["train.steps=3", *TINY, "checkpoint.every=2", trackers]), run_dir).fit()
    # continue from step 2: step 3 of the first session is logged again, and must not count twice
    cfg = load_config(RECIPE, ["train.steps=5", *TINY, "checkpoint.every=2", trackers])
    build_run(cfg, run_dir, resume=True, from_checkpoint="step_0000002").fit()
    want = expected(run_dir)
    assert sorted(want) == [0, 1, 2, 3, 4, 5]
    got, _ = tensorboard_scalars(run_dir)
    assert_same(got, want, rel=1e-6)
    first, second = wandb_files(run_dir)
    assert first.name == second.name  # one W&B run id, two sessions
    old, _ = wandb_history(first)
    new, exits = wandb_history(second)
    assert sorted(old) == [0, 1, 2, 3] and sorted(new) == [3, 4, 5] and exits == [0]
    merged = {**old, **new}  # what a sync of both sessions shows: the later session's steps
    assert_same({s: {k: float(v) for k, v in r.items() if k != "samples"} for s, r in merged.items()}, want)


def test_an_error_still_finishes_the_trackers(tmp_path, clean_env, monkeypatch):
    run = build_run(load_config(RECIPE, ["train.steps=5", *TINY, "log.trackers=[wandb, tensorboard]"]),
                    tmp_path / "run")
    real = run.trainer.step

    def step(index: int):
        if index == 2:
            raise RuntimeError("boom")
        return real(index)

    monkeypatch.setattr(run.trainer, "step", step)
    with pytest.raises(RuntimeError, match="boom"):
        run.fit()
    (path,) = wandb_files(run.run_dir)
    history, exits = wandb_history(path)
    assert exits == [1] and sorted(history) == [0, 1, 2]
    got, _ = tensorboard_scalars(run.run_dir)
    assert_same(got, expected(run.run_dir), rel=1e-6)


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "trackio"])
def test_a_missing_package_names_the_extra_before_anything_is_built(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # import of it fails, find_spec finds nothing
    cfg = load_config(RECIPE, ["train.steps=5", *TINY, f"log.trackers=[{name}]"])
    with pytest.raises(ConfigError, match=rf"pip install 'rlfold\[{name}\]'"):
        build_run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_tracker_names_are_checked_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"log\.trackers.*did you mean 'tensorboard'"):
        load_config(RECIPE, ["log.trackers=[tensorbord]"])
    with pytest.raises(ConfigError, match="listed twice"):
        load_config(RECIPE, ["log.trackers=[wandb, wandb]"])
    cfg = load_config(RECIPE, ["log.trackers=[trackio]", "log.project=demo", "log.run_name=first"])
    assert cfg.log.trackers == ["trackio"] and (cfg.log.project, cfg.log.run_name) == ("demo", "first")


def test_trackio_refuses_a_remote_target(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_SPACE_ID", "someone/space")
    ctx = TrackerContext(run_dir=tmp_path, project="p", name="r", start_step=0, config={})
    with pytest.raises(ConfigError, match="TRACKIO_SPACE_ID"):
        TrackioTracker(ctx)


def test_samples_table_keeps_numbers_and_writes_the_rest_as_text():
    columns, data = table(3, [{"prompt": "1+1=", "reward": 1.0, "answer": None}, {"prompt": "2+2=", "extra": [1]}])
    assert columns == ["step", "prompt", "reward", "answer", "extra"]
    assert data == [[3, "1+1=", 1.0, "", ""], [3, "2+2=", "", "", "[1]"]]
    assert math.isnan(table(0, [{"x": float("nan")}])[1][0][1])
