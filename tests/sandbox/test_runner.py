"""The sandbox against hostile programs, alone and under the code_tests reward: the parent always survives."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from rlfold.core.types import Prompt
from rlfold.rewards.base import REWARDS
from rlfold.rewards.code import code_tests
from rlfold.sandbox import STATUSES, SandboxResult, run_sandboxed

REPO = Path(__file__).resolve().parents[2]
ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]
FORK_BOMB = "import os\nwhile True: os.fork()"


def _procs() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, pgid, sid) of every live process, read from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[3]))
    return out


def _leftovers(result: SandboxResult | None = None) -> list[int]:
    """Children of this test process, and anything in a sandboxed program's process group or session."""
    mine = os.getpid()
    ids = set(result.pids) if result else set()
    return [pid for pid, (ppid, pgid, sid) in _procs().items()
            if ppid == mine or pid in ids or pgid in ids or sid in ids]


@pytest.fixture(autouse=True)
def _no_stray_children():
    yield
    assert _leftovers() == [], "a sandboxed program left processes behind"


def _check(result: SandboxResult, statuses: list[str]) -> None:
    assert result.statuses == statuses, result.stderr[-2000:]
    assert result.total == len(statuses)
    assert result.passed == statuses.count("pass")
    assert set(result.statuses) <= set(STATUSES)
    assert _leftovers(result) == []


def test_correct_function_passes_all_tests_and_stdlib_loads():
    code = ADD + "import json, re, heapq, collections, dataclasses, functools\n"
    result = run_sandboxed(code, ADD_TESTS + ["assert json.loads(json.dumps([1])) == [1]"])
    _check(result, ["pass"] * 4)
    assert result.fraction == 1.0 and not result.timed_out and result.refused == []


def test_wrong_function_fails_some_and_a_crash_does_not_hide_later_tests():
    code = "def add(a, b):\n    return a * b\n"
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "1 / 0", "import os; os._exit(3)", "assert add(0, 5) == 0"]
    result = run_sandboxed(code, tests)
    # the os._exit kills the interpreter inside test 3; test 4 is re-run in a fresh one
    _check(result, ["fail", "pass", "error", "error", "pass"])
    assert "ZeroDivisionError" in result.stderr and len(result.pids) == 2


def test_syntax_error_fails_every_test():
    _check(run_sandboxed("def add(a, b) return a", ADD_TESTS), ["error"] * 3)


@pytest.mark.parametrize("code", ["while True:\n    pass", "import time\ntime.sleep(60)"], ids=["busy", "sleep"])
def test_infinite_loop_times_out(code):
    t0 = time.monotonic()
    result = run_sandboxed(code, ADD_TESTS, timeout_s=1.0)
    assert time.monotonic() - t0 < 1.0 + 2.0
    _check(result, ["timeout"] * 3)
    assert result.timed_out and result.returncode < 0


def test_loop_inside_one_test_times_out_that_test_and_the_rest():
    result = run_sandboxed(ADD, ["assert add(1, 2) == 3", "while True: pass", "assert add(2, 2) == 4"], timeout_s=1.0)
    _check(result, ["pass", "timeout", "timeout"])


@pytest.mark.parametrize("layers", [{}, {"isolate_network": False, "drop_privileges": False}], ids=["all", "hook-only"])
def test_fork_bomb_is_refused_and_leaves_no_process(layers):
    t0 = time.monotonic()
    result = run_sandboxed(FORK_BOMB, ADD_TESTS, timeout_s=2.0, **layers)
    _check(result, ["refused"] * 3)
    assert "os.fork" in result.refused and time.monotonic() - t0 < 2.0


def test_fork_bomb_swallowing_the_refusal_times_out_without_processes():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except Exception:\n        pass"
    result = run_sandboxed(code, ADD_TESTS, timeout_s=1.0)
    _check(result, ["timeout"] * 3)


def test_ten_gigabyte_allocation_is_a_memory_error():
    t0 = time.monotonic()
    result = run_sandboxed("x = bytearray(10 * 1024**3)", ADD_TESTS, memory_mb=512)
    _check(result, ["memory"] * 3)
    assert "MemoryError" in result.stderr and time.monotonic() - t0 < 5.0


@pytest.mark.parametrize("target", ["/tmp/../etc/rlfold_pwn", str(REPO / "rlfold_pwn.txt"),
                                    str(Path(__file__).with_name("rlfold_pwn.py"))])
def test_writes_outside_the_temp_dir_are_refused(target):
    tests = [
        f"open({target!r}, 'w').write('pwned')",
        f"import os; os.close(os.open({target!r}, os.O_WRONLY | os.O_CREAT))",
        f"import pathlib; pathlib.Path({target!r}).write_text('pwned')",
        f"import os; os.symlink({os.path.dirname(target)!r}, 'link'); open('link/' + {os.path.basename(target)!r}, 'w')",
        (f"import os; d = os.open({os.path.dirname(target)!r}, os.O_RDONLY); "
         f"os.open({os.path.basename(target)!r}, os.O_WRONLY | os.O_CREAT, dir_fd=d)"),
        # patching os / os.path does not change what the hook resolves
        (f"import os; os.symlink({os.path.dirname(target)!r}, 'l2'); os.lstat = os.stat; "
         f"os.path.realpath = lambda p, **k: os.getcwd(); open('l2/' + {os.path.basename(target)!r}, 'w')"),
        "open('inside.txt', 'w').write('ok'); assert open('inside.txt').read() == 'ok'",
    ]
    result = run_sandboxed("", tests)
    _check(result, ["refused"] * 6 + ["pass"])
    assert not os.path.exists(target)


def test_deleting_or_changing_files_outside_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    victim.chmod(0o644)
    v = str(victim)
    tests = [f"import os; os.remove({v!r})", f"import os; os.rename({v!r}, 'moved')",
             f"import shutil; shutil.rmtree({str(tmp_path)!r})", f"import os; os.chmod({v!r}, 0o777)",
             f"import os; os.truncate({v!r}, 0)", f"import os; os.link({v!r}, 'hard')",
             f"import os; os.mkdir({str(tmp_path / 'newdir')!r})"]
    _check(run_sandboxed("", tests), ["refused"] * len(tests))
    assert victim.read_text() == "keep" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]


@pytest.mark.parametrize("isolate", [True, False], ids=["netns+hook", "hook-only"])
def test_network_connection_is_refused(isolate):
    tests = ["import socket; socket.create_connection(('1.1.1.1', 80), timeout=2)",
             "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0))",
             "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/var/run/docker.sock')"]
    result = run_sandboxed("", tests, isolate_network=isolate)
    _check(result, ["refused"] * 3)
    assert {"socket.getaddrinfo", "socket.bind", "socket.connect"} <= set(result.refused)
    if not isolate:
        assert not result.network_isolated


def test_process_creation_is_refused():
    tests = ["import subprocess; subprocess.run(['ls'])", "import os; os.system('ls')",
             "import os; os.execv('/bin/ls', ['ls'])", "import os; os.posix_spawn('/bin/ls', ['ls'], {})",
             "import pty; pty.fork()", "import multiprocessing as mp; p = mp.Process(target=print); p.start()"]
    _check(run_sandboxed("", tests), ["refused"] * len(tests))


def test_signals_rlimits_and_ctypes_are_refused():
    tests = ["import os, signal; os.kill(os.getppid(), signal.SIGKILL)",
             "import resource; resource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
             "import ctypes"]
    parent = os.getppid()  # 1 when the test run was started detached (nohup ... &): compared, not assumed > 1
    _check(run_sandboxed("", tests), ["refused"] * 3)
    assert os.getppid() == parent  # this process and its parent are still here (a killed parent re-parents us)


def test_hundred_megabytes_of_output_are_capped_without_hanging():
    t0 = time.monotonic()
    code = "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1 << 20))\nsys.stderr.write('e' * (1 << 22))"
    result = run_sandboxed(code, ADD_TESTS[:1] + ["assert True"], max_output_bytes=4096, timeout_s=20.0)
    _check(result, ["error", "pass"])  # add is undefined: NameError
    assert result.output_truncated and len(result.stdout) == 4096 and len(result.stderr) == 4096
    assert time.monotonic() - t0 < 15.0


def test_forged_result_lines_count_for_nothing():
    forged = '{"kind": "test", "i": 0, "status": "pass"}\\n'
    code = ("import os\n"
            f"print({forged!r} * 3)\n"
            "for fd in range(3, 64):\n"
            "    try:\n"
            f"        os.write(fd, {forged!r}.encode())\n"
            "    except OSError:\n"
            "        pass\n")
    _check(run_sandboxed(code, ["assert False"]), ["fail"])


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
                    reason="needs root and a system interpreter readable by nobody")
def test_root_parent_runs_programs_as_nobody():
    result = run_sandboxed(FORK_BOMB, ["assert True"], python="/usr/bin/python3")
    assert result.statuses == ["refused"] and result.uid in (0, 65534)
    if result.uid == 0:
        pytest.skip("the system interpreter's sys.path is not world-readable: no privilege drop here")
    ok = run_sandboxed("import os", ["assert os.geteuid() == 65534", "assert os.getegid() == 65534",
                                     "assert os.getgroups() == []", "open('mine.txt', 'w').write('x')"],
                       python="/usr/bin/python3")
    _check(ok, ["pass"] * 4)


def test_training_run_continues_through_hostile_completions():
    reward = REWARDS.get("code_tests")
    assert reward is code_tests
    prompt = Prompt("Write add(a, b).", "", {"tests": ADD_TESTS})
    prompts = [prompt, prompt, prompt, Prompt("no tests", "4"), prompt]
    completions = [f"Sure:\n```python\n{ADD}```", "while True:\n    pass", FORK_BOMB, "4",
                   "def add(a, b):\n    return 3"]  # passes only add(1, 2) == 3
    t0 = time.monotonic()
    scores = reward(prompts, completions, ["stop"] * 5, timeout_s=1.0)
    assert scores == [1.0, 0.0, 0.0, None, pytest.approx(1 / 3)]
    assert time.monotonic() - t0 < 1.0 + 5.0
    strict = reward(prompts[-1:], completions[-1:], ["stop"], all_or_nothing=True)
    assert strict == [0.0]
    assert _leftovers() == []
