"""The sandboxed child: the program ``rlfold.sandbox.runner`` starts for every candidate.

The runner executes this file by its path, ``python -I -B [-S] <this file> MARKER PAYLOAD FD``,
never as ``-m rlfold.sandbox.child``: isolated mode keeps the script's directory, the current
directory, PYTHON* variables and the user site off ``sys.path``, so the child's ``sys.path`` is
the interpreter's own (plain stdlib under ``-S``) and the candidate cannot import rlfold or
anything beside it. ``PAYLOAD`` is a JSON file in the temp dir (read and deleted first) and ``FD``
the write end of the result pipe; ``MARKER`` only tags the process in ``/proc``.

Rules for this file: standard library only, imported inside ``main``, nothing from rlfold (it is
not on the child's path, and importing the package would load torch); nothing runs on import, so
the parent may import it. In order, ``main`` enters a network namespace when asked (3.12+
``os.unshare``), drops root to the payload's uid/gid when every ``sys.path`` directory is usable by
others, sets the kernel limits, installs the audit hook, reports ``ready``, and runs the code, the
setup and each test in the ``solution`` module's namespace, reporting one status per line on ``FD``
(each line starts with the payload's random token). ``rlfold.sandbox.runner`` documents the layers
and their limits.
"""

import os
import sys


def main():
    """Read the payload, isolate, limit, hook, then run the code and each test (never returns)."""
    import json, resource, signal, stat, types, traceback
    payload_path, out_fd = sys.argv[2], int(sys.argv[3])
    with open(payload_path, "rb") as f:
        P = json.loads(f.read())
    os.unlink(payload_path)
    token, dumps, write = P["token"], json.dumps, os.write
    exec_, compile_, len_, isinstance_, str_, any_ = exec, compile, len, isinstance, str, any
    BaseException_, MemoryError_, AssertionError_ = BaseException, MemoryError, AssertionError

    def emit(**msg):
        try:
            write(out_fd, (token + " " + dumps(msg) + "\n").encode())
        except BaseException_:
            pass

    # 3. kernel isolation: network namespace (3.12+ fallback), then drop root
    if P["unshare_in_child"] and hasattr(os, "unshare"):
        try:
            os.unshare(os.CLONE_NEWNET)
        except OSError:
            pass
    try:
        netns = os.readlink("/proc/self/ns/net") != P["parent_netns"]
    except OSError:
        netns = False

    def world_usable(path):
        try:
            p = os.path.realpath(path)
            if not os.stat(p).st_mode & stat.S_IROTH:
                return False
            while True:
                if not os.stat(p).st_mode & stat.S_IXOTH:
                    return False
                parent = os.path.dirname(p)
                if parent == p:
                    return True
                p = parent
        except OSError:
            return False

    if P["drop_to"] is not None and os.geteuid() == 0:
        if all(world_usable(d) for d in sys.path if d and os.path.isdir(d)):
            uid, gid = P["drop_to"]
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

    # 2. kernel limits
    def setlim(res, soft, hard):
        _, cur_hard = resource.getrlimit(res)
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.setrlimit(res, (soft, hard))

    L = P["limits"]
    setlim(resource.RLIMIT_CORE, 0, 0)
    setlim(resource.RLIMIT_CPU, L["cpu_s"], L["cpu_s"] + 1)
    setlim(resource.RLIMIT_AS, L["as_bytes"], L["as_bytes"])
    setlim(resource.RLIMIT_NPROC, L["nproc"], L["nproc"])
    setlim(resource.RLIMIT_FSIZE, L["fsize_bytes"], L["fsize_bytes"])
    setlim(resource.RLIMIT_NOFILE, L["nofile"], L["nofile"])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    sys.dont_write_bytecode = True

    # 4. audit hooks
    # Path resolution uses only primitives captured now, so patching os / os.path later cannot
    # change what the hooks see.
    from _thread import get_ident
    getcwd, readlink, lstat, stat_, getpid, getpgrp = (os.getcwd, os.readlink, os.lstat, os.stat,
                                                       os.getpid, os.getpgrp)
    S_ISLNK, S_ISDIR = stat.S_ISLNK, stat.S_ISDIR
    fs_encoding = sys.getfilesystemencoding()
    str_type, bytes_type = str, bytes
    ALLOW = frozenset(("/dev/null", "/dev/stdout", "/dev/stderr"))
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def real(path, follow_last=True):
        """Absolute path with symlinks, '.' and '..' resolved (missing components kept as written)."""
        todo = [x for x in path.split("/") if x][::-1]
        resolved, links = "", 0
        while todo:
            part = todo.pop()
            if part == ".":
                continue
            if part == "..":
                resolved = resolved.rpartition("/")[0]
                continue
            candidate = resolved + "/" + part
            if not todo and not follow_last:
                resolved = candidate
                break
            try:
                st = lstat(candidate)
            except OSError:
                resolved = candidate
                continue
            if not S_ISLNK(st.st_mode):
                resolved = candidate
                continue
            links += 1
            if links > 40:
                return None
            target = readlink(candidate)
            if target.startswith("/"):
                resolved = ""
            todo.extend([x for x in target.split("/") if x][::-1])
        return resolved or "/"

    root = real(getcwd())
    prefix = root + "/"

    class SandboxViolation(PermissionError):
        pass

    violations = []
    busy = set()

    def refuse(event, detail=""):
        violations.append(event)
        if len_(violations) <= 32:
            emit(kind="refused", event=event, detail=str_(detail)[:300])
        raise SandboxViolation("sandbox refused " + event + (": " + str_(detail) if detail else ""))

    def fd_path(fd):
        try:
            p = readlink("/proc/self/fd/%d" % fd)
        except (OSError, TypeError, ValueError, OverflowError):
            return None
        return p if p.startswith("/") else None

    def resolve(path, dir_fd=None, entry=False):
        """Absolute real path an operation acts on (None if unknown: treated as outside)."""
        try:
            if isinstance_(path, int):
                p = fd_path(path)
                return real(p) if p else None
            if isinstance_(path, bytes_type):
                p = path.decode(fs_encoding, "surrogateescape")
            elif isinstance_(path, str_type):
                p = path
            else:
                return None  # CPython passes str/bytes/int; anything else is not trusted
            if not p.startswith("/"):
                base = fd_path(dir_fd) if isinstance_(dir_fd, int) and dir_fd >= 0 else getcwd()
                if base is None:
                    return None
                p = base + "/" + p
            # entry operations (remove, rename, link...) act on the name itself, not on a symlink's target
            return real(p, follow_last=not entry)
        except BaseException_:
            return None

    def isdir(p):
        try:
            return S_ISDIR(stat_(p).st_mode)
        except BaseException_:
            return False

    def inside(p):
        return p is not None and (p == root or p.startswith(prefix) or p in ALLOW)

    def on_open(event, args):
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        if path is None or isinstance_(path, int):
            return  # wraps a descriptor that is already open
        if isinstance_(path, str_) and path in ALLOW:
            return
        writing = (isinstance_(mode, str_) and any_(c in mode for c in "wax+")) or (
            isinstance_(flags, int) and flags & WRITE_FLAGS)
        p = resolve(path)
        if inside(p):
            return
        if writing:
            refuse(event, "write to %r outside the sandbox directory" % (p or path,))
        if p is not None and isdir(p):
            refuse(event, "opening directory %r outside the sandbox directory" % (p,))

    # event -> ((path index, dir_fd index or None, acts on the entry), ...)
    PATHS = {
        "os.remove": ((0, 1, True),), "os.rmdir": ((0, 1, True),), "os.mkdir": ((0, 2, True),),
        "os.rename": ((0, 2, True), (1, 3, True)), "os.link": ((0, 2, True), (1, 3, True)),
        "os.symlink": ((1, 2, True),), "os.chmod": ((0, 2, False),), "os.chown": ((0, 3, False),),
        "os.utime": ((0, 3, False),), "os.truncate": ((0, None, False),),
        "os.setxattr": ((0, None, False),), "os.removexattr": ((0, None, False),),
        "os.chflags": ((0, None, False),), "os.lchflags": ((0, None, True),),
        "shutil.rmtree": ((0, 1, True),),
    }

    def on_path(event, args):
        for pi, di, entry in PATHS[event]:
            if pi >= len_(args):
                continue
            dir_fd = args[di] if di is not None and di < len_(args) else None
            p = resolve(args[pi], dir_fd, entry)
            if not inside(p):
                refuse(event, "%r is outside the sandbox directory" % (p or args[pi],))

    def on_refuse(event, args):
        refuse(event)

    def on_kill(event, args):
        target = args[0] if args else None
        if event == "os.kill" and target in (0, getpid(), -getpgrp()):
            return
        if event == "os.killpg" and target in (0, getpgrp()):
            return
        refuse(event, "signal to process %r" % (target,))

    def on_rlimit(event, args):
        if event == "resource.prlimit" and (len_(args) < 3 or args[2] is None):
            return  # a query
        refuse(event)

    BLOCKED_MODULES = frozenset(("_posixsubprocess", "ctypes", "_ctypes", "cffi", "_cffi_backend"))

    def on_import(event, args):
        name = args[0] if args else ""
        top = name.partition(".")[0] if isinstance_(name, str_) else ""
        if name in BLOCKED_MODULES or top in BLOCKED_MODULES:
            refuse(event, name)
        filename = args[1] if len_(args) > 1 else None
        if isinstance_(filename, str_) and inside(resolve(filename)):
            refuse(event, "native extension loaded from the sandbox directory: %r" % (filename,))

    HANDLERS = dict.fromkeys(PATHS, on_path)
    HANDLERS["open"] = on_open
    HANDLERS["import"] = on_import
    HANDLERS["os.kill"] = HANDLERS["os.killpg"] = on_kill
    HANDLERS["resource.setrlimit"] = HANDLERS["resource.prlimit"] = on_rlimit
    for ev in ("os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system",
               "os.startfile", "subprocess.Popen", "pty.spawn", "os.unshare", "os.setns",
               "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
               "socket.sendmsg", "socket.gethostbyname", "socket.gethostbyaddr",
               "socket.getnameinfo"):
        HANDLERS[ev] = on_refuse
    get_handler = HANDLERS.get

    def hook(event, args):
        h = get_handler(event)
        if h is None:
            if event[:7] != "ctypes.":
                return
            h = on_refuse
        me = get_ident()
        if me in busy:  # an event raised by the hook's own work
            return
        busy.add(me)
        try:
            h(event, args)
        finally:
            busy.discard(me)

    sys.addaudithook(hook)
    emit(kind="ready", netns=netns, uid=os.geteuid())

    # run the candidate, then each test in its namespace
    mod = types.ModuleType("solution")
    sys.modules["solution"] = mod
    ns = mod.__dict__

    def classify(exc, n_before):
        e, seen = exc, 0
        while e is not None and seen < 16:
            if isinstance_(e, SandboxViolation):
                return "refused"
            e, seen = e.__cause__ or e.__context__, seen + 1
        if len_(violations) > n_before:
            return "refused"
        if isinstance_(exc, MemoryError_):
            return "memory"
        if isinstance_(exc, AssertionError_):
            return "fail"
        return "error"

    def run(src, name):
        n_before = len_(violations)
        try:
            exec_(compile_(src, name, "exec"), ns)
            return "pass"
        except BaseException_ as exc:
            status = classify(exc, n_before)
            try:
                text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-4))
                write(2, ("[sandbox] %s: %s\n" % (name, status) + text[-4000:]).encode("utf-8", "replace"))
            except BaseException_:
                pass
            return status

    def finish():
        for s in (sys.stdout, sys.stderr):
            try:
                s.flush()
            except BaseException_:
                pass
        os._exit(0)

    status = run(P["code"], "<solution>")
    if status == "pass" and P["setup"]:
        status = run(P["setup"], "<setup>")
    if status != "pass":
        emit(kind="code", status=status)
        finish()
    emit(kind="code", status="ok")
    for i, src in enumerate(P["tests"]):
        emit(kind="test", i=i, status=run(src, "<test %d>" % i))
    finish()


if __name__ == "__main__":
    main()
