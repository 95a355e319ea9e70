"""The parent side of the sandbox: run untrusted Python against test cases in a resource-limited subprocess.

``run_sandboxed(code, tests)`` runs one program -- the candidate ``code``, then each test (an
``assert`` snippet) in the candidate's namespace -- in a fresh interpreter and returns a
:class:`SandboxResult` with one status per test: ``"pass"``, ``"fail"`` (AssertionError),
``"timeout"``, ``"memory"`` (MemoryError or a kill for memory), ``"refused"`` (the sandbox refused
an operation) or ``"error"`` (any other exception, a crash, a syntax error). It never raises for
anything the program does; a missing result is never counted as a pass.

Layers, each working on its own:

1. **Process.** One fresh ``python -I -S -B child.py`` per program (isolated mode: no PYTHON*
   variables, no user site, neither the current nor the script's directory on ``sys.path``; no
   site-packages unless asked), started in a new session so the parent can SIGKILL the whole
   process group. The working directory is
   a fresh ``tempfile.TemporaryDirectory`` removed afterwards; the environment is scrubbed (no
   HOME, no PYTHONPATH; ``TMPDIR`` is the temp dir); stdin is ``/dev/null``; stdout (head) and
   stderr (tail) are captured up to ``max_output_bytes`` each while the rest is drained and
   dropped, so a program printing without end cannot block or exhaust the parent. A wall-clock
   deadline in the parent kills the group. No ``preexec_fn`` is used, so the call is safe from
   threads (the ``code_tests`` reward runs programs concurrently).
2. **Kernel limits**, set by the child (``rlfold.sandbox.child``) before any candidate code runs:
   RLIMIT_CPU (``ceil(timeout_s) + 1`` s), RLIMIT_AS (``memory_mb``), RLIMIT_NPROC
   (``max_processes``; counts the user's processes *and threads*, and is ignored for root),
   RLIMIT_FSIZE (``max_file_mb``; SIGXFSZ is ignored so an oversized write raises OSError),
   RLIMIT_NOFILE (``max_open_files``), RLIMIT_CORE = 0.
3. **Kernel isolation where the host permits it.** A fresh network namespace (``unshare -n``,
   or ``unshare -rn`` for an unprivileged user, probed once per process; ``os.unshare`` on
   Python 3.12+ as a fallback) -- ``SandboxResult.network_isolated`` says whether it applied.
   When the parent is root and every ``sys.path`` directory of the interpreter is
   world-readable, the child drops to uid/gid 65534 (nobody) before running candidate code, so
   file permissions and RLIMIT_NPROC are enforced by the kernel -- ``SandboxResult.uid`` says
   which uid the program ran as. (A root-only interpreter such as one under ``/root/.pyenv``
   cannot run as nobody; the program then runs as root and relies on layers 1, 2 and 4.)
4. **Audit hooks** (PEP 578), installed by the child before the candidate code, which refuse:
   process creation (``os.fork``, ``os.forkpty``, ``os.posix_spawn``, ``os.spawn``, ``os.exec``,
   ``os.system``, ``subprocess.Popen``, and importing ``_posixsubprocess``, hence
   ``subprocess``); network use (``socket.connect``, ``bind``, ``getaddrinfo``, ``sendto``,
   ``sendmsg``, name look-ups), on any address family; writes outside the temp dir (``open``
   with a write/append/create/truncate mode or flags, ``os.remove``, ``os.rename``, ``os.link``,
   ``os.symlink``, ``os.mkdir``, ``os.rmdir``, ``os.chmod``, ``os.chown``, ``os.utime``,
   ``os.truncate``, xattrs, ``shutil.rmtree``; paths are resolved through ``..``, symlinks and
   ``dir_fd``; opening a directory outside the temp dir is refused so that ``dir_fd`` cannot be
   used to reach outside); signals to other processes (``os.kill``, ``os.killpg``); raising
   resource limits (``resource.setrlimit``, ``resource.prlimit``); ``ctypes``/``cffi`` and
   native extensions loaded from the temp dir. Reads are not restricted (the stdlib must load).

Limits of the guarantees. Audit hooks are an in-process guard, **not a security boundary**: code
running in the same interpreter can get around them through ctypes-like native access that the
hooks do not see, interpreter bugs, or operations the interpreter does not audit (``os.mkfifo``,
``os.mknod``, ``os.setuid``, ...). They stop accidents and ordinary model output (fork bombs,
``rm -rf``, stray network calls), not a determined attacker; against one, the kernel layers (3)
and an outer container/VM/seccomp jail are what count. Memory, CPU and wall time are always
kernel- or parent-enforced. Disk usage inside the temp dir is bounded per file (RLIMIT_FSIZE),
not in total. Results travel over a dedicated pipe tagged with a random token, so printing
fake results does nothing, but a program that introspects the harness (frames, ``gc``) could
forge them, and tests written as ``assert f(x) == y`` can be fooled by an object whose
``__eq__`` always returns True: the sandbox does not make a reward unhackable.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

STATUSES = ("pass", "fail", "timeout", "memory", "refused", "error")
MARKER = "rlfold-sandbox"  # in every sandboxed child's argv, so leftovers can be found in /proc
NOBODY = 65534
_STARTUP_S = 10.0  # allowance for the interpreter to start before the candidate's clock starts
_MAX_RESULT_BYTES = 1 << 20

# The child's program (stdlib only), run by its file path: see rlfold/sandbox/child.py.
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")


@dataclass
class SandboxResult:
    """Outcome of one sandboxed program: a status per test (see ``STATUSES``) and diagnostics."""

    passed: int
    total: int
    statuses: list[str]
    stderr: str = ""  # the last ``max_output_bytes`` of stderr (tracebacks of failing tests included)
    stdout: str = ""  # the first ``max_output_bytes`` of stdout
    wall_s: float = 0.0
    returncode: int | None = None  # of the last interpreter run (negative: killed by that signal)
    timed_out: bool = False
    output_truncated: bool = False
    refused: list[str] = field(default_factory=list)  # audit events refused (first few)
    network_isolated: bool = False  # ran in its own network namespace
    uid: int | None = None  # uid the candidate code ran as (None: the interpreter never got ready)
    pids: list[int] = field(default_factory=list)  # of the interpreters run (each led its own session)

    @property
    def fraction(self) -> float:
        """Share of tests passed (0.0 when there are no tests)."""
        return self.passed / self.total if self.total else 0.0


class _Head:
    def __init__(self, cap: int) -> None:
        self.cap, self.buf, self.dropped = cap, bytearray(), 0

    def add(self, data: bytes) -> None:
        room = max(0, self.cap - len(self.buf))
        self.buf += data[:room]
        self.dropped += max(0, len(data) - room)


class _Tail(_Head):
    def add(self, data: bytes) -> None:
        self.buf += data
        extra = len(self.buf) - self.cap
        if extra > 0:
            del self.buf[:extra]
            self.dropped += extra


@dataclass
class _Run:
    reported: dict[int, str] = field(default_factory=dict)
    code_status: str | None = None  # "ok", a failure status, or None if never reported
    program_status: str = "error"  # status of tests the program did not report
    ready: bool = False
    netns: bool = False
    uid: int | None = None
    returncode: int | None = None
    killed: bool = False
    active_s: float = 0.0
    refused: list[str] = field(default_factory=list)
    pid: int | None = None


_probe_lock = threading.Lock()
_netns_prefix_cache: list[tuple[str, ...]] = []


def _netns_prefix() -> tuple[str, ...]:
    """``unshare -n`` (root) or ``unshare -rn`` (user namespaces) if this host permits it, else ()."""
    with _probe_lock:
        if not _netns_prefix_cache:
            found: tuple[str, ...] = ()
            exe, true = shutil.which("unshare"), shutil.which("true")
            if exe and true:
                for flags in (("-n",), ("-r", "-n")):
                    try:
                        ok = subprocess.run([exe, *flags, true], check=False, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            timeout=10).returncode == 0
                    except (OSError, subprocess.SubprocessError):
                        ok = False
                    if ok:
                        found = (exe, *flags)
                        break
            _netns_prefix_cache.append(found)
        return _netns_prefix_cache[0]


def _forget_netns_prefix() -> None:
    with _probe_lock:
        _netns_prefix_cache[:] = [()]


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run_once(payload: dict, argv: list[str], budget_s: float, stdout: _Head, stderr: _Tail,
              drop: bool) -> _Run:
    """One interpreter: spawn in a fresh temp dir, pump its pipes until exit or deadline, reap."""
    out = _Run()
    token = payload["token"].encode()
    with tempfile.TemporaryDirectory(prefix="rlfold-sandbox-", ignore_cleanup_errors=True) as tmp:
        if drop:
            try:
                os.chown(tmp, NOBODY, NOBODY)
            except OSError:
                pass  # the program then cannot write in its directory, nothing worse
        payload_path = os.path.join(tmp, ".payload.json")
        fd = os.open(payload_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(payload).encode())
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "TMPDIR": tmp, "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        r, w = os.pipe()
        try:
            proc = subprocess.Popen([*argv, payload_path, str(w)], cwd=tmp, env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=(w,), start_new_session=True)
        except OSError as exc:
            os.close(r)
            stderr.add(f"[sandbox] could not start the interpreter: {exc}\n".encode())
            return out
        finally:
            os.close(w)
        out.pid = proc.pid
        results = bytearray()
        sel = selectors.DefaultSelector()
        sinks = {proc.stdout.fileno(): stdout, proc.stderr.fileno(): stderr, r: None}
        for fdn in sinks:
            sel.register(fdn, selectors.EVENT_READ)
        t0 = time.monotonic()
        ready_at: float | None = None
        deadline = t0 + budget_s + _STARTUP_S
        try:
            while sel.get_map():
                now = time.monotonic()
                if now >= deadline:
                    out.killed = True
                    break
                for key, _ in sel.select(deadline - now):
                    data = os.read(key.fd, 1 << 16)
                    if not data:
                        sel.unregister(key.fd)
                        continue
                    sink = sinks[key.fd]
                    if sink is not None:
                        sink.add(data)
                        continue
                    if len(results) < _MAX_RESULT_BYTES:
                        results += data
                    if ready_at is None and b'"ready"' in results:
                        ready_at = time.monotonic()
                        deadline = ready_at + budget_s
            if not out.killed:  # all pipes closed: wait for the exit, leaving the zombie unreaped
                while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                    if time.monotonic() >= deadline:
                        out.killed = True
                        break
                    time.sleep(0.005)
        finally:
            if out.killed or os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                _killpg(proc.pid)  # past the deadline, or this loop itself failed
            # The leader is not reaped yet, so its process-group id cannot have been reused:
            # kill whatever is left in the group, then reap.
            try:
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                pass
            _killpg(proc.pid)
            proc.wait()
            end = time.monotonic()
            sel.close()
            os.close(r)
            proc.stdout.close()
            proc.stderr.close()
    out.returncode = proc.returncode
    out.active_s = end - (ready_at if ready_at is not None else t0)
    for line in bytes(results).split(b"\n"):
        if not line.startswith(token + b" "):
            continue
        try:
            msg = json.loads(line[len(token) + 1:])
        except ValueError:
            continue
        if not isinstance(msg, dict):
            continue
        kind = msg.get("kind")
        if kind == "ready" and not out.ready:
            out.ready, out.netns, out.uid = True, bool(msg.get("netns")), msg.get("uid")
        elif kind == "code" and out.code_status is None:
            out.code_status = msg.get("status") if msg.get("status") in STATUSES + ("ok",) else "error"
        elif kind == "test" and isinstance(msg.get("i"), int) and msg.get("status") in STATUSES:
            out.reported.setdefault(msg["i"], msg["status"])
        elif kind == "refused":
            out.refused.append(str(msg.get("event")))
    rc = out.returncode
    if out.killed or rc in (-signal.SIGXCPU,):
        out.program_status = "timeout"
    elif rc == -signal.SIGKILL:
        out.program_status = "memory"  # killed by someone else: in practice the OOM killer
    else:
        out.program_status = "error"
    return out


def run_sandboxed(
    code: str,
    tests: list[str] | str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_processes: int = 1,
    max_file_mb: int = 16,
    max_open_files: int = 64,
    max_output_bytes: int = 64 * 1024,
    setup: str = "",
    isolate_network: bool = True,
    drop_privileges: bool = True,
    site_packages: bool = False,
    python: str | None = None,
) -> SandboxResult:
    """Run ``code`` then each test of ``tests`` (one test per string; a single string is one test).

    Tests run in order in the candidate's module namespace (``solution``; importable as such);
    an exception in one test is that test's status and the next test still runs. If the
    interpreter dies inside a test (``os._exit``, a crash), the remaining tests are re-run in a
    fresh interpreter within what is left of ``timeout_s``, which bounds the candidate's total
    running time. ``setup`` (e.g. MBPP's ``test_setup_code``) runs after the code, before the tests.

    Limits: ``timeout_s`` wall-clock (and CPU) seconds; ``memory_mb`` of address space;
    ``max_processes`` for RLIMIT_NPROC (processes and threads of the user; 1 forbids both for a
    non-root user, ignored for root, which the audit hook and the privilege drop cover);
    ``max_file_mb`` per written file; ``max_open_files`` descriptors; ``max_output_bytes`` of
    stdout and stderr kept (the rest is read and dropped). ``isolate_network`` adds a network
    namespace when available, ``drop_privileges`` runs as nobody when the parent is root (both on
    top of the audit hooks, which always apply). ``site_packages`` keeps site-packages importable
    (off: plain stdlib). ``python`` picks the interpreter (default ``sys.executable``).
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if memory_mb <= 0 or max_file_mb <= 0 or max_open_files <= 0 or max_processes <= 0:
        raise ValueError("memory_mb, max_file_mb, max_open_files and max_processes must be positive")
    tests_list = [tests] if isinstance(tests, str) else [str(t) for t in tests]
    n = len(tests_list)
    statuses: list[str | None] = [None] * n
    stdout, stderr = _Head(max_output_bytes), _Tail(max_output_bytes)
    drop = bool(drop_privileges) and os.geteuid() == 0
    try:
        parent_netns = os.readlink("/proc/self/ns/net")
    except OSError:
        parent_netns = ""
    limits = {
        "cpu_s": math.ceil(timeout_s) + 1,
        "as_bytes": int(memory_mb) * 1024 * 1024,
        "nproc": int(max_processes),
        "fsize_bytes": int(max_file_mb) * 1024 * 1024,
        "nofile": int(max_open_files),
    }
    interpreter = [python or sys.executable, "-I", "-B", *(() if site_packages else ("-S",))]
    started = time.monotonic()
    budget = float(timeout_s)
    first_run: _Run | None = None
    last = _Run()
    refused: list[str] = []
    pids: list[int] = []
    timed_out = False
    first = 0
    while True:
        prefix = list(_netns_prefix()) if isolate_network else []
        payload = {
            "token": secrets.token_hex(16), "code": code, "setup": setup, "tests": tests_list[first:],
            "limits": limits, "drop_to": [NOBODY, NOBODY] if drop else None,
            "parent_netns": parent_netns, "unshare_in_child": bool(isolate_network and not prefix),
        }
        argv = [*prefix, *interpreter, CHILD, MARKER]
        last = _run_once(payload, argv, budget, stdout, stderr, drop)
        tail = bytes(stderr.buf[-2000:])
        if not last.ready and prefix and b"unshare: " in tail and b"failed to execute" not in tail:
            _forget_netns_prefix()  # namespaces stopped working on this host: go on without them
            continue
        first_run = first_run or last
        if last.pid is not None:
            pids.append(last.pid)
        refused.extend(last.refused)
        budget -= last.active_s
        timed_out = timed_out or last.program_status == "timeout"
        for i, s in last.reported.items():
            if 0 <= first + i < n:
                statuses[first + i] = s
        missing = [j for j in range(first, n) if statuses[j] is None]
        if last.code_status not in (None, "ok"):  # the candidate (or setup) failed: every test does
            for j in missing:
                statuses[j] = last.code_status
            break
        if not missing:
            break
        if last.code_status is None or last.program_status == "timeout" or budget <= 0:
            status = "timeout" if budget <= 0 else last.program_status
            timed_out = timed_out or status == "timeout"
            for j in missing:
                statuses[j] = status
            break
        statuses[missing[0]] = last.program_status  # this test took the interpreter down
        first = missing[0] + 1
        if first >= n:
            break
    final = [s or "error" for s in statuses]
    return SandboxResult(
        passed=sum(s == "pass" for s in final),
        total=n,
        statuses=final,
        stderr=bytes(stderr.buf).decode("utf-8", "replace"),
        stdout=bytes(stdout.buf).decode("utf-8", "replace"),
        wall_s=time.monotonic() - started,
        returncode=last.returncode,
        timed_out=timed_out,
        output_truncated=bool(stdout.dropped or stderr.dropped),
        refused=refused[:32],
        network_isolated=bool(first_run and first_run.netns),
        uid=first_run.uid if first_run and first_run.ready else None,
        pids=pids,
    )
