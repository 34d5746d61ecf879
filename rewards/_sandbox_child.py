"""The sandbox's child side: isolates itself, then runs one program and its tests. Never imported.

    python -I -S -B -u rewards/_sandbox_child.py {namespaces|rlimits}     (payload JSON on stdin)
    python -I -S -B rewards/_sandbox_child.py kill-uid UID                (as root: end every process of UID)

Started by rewards/sandbox.py in a new session with an empty environment; stdout and stderr are files the
parent opened, the result channel is the inherited write end of a pipe, ``payload["result_fd"]`` (a pipe: nothing
written to it can be sought back to and rewritten). Standard library only, so it runs under ``-I -S`` without the
trainer's site-packages. The launcher first joins the run's cgroups (when the parent made them) and a fresh,
empty session keyring; on SIGTERM (the parent's timeout) it kills its child and reaps it before exiting, so
no process of the run is left for the trainer, possibly pid 1 of its container, to reap.

Process tree in ``namespaces`` mode (root, or CAP_SYS_ADMIN + CAP_SETUID):
    launcher  unshare(mount, pid, net, ipc, uts namespaces), fork
      pid 1   (root, inside the new pid namespace) builds the jail: a tmpfs with read-only binds of /usr, /lib*,
              /bin and the interpreter's prefix, a fresh /proc and a private writable /tmp; forks the harness,
              reaps it and reports its exit status. When pid 1 exits the kernel kills everything left inside.
        harness  chroot into the jail, rlimits, drop to a per-run unprivileged uid, run setup, program, tests.
In ``rlimits`` mode the launcher is the supervisor and the harness only gets rlimits (see docs/code_sandbox.md).

Records go to the result channel as lines ``<nonce> <json>``; the parent ignores any line without the nonce, so
printing a fake "passed" does nothing, and a result with no "done" record (e.g. after ``sys.exit(0)``) fails.
Tests the parent judges itself (rewards/verdict.py) arrive with each assert replaced by ``__check__(CALL)``:
the harness reports CALL's value as plain data (``_plain``), never a verdict, and never sees the expected value.
"""

import json
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
KEYCTL_JOIN_SESSION_KEYRING = 1
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}
_DEVICES = ("null", "zero", "random", "urandom")
_TRACEBACK_CHARS = 2000
_MESSAGE_CHARS = 500
_NAME_CHARS = 100
_VALUE_CHARS = 64 << 10  # one reported value, as JSON
_TEST_VALUES_CHARS = 256 << 10  # all values of one test: its record stays under the parent's record cap
_VALUE_DEPTH, _VALUE_NODES = 64, 20_000  # rewards/verdict.py decodes no more than this
_RESERVE = 4096  # result budget kept for the final records ("done", "exit")
_MAX_FILES = 64  # RLIMIT_NOFILE: bounds memfds, pipes and sockets, which RLIMIT_AS does not count
# A fresh IPC namespace (namespaces mode) gets no System V shared memory, message queues or semaphores: their
# memory is not in RLIMIT_AS and outlives the process that allocated it.
_IPC_LIMITS = {"shmmni": "0", "shmall": "0", "shmmax": "0", "msgmni": "0", "sem": "0 0 0 0"}


def _emitter(payload):
    """A function that appends one record to the result file; it reports only from the process that made it."""
    prefix = payload["nonce"] + " "
    fd, write, dumps, getpid, me = payload["result_fd"], os.write, json.dumps, os.getpid, os.getpid()
    budget = [payload["result_bytes"]]

    dropped = [0]

    def emit(record):
        if getpid() != me:  # a process the program forked fell through to our code: it must not report
            os._exit(1)
        final = record.get("event") in ("done", "exit")
        if final and dropped[0]:
            record = {**record, "dropped": dropped[0]}
        line = (prefix + dumps(record) + "\n").encode("utf-8", "surrogatepass")
        if len(line) > budget[0] - (0 if final else _RESERVE):
            dropped[0] += 1  # the parent sees the count: a missing test record is a failed test, never a pass
            return
        budget[0] -= len(line)
        try:
            write(fd, line)
        except OSError:
            pass

    return emit


# ---------------------------------------------------------------------------------------------- isolation


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
    libc.unshare.argtypes = (ctypes.c_int,)
    return libc


def _check(ret, what):
    import ctypes

    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(libc, source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _join_cgroups(payload):
    """Move this process (and so everything it starts) into the run's cgroups, made by the parent."""
    for procs in payload.get("cgroup_procs") or ():
        with open(procs, "w") as f:
            f.write(str(os.getpid()))


def _fresh_session_keyring():
    """Leave the trainer's session keyring: the run gets an empty one of its own (Linux only; best effort)."""
    import ctypes
    import platform

    number = _SYS_KEYCTL.get(platform.machine())
    if number is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc.syscall(number, KEYCTL_JOIN_SESSION_KEYRING, None) >= 0


def _oom_score_adj(value):
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError:
        pass


def _limit_ipc():
    for name, value in _IPC_LIMITS.items():
        with open(f"/proc/sys/kernel/{name}", "w") as f:
            f.write(value)


def _on_term(child_pid, after=None):
    """On SIGTERM (the parent's timeout): kill our child, reap it, and let the caller finish and exit."""

    def handler(signum, frame):
        try:
            os.kill(child_pid, signal.SIGKILL)
        except OSError:
            pass
        if after is not None:
            after()

    signal.signal(signal.SIGTERM, handler)
    _release_term()  # a SIGTERM that came while we forked is handled now


def _hold_term():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _release_term():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _build_jail(libc, payload):
    """Mount the jail's tree under payload["jail_dir"] (in our private mount namespace only)."""
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount may propagate to the host
    jail = payload["jail_dir"]
    _mount(libc, "tmpfs", jail, "tmpfs", MS_NOSUID | MS_NODEV, f"size={payload['tmpfs_bytes']},mode=0755")
    bound = []
    for src in payload["ro_paths"]:
        if not os.path.lexists(src) or any(src == b or src.startswith(b + "/") for b in bound):
            continue
        dst = jail + src
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(src):  # /bin -> usr/bin on merged-/usr systems
            os.symlink(os.readlink(src), dst)
            continue
        os.makedirs(dst, exist_ok=True)
        _mount(libc, src, dst, None, MS_BIND | MS_REC)
        _mount(libc, None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        bound.append(src)
    os.makedirs(jail + "/dev")
    for name in _DEVICES:
        open(f"{jail}/dev/{name}", "w").close()
        _mount(libc, f"/dev/{name}", f"{jail}/dev/{name}", None, MS_BIND)
    os.symlink("/proc/self/fd", jail + "/dev/fd")
    os.makedirs(jail + "/proc")
    # A fresh procfs shows only this pid namespace: no host process, cmdline or environ is visible.
    _mount(libc, "proc", jail + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(jail + "/tmp")
    os.chown(jail + "/tmp", payload["uid"], payload["uid"])
    os.chmod(jail + "/tmp", 0o700)
    return jail


def _enter_jail(payload, jail):
    os.chroot(jail)
    os.chdir("/tmp")
    _set_rlimits(payload, nproc=payload["max_processes"])
    _drop_privileges(payload["uid"])


def _drop_privileges(uid):
    libc = _libc()  # loaded first: its files may be readable only by root
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # a fresh uid: no capabilities, owns no host file, shares its process count with nobody
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _tasks_of_uid(uid):
    """Threads now running as ``uid``: RLIMIT_NPROC counts them all, so the program's budget comes on top."""
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            count += int(fields.get("Threads", "1"))
    return count


def _set_rlimits(payload, nproc):
    cpu = payload["cpu_seconds"]
    limits = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),  # SIGXCPU at the soft limit, SIGKILL at the hard one
        (resource.RLIMIT_AS, (payload["memory_bytes"],) * 2),
        (resource.RLIMIT_FSIZE, (payload["max_output_bytes"],) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NPROC, (nproc, nproc)),
        (resource.RLIMIT_NOFILE, (_MAX_FILES, _MAX_FILES)),
    ]
    for which, value in limits:
        resource.setrlimit(which, value)


def _exit_record(status):
    if os.WIFSIGNALED(status):
        return {"event": "exit", "signal": os.WTERMSIG(status)}
    return {"event": "exit", "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1}


def _supervise(emit, harness_pid):
    """Reap until the harness is gone (pid 1 also inherits orphans), then report how it ended."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return
        if pid == harness_pid:
            emit(_exit_record(status))
            return


def _run_namespaces(payload):
    libc = _libc()
    try:
        _check(
            libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare"
        )
        _limit_ipc()
    except OSError as err:
        _emitter(payload)({"event": "setup_failed", "error": str(err)[:_MESSAGE_CHARS]})
        return
    _hold_term()  # until the handler below knows which child to kill: a SIGTERM now waits, it is not lost
    init = os.fork()
    if init == 0:  # pid 1 of the new pid namespace
        _release_term()
        _oom_score_adj(0)  # the launcher shields itself from the OOM killer, not the run
        emit = _emitter(payload)
        try:
            jail = _build_jail(libc, payload)
        except OSError as err:
            emit({"event": "setup_failed", "error": str(err)[:_MESSAGE_CHARS]})
            os._exit(0)
        harness = os.fork()
        if harness == 0:
            emit = _emitter(payload)
            try:
                _enter_jail(payload, jail)
            except OSError as err:
                emit({"event": "setup_failed", "error": str(err)[:_MESSAGE_CHARS]})
                os._exit(0)
            _run_harness(payload, emit)
        _supervise(emit, harness)
        os._exit(0)  # takes every process left in the namespace with it
    _on_term(init)  # killing pid 1 kills the whole namespace; we still reap it below
    _reap(init)


def _reap(pid):
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _run_rlimits(payload):
    uid = os.getuid()
    # RLIMIT_NPROC counts per uid: as root we drop to the run's own uid (root would ignore the limit, and could
    # signal every process); as another user the trainer's own threads count too, so the budget comes on top.
    nproc = payload["max_processes"] + (_tasks_of_uid(uid) if uid != 0 else 0)
    # Orphans of the run come to us, not to the trainer (which may be pid 1 of its container and never reap).
    _libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    _hold_term()
    harness = os.fork()
    if harness == 0:
        _release_term()
        _oom_score_adj(0)
        _set_rlimits(payload, nproc=nproc)
        _run_harness(
            payload, _emitter(payload), drop=(lambda: _drop_privileges(payload["uid"])) if uid == 0 else None
        )
    _on_term(harness)
    _supervise(_emitter(payload), harness)
    if uid == 0:
        _kill_uid(payload["uid"])  # everything the program started, including processes that left our session
    _reap_all(block=uid == 0)
    # Leftovers of the program that stayed in our process group, and us.
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _reap_all(block):
    """Reap the run's orphans (we are their subreaper). ``block``: all of them were just killed."""
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if pid == 0:  # alive: it left our session as a normal user, which rlimits mode cannot stop (docs)
            return


def _kill_uid(uid):
    """SIGKILL every process of ``uid`` (the run's own): kill(-1) from a process that has become that uid."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)  # every process this uid may signal, except ourselves
        except OSError:
            pass
        os._exit(0)
    os.waitpid(pid, 0)


# ------------------------------------------------------------------------------------------------ harness


def _block_network():
    """Belt and braces: the network namespace is the guarantee; without one this only stops plain `socket` use."""
    import _socket
    import errno
    import socket

    def blocked(*args, **kwargs):
        raise PermissionError(errno.EACCES, "network access is disabled in the sandbox")

    class BlockedSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            blocked()

    socket.socket = socket.SocketType = _socket.socket = BlockedSocket
    for name in ("socketpair", "create_connection", "create_server", "fromfd", "getaddrinfo"):
        setattr(socket, name, blocked)


def _error_record(exc, code_names):
    """The exception's type, message and a traceback limited to the program's and tests' own frames."""
    import traceback  # already loaded by _run_harness

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename in code_names]
    lines = traceback.StackSummary.from_list(frames).format() if frames else []  # folds repeated frames
    text = "".join(lines) + "".join(traceback.format_exception_only(type(exc), exc))
    if lines:
        text = "Traceback (most recent call last):\n" + text
    return {
        "type": _text(type(exc).__name__, _NAME_CHARS),
        "message": _text(_message(exc), _MESSAGE_CHARS),
        "traceback": text[-_TRACEBACK_CHARS:],
    }


def _text(value, limit):
    return value[:limit] if isinstance(value, str) else ""


def _message(exc):
    try:
        return str(exc)[:_MESSAGE_CHARS]
    except BaseException:  # a __str__ of the program's that raises
        return "<message unavailable>"


def _got_value(test_code, namespace):
    """For a failed ``assert f(x) == y``: repr of f(x), to show next to the expected value."""
    import ast  # already loaded by _run_harness

    try:
        tree = ast.parse(test_code)
        node = tree.body[0] if len(tree.body) == 1 else None
        if not (isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare) and node.msg is None):
            return None
        if len(node.test.ops) != 1 or not isinstance(node.test.ops[0], ast.Eq):
            return None
        left = compile(ast.Expression(node.test.left), "<test>", "eval")
        return repr(eval(left, namespace))[:300]
    except BaseException:
        return None


def _plain(value, depth=0, budget=None):
    """``value`` as JSON-able plain data (rewards/verdict.py ``decode`` reads it back); TypeError if impossible.

    Only builtin types: a subclass becomes its builtin base (a namedtuple a tuple, a defaultdict a dict), so
    whatever the program's classes do, the parent compares plain data with its own ``==``.
    """
    budget = [_VALUE_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0 or depth > _VALUE_DEPTH:
        raise ValueError("the value is too large or too deeply nested to check")
    if value is None or value is True or value is False:
        return value
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, complex):
        return {"c": [complex.__complex__(value).real, complex.__complex__(value).imag]}
    if isinstance(value, bytes | bytearray):
        return {"b": bytes(value).hex()}
    if isinstance(value, list):
        return [_plain(x, depth + 1, budget) for x in list.__iter__(value)]
    if isinstance(value, tuple):
        return {"t": [_plain(x, depth + 1, budget) for x in tuple.__iter__(value)]}
    if isinstance(value, set):
        return {"s": [_plain(x, depth + 1, budget) for x in set.__iter__(value)]}
    if isinstance(value, frozenset):
        return {"fs": [_plain(x, depth + 1, budget) for x in frozenset.__iter__(value)]}
    if isinstance(value, dict):
        return {
            "d": [[_plain(k, depth + 1, budget), _plain(v, depth + 1, budget)] for k, v in dict.items(value)]
        }
    raise TypeError(
        f"the call returned a {type(value).__name__}; only builtin values (numbers, str, bytes, None, list, "
        "tuple, set, dict) can be checked"
    )


def _reporter(values, dumps):
    used = [0]

    def __check__(value):
        data = dumps(_plain(value))
        if len(data) > _VALUE_CHARS:
            raise ValueError(f"the call returned a value over {_VALUE_CHARS} characters as JSON")
        used[0] += len(data)
        if used[0] > _TEST_VALUES_CHARS:
            raise ValueError(f"the test's calls returned over {_TEST_VALUES_CHARS} characters of values")
        values.append(data)

    return __check__


def _run_harness(payload, emit, drop=None):
    """Run setup code, program and tests in one namespace; report each step. Never returns.

    ``drop`` (rlimits mode as root) gives up root after our own imports, which may need files only root reads.
    """
    import ast  # noqa: F401  (imported here for _got_value: it may be unreadable once ``drop`` has run)
    import builtins
    import linecache
    import traceback

    # Our own references: a program that replaces builtins.exec or compile only breaks its own run.
    _exec, _compile, dumps, isinstance_ = builtins.exec, builtins.compile, json.dumps, builtins.isinstance
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it: a write past the output cap must kill
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    _block_network()
    tests = payload["tests"]
    sources = {"<setup>": payload["setup_code"], "<program>": payload["code"]}
    sources.update({f"<test {i}>": t["source"] for i, t in enumerate(tests)})
    for name, source in sources.items():  # so tracebacks can quote the offending line
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    names = set(sources)
    if drop is not None:
        try:
            drop()
        except OSError as err:
            emit({"event": "setup_failed", "error": f"dropping root: {err}"[:_MESSAGE_CHARS]})
            os._exit(0)
    namespace = {"__name__": "__sandbox__", "__builtins__": builtins}

    def error_record(exc):
        try:
            return _error_record(exc, names)
        except BaseException:  # an exception built to break traceback formatting
            return {"type": "Exception", "message": "<unformattable exception>", "traceback": ""}

    def run(name, stage):
        try:
            code = _compile(sources[name], name, "exec")
        except (SyntaxError, ValueError) as exc:  # ValueError: the source holds a null byte
            detail = "".join(traceback.format_exception_only(type(exc), exc))[-_TRACEBACK_CHARS:]
            emit({"event": stage, "status": "syntax_error", "type": type(exc).__name__, "traceback": detail})
            return False
        try:
            _exec(code, namespace)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too: they end the program, not us
            emit({"event": stage, "status": "error", **error_record(exc)})
            return False
        return True

    if run("<setup>", "setup") and run("<program>", "program"):
        emit({"event": "program", "status": "ok"})
        for i, test in enumerate(tests):
            values = []
            try:
                code = _compile(test["source"], f"<test {i}>", "exec")
                namespace["__check__"] = _reporter(values, dumps)
                _exec(code, namespace)
            except BaseException as exc:
                record = {"event": "test", "index": i, "status": "failed", **error_record(exc)}
                if isinstance_(exc, AssertionError) and not test["outside"]:
                    record["got"] = _got_value(test["source"], namespace)
                emit(record)
            else:
                if test["outside"]:
                    emit({"event": "test", "index": i, "status": "values", "values": values})
                else:
                    emit({"event": "test", "index": i, "status": "passed"})
    emit({"event": "done"})
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(0)  # no atexit handlers or finalizers of the program


def main():
    if sys.argv[1] == "kill-uid":  # the parent's cleanup when a timeout killed the supervisor (rlimits, root)
        _kill_uid(int(sys.argv[2]))
        os._exit(0)
    payload = json.loads(sys.stdin.buffer.read())
    try:
        _join_cgroups(payload)  # before anything else: every process of the run is counted from here on
    except OSError as err:
        _emitter(payload)(
            {"event": "setup_failed", "error": f"joining the run's cgroup: {err}"[:_MESSAGE_CHARS]}
        )
        os._exit(0)
    _fresh_session_keyring()
    if os.geteuid() == 0:
        _oom_score_adj(-1000)  # an OOM kill in the run's cgroup must not orphan our child (we reap it)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the program reads an empty stdin (input() raises EOFError)
    os.close(devnull)
    os.umask(0o022)
    if sys.argv[1] == "namespaces":
        _run_namespaces(payload)
    else:
        _run_rlimits(payload)
    os._exit(0)


if __name__ == "__main__":
    main()
