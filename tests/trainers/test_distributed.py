"""Data-parallel and sharded training on 2 CPU ranks (gloo): the single-process gradients on the same
global batch, and a resumed sharded run equal to an uninterrupted one. One torchrun launch holds
every check (``dist_worker.py``); a second runs ``rlfold train --nproc 2``. Work is bounded by
steps, never by a wall-clock timeout."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("dist_worker.py")
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "RLFOLD_TRACEBACK": "1"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_port()}", str(WORKER), str(where)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return where


@pytest.mark.parametrize("recipe", ["grpo", "reinforce_pp"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_ranks_give_the_single_process_gradient(out, recipe, strategy):
    result = torch.load(out / "grads.pt")
    even = result[f"{recipe}/even"]  # each rank's micro-batches are the single process's
    assert bool(even[f"{strategy}_same_batch"])  # the identical driver on every rank: the same global batch
    diff = (even[strategy] - even["single"]).abs().max().item()
    assert diff <= 1e-6, diff
    assert abs(float(even[f"{strategy}_pg_loss"] - even["single_pg_loss"])) <= 1e-6
    uneven = result[f"{recipe}/uneven"]  # 5 + 4 rows, a zero-mask padding micro-batch on one rank
    assert bool(uneven[f"{strategy}_same_batch"])
    g, ref = uneven[strategy], uneven["single"]
    assert (g - ref).norm() / ref.norm() <= 1e-5, (g - ref).abs().max()  # other micro-batch widths: fp32 order


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _steady(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(("timing_s/", "perf/"))}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_a_resumed_sharded_run_equals_an_uninterrupted_one(out, strategy):
    full, cut = out / strategy / "full", out / strategy / "cut"
    a, b = _rows(full / "metrics.jsonl"), _rows(cut / "metrics.jsonl")
    assert [r["step"] for r in a] == [0, 1, 2, 3, 4]
    assert [_steady(r) for r in a] == [_steady(r) for r in b]
    wa, wb = load_file(full / "final" / "model.safetensors"), load_file(cut / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    step = full / "checkpoints" / "step_0000002"
    assert (step / "dcp" / ".metadata").is_file() and {p.name for p in (step / "rng").iterdir()} == {
        "rank_0.pt", "rank_1.pt"}
    from rlfold.trainers.checkpoint import verify_checkpoint

    assert verify_checkpoint(step) == []
    samples = _rows(full / "samples.jsonl")
    assert [r["step"] for r in samples] == [s for s in (1, 2, 3, 4) for _ in range(4)]  # rank 0 alone wrote them
    assert [_steady(r) for r in samples] == [_steady(r) for r in _rows(cut / "samples.jsonl")]


def test_rlfold_train_nproc_relaunches_under_torchrun(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "rlfold.cli", "train", "grpo", "--nproc", "2", "train.strategy=ddp",
           "train.steps=1", "train.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=4", "eval.size=2",
           "task.held_out_size=4", "log.progress=false", f"run_dir={run}"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    assert [r["step"] for r in _rows(run / "metrics.jsonl")] == [0, 1]
    assert (run / "final" / "model.safetensors").is_file() and (run / "config.yaml").is_file()
    assert proc.stdout.count("run directory:") == 1  # rank 0 alone reports


def test_a_strategy_without_torchrun_says_how_to_launch():
    from rlfold.core.config_loader import load_config
    from rlfold.core.errors import ConfigError
    from rlfold.cli import resolve_recipe
    from rlfold.trainers.distributed import setup

    env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k in os.environ}
    try:
        cfg = load_config(resolve_recipe("grpo"), ["train.strategy=fsdp2"])
        with pytest.raises(ConfigError, match="train.strategy=fsdp2 .*torchrun.*--nproc"):
            setup(cfg.train.strategy)
    finally:
        os.environ.update(env)
