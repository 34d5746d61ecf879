"""Run untrusted Python programs against their tests in a separate, isolated, resource-limited process.

>>> run_program("def add(a, b):\\n    return a + b", ["assert add(1, 2) == 3", "assert add(2, 2) == 5"]).fraction
0.5

Each run starts a fresh interpreter (``python -I -S``, never a fork of the trainer) in its own session, with an
empty environment, a private working directory, a fresh session keyring, a wall-clock timeout that kills the
whole run and rlimits on CPU time, address space, processes, open files and file size. As root (or with
CAP_SYS_ADMIN) it also gets its own mount, pid, network, IPC and UTS namespaces, a read-only chroot and a
throwaway uid; where the trainer can make cgroups, one per run bounds its memory, tasks and CPU as a whole.

Tests of the common assert shapes are judged here, not in the sandbox (rewards/verdict.py): the sandbox gets only
their calls and reports the values as plain data. Every record the run writes is validated; anything malformed
ends only that run, as ``killed``. What holds where: docs/code_sandbox.md.

``run_programs`` runs a batch on a thread pool (each thread waits on its own subprocess), two runs per CPU this
process may use. The feedback text quotes the tests it ran: to show a model its errors without leaking hidden
tests, run only the visible tests for that.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import verdict
from ._cgroup import RunCgroup
from ._cgroup import available as _cgroups_available

logger = logging.getLogger(__name__)

_CHILD = str(Path(__file__).resolve().with_name("_sandbox_child.py"))
_PYTHON = os.path.realpath(sys.executable)  # the base interpreter: under -I -S no venv site-packages
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
_TAIL_BYTES = 4096
_RESULT_READ_BYTES = 4 << 20  # the whole result channel; more kills the run
_RECORD_BYTES = 1 << 20  # one record line (its values are capped at _VALUE_CHARS each by the harness)
_VALUE_CHARS = 64 << 10
_FIELD_CHARS = 8192  # any text field of a record (the harness writes at most 2000 characters of traceback)
_DRAIN_S = 1.0  # after the run: how long to wait for the result pipe's end of file
_STOP_GRACE_S = 2.0  # after SIGTERM: how long the launcher has to kill and reap its child
_CPUS_PER_RUN = 1.0  # cgroup CPU quota of one run, all its processes together
_PROBE_ATTEMPTS = 3
_FEEDBACK_CHARS = 1200
_CACHE_SIZE = 4096

REASONS = (
    "passed",
    "syntax_error",
    "test_failure",
    "timeout",
    "memory",
    "killed",
    "runtime_error",
    "no_code",
)
"""ExecutionResult.reason, why a run ended:

passed         every test ran and passed
test_failure   the tests ran and at least one failed an assert or raised (e.g. RecursionError in a test)
syntax_error   the program (or the task's setup code) does not compile
runtime_error  setup or program raised before the tests (incl. sys.exit(0), RecursionError, a failed fork),
               or the process exited before the tests finished (os._exit): no test counts as passed
timeout        the wall-clock timeout or the CPU-time limit ended it; tests that finished before still count
memory         MemoryError (the address-space limit) in the program or a test
killed         a signal or the sandbox ended it: output or a file over max_output_bytes, a crash (SIGSEGV),
               the sandbox failing to start; scores 0 even if some tests had passed
no_code        the completion held no program (nothing was run)
"""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one run."""

    timeout_s: float = 5.0  # wall clock for setup + program + all tests, from process start
    memory_mb: int = 1024  # RLIMIT_AS: address space of the program's process
    max_processes: int = 16  # RLIMIT_NPROC: processes and threads of the sandbox uid (see docs)
    max_output_bytes: int = 1 << 20  # RLIMIT_FSIZE: stdout, stderr and any file it writes; more fails the run
    tmpfs_mb: int = 64  # namespaces mode: size of the private /tmp (its writable working directory)


@dataclass(frozen=True)
class Program:
    """One program and the tests to run against it."""

    code: str
    tests: tuple[str, ...]  # each a snippet (e.g. an assert) run after the program in its namespace
    setup_code: str = ""  # run before the program in the same namespace (imports the prompt or tests rely on)


@dataclass(frozen=True)
class ExecutionResult:
    """What one sandboxed run did."""

    reason: str  # one of REASONS
    passed: int  # tests that passed
    total: int  # tests that were to run
    feedback: str  # short, human-readable: the first error and its traceback tail (quotes the tests it ran)
    test_passed: tuple[bool, ...] = ()  # per test; a test that never ran counts as failed
    duration_s: float = 0.0
    stdout_tail: str = ""  # last few KB of what the program printed
    stderr_tail: str = ""
    isolation: str = ""  # "namespaces" or "rlimits": which guarantees held (docs/code_sandbox.md)
    # How the program's process ended: {"code": n} or {"signal": n}; {} when the timeout killed it.
    exit: dict = field(default_factory=dict, compare=False)
    # Per test: "outside" (the trainer compared the call's value with the expected one; rewards/verdict.py) or
    # "inside" (the test ran in the program's interpreter, which a program that cheats can subvert).
    test_judged: tuple[str, ...] = ()
    cpu_s: float | None = field(default=None, compare=False)  # CPU of the whole run (its cgroup), when known

    @property
    def fraction(self) -> float:
        """Share of the tests that passed (0 when the run failed before or while running them)."""
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.reason == "passed"

    @property
    def verified_outside(self) -> int:
        """Tests whose verdict the trainer computed itself."""
        return sum(j == "outside" for j in self.test_judged)


def cgroup_support() -> tuple[str, str]:
    """("v1" or "v2", "") where each run gets its own cgroup (memory, tasks, CPU), else ("", why not)."""
    return _cgroups_available()


def default_workers() -> int:
    """Parallel runs: two per CPU this process may use (its affinity mask, e.g. under taskset or a cpuset).

    About a third of a run's wall time is waiting (process start and exit), not CPU work: on a 2-core machine
    4 workers scored 1.4x as many passing programs per second as 2 (benchmarks/code_reward.py).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return 2 * max(1, cpus)


@functools.lru_cache(maxsize=1)
def isolation_mode() -> str:
    """``"namespaces"`` where a probe run can create the namespaces and jail, else ``"rlimits"`` (logged once).

    Set ``MTGRPO_SANDBOX_ISOLATION=rlimits`` to skip the namespaces, or ``=namespaces`` to fail instead of
    falling back.
    """
    wanted = os.environ.get("MTGRPO_SANDBOX_ISOLATION", "auto")
    if wanted not in ("auto", "namespaces", "rlimits"):
        raise ValueError(f"MTGRPO_SANDBOX_ISOLATION={wanted!r}: use auto, namespaces or rlimits.")
    if wanted == "rlimits":
        return "rlimits"
    error = None
    if not sys.platform.startswith("linux"):
        error = "not Linux"
    else:
        for attempt in range(1, _PROBE_ATTEMPTS + 1):
            # Generous timeout and retries: a busy machine must not cost the whole training run its isolation.
            probe = _run(
                Program("x = 1", ("assert x == 1",)), SandboxLimits(timeout_s=10.0 * attempt), "namespaces"
            )
            if probe.reason == "passed":
                return "namespaces"
            error = probe.feedback.strip().splitlines()[-1][:300] if probe.feedback.strip() else probe.reason
            logger.info(
                "Code sandbox: namespace probe %d/%d failed (%s): %s",
                attempt,
                _PROBE_ATTEMPTS,
                probe.reason,
                error,
            )
            if attempt < _PROBE_ATTEMPTS:
                time.sleep(0.5 * attempt)
    if wanted == "namespaces":
        raise RuntimeError(f"MTGRPO_SANDBOX_ISOLATION=namespaces but the namespace sandbox fails: {error}")
    logger.warning(
        "Code sandbox: Linux namespaces are unavailable (%s); running programs with rlimits only, which does "
        "not block writes outside the working directory or network use by determined code. Run as root or "
        "with CAP_SYS_ADMIN for the full sandbox (docs/code_sandbox.md).",
        error,
    )
    return "rlimits"


def run_program(
    code: str,
    tests: Sequence[str],
    *,
    setup_code: str = "",
    limits: SandboxLimits | None = None,
    **limit_overrides,
) -> ExecutionResult:
    """Run ``code`` then each of ``tests`` in a fresh sandboxed process; keyword limits override ``limits``.

    run_program(code, tests, timeout_s=2.0, memory_mb=512)
    """
    limits = _limits(limits, limit_overrides)
    return run_programs([Program(code, tuple(tests), setup_code)], limits=limits)[0]


def run_programs(
    programs: Sequence[Program],
    *,
    limits: SandboxLimits | None = None,
    max_workers: int | None = None,
    cache: bool = True,
) -> list[ExecutionResult]:
    """Run each program in its own sandbox, ``max_workers`` (default: ``default_workers()``) at a time.

    Identical programs (same code, tests, setup and limits) run once; with ``cache`` the result is also kept for
    later calls (so two rewards over the same batch execute it once). Timeouts and kills are never kept: they
    may come from a busy machine rather than the program.
    """
    limits = limits or SandboxLimits()
    mode = isolation_mode()
    keys = [(p.code, tuple(p.tests), p.setup_code, limits, mode) for p in programs]
    results: dict[tuple, ExecutionResult] = {}
    for key in keys:
        if cache and (hit := _CACHE.get(key)) is not None:
            results[key] = hit
    todo = [key for key in dict.fromkeys(keys) if key not in results]
    if not todo:
        return [results[k] for k in keys]
    workers = min(max_workers or default_workers(), len(todo))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        for key, result in zip(
            todo, pool.map(lambda k: _run_safely(Program(*k[:3]), limits, mode), todo), strict=True
        ):
            results[key] = result
            if cache and result.reason in _CACHEABLE:
                _CACHE.put(key, result)
    return [results[k] for k in keys]


def _run_safely(program: Program, limits: SandboxLimits, mode: str) -> ExecutionResult:
    """``_run``, but a failure of the machinery (no process could start, a bug) ends only this run, as
    ``killed``: one program must never cost the rest of the batch its scores."""
    try:
        return _run(program, limits, mode)
    except Exception as exc:
        logger.exception("Code sandbox: running one program failed; it scores 0 (killed).")
        n = len(program.tests)
        return ExecutionResult("killed", 0, n, f"The sandbox failed: {type(exc).__name__}", (False,) * n)


def _limits(limits: SandboxLimits | None, overrides: dict) -> SandboxLimits:
    limits = limits or SandboxLimits()
    unknown = set(overrides) - set(SandboxLimits.__dataclass_fields__)
    if unknown:
        raise TypeError(
            f"Unknown sandbox limit(s) {sorted(unknown)}; known: {list(SandboxLimits.__dataclass_fields__)}."
        )
    return SandboxLimits(**{**limits.__dict__, **overrides})


class _LRU:
    def __init__(self, size: int):
        self.size, self.data, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        return None

    def put(self, key, value):
        with self.lock:
            self.data[key] = value
            while len(self.data) > self.size:
                self.data.popitem(last=False)


_CACHE = _LRU(_CACHE_SIZE)
_CACHEABLE = frozenset(("passed", "test_failure", "syntax_error", "runtime_error", "memory"))


# ------------------------------------------------------------------------------------------------- one run


def _ro_paths() -> list[str]:
    """What the jail shows (read-only): system binaries and libraries, and the interpreter's own prefix."""
    prefixes = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    prefixes.add(str(Path(_PYTHON).parent.parent))
    return ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", *sorted(prefixes)]


class _Reader(threading.Thread):
    """Drains the result pipe: keeps the first ``cap`` bytes, discards the rest (so the writer never blocks)."""

    def __init__(self, fd: int, cap: int):
        super().__init__(daemon=True, name="sandbox-results")
        self.fd, self.cap, self.data, self.overflow = fd, cap, bytearray(), False
        self.stop = threading.Event()

    def run(self) -> None:
        poller = select.poll()  # not select.select: the trainer may hold descriptors numbered past 1024
        poller.register(self.fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while not self.stop.is_set():
            if not poller.poll(50):
                continue
            try:
                chunk = os.read(self.fd, 1 << 16)
            except OSError:
                return
            if not chunk:
                return  # EOF: every process of the run has closed the pipe
            room = self.cap - len(self.data)
            if len(chunk) > room:
                self.overflow = True
            self.data += chunk[: max(room, 0)]

    def finish(self) -> bytes:
        self.join(
            _DRAIN_S
        )  # a process that escaped the final kill (rlimits mode, non-root) may hold the pipe
        self.stop.set()
        self.join()
        os.close(self.fd)
        return bytes(self.data)


def _run(program: Program, limits: SandboxLimits, mode: str) -> ExecutionResult:
    start = time.monotonic()
    nonce = secrets.token_hex(16)
    plans = verdict.plan_tests(program.tests, program.setup_code)
    with tempfile.TemporaryDirectory(prefix="mtgrpo-sandbox-") as tmp:
        workdir = os.path.join(tmp, "work")
        os.mkdir(workdir, 0o700)
        files = {name: os.path.join(tmp, name) for name in ("stdout", "stderr")}
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        out_fd, err_fd = os.open(files["stdout"], flags, 0o600), os.open(files["stderr"], flags, 0o600)
        # A pipe, not a file: what is written cannot be sought back to and rewritten, and it holds no history.
        result_read, result_write = os.pipe()
        run_id = secrets.token_hex(8)
        cgroup = RunCgroup.create(
            f"run-{run_id}",
            memory_bytes=(limits.memory_mb + limits.tmpfs_mb) << 20,
            max_tasks=limits.max_processes + 4,  # + launcher, namespace init, harness, kill helper
            cpus=_CPUS_PER_RUN,
        )
        payload = {
            "nonce": nonce,
            "result_fd": result_write,
            "result_bytes": _RESULT_READ_BYTES - 1024,
            "code": program.code,
            # Outside-judged tests arrive as their calls only: the expected values stay in this process.
            "tests": [{"source": p.inside_source, "outside": p.judged == "outside"} for p in plans],
            "setup_code": program.setup_code,
            "cpu_seconds": int(limits.timeout_s) + 1,
            "memory_bytes": limits.memory_mb << 20,
            "max_output_bytes": limits.max_output_bytes,
            "max_processes": limits.max_processes,
            "tmpfs_bytes": limits.tmpfs_mb << 20,
            "jail_dir": workdir,
            "ro_paths": _ro_paths(),
            "cgroup_procs": cgroup.procs_files if cgroup else [],
            # A fresh uid per run: RLIMIT_NPROC is per uid, and one program cannot signal another's processes.
            "uid": 1_000_000 + secrets.randbelow(2_000_000_000),
        }
        if mode == "rlimits" and os.geteuid() == 0:  # the child drops to payload["uid"], which must own this
            os.chown(workdir, payload["uid"], payload["uid"])
        env = {**_ENV, "HOME": "/tmp" if mode == "namespaces" else workdir}
        env["TMPDIR"] = env["HOME"]
        timed_out = False
        reader = _Reader(result_read, _RESULT_READ_BYTES)
        try:
            proc = subprocess.Popen(
                [_PYTHON, "-I", "-S", "-B", "-u", _CHILD, mode],
                stdin=subprocess.PIPE,
                stdout=out_fd,
                stderr=err_fd,
                pass_fds=(result_write,),
                cwd=workdir,
                env=env,
                start_new_session=True,  # its own process group, which the timeout kills as a whole
            )
        except BaseException:
            os.close(result_read)
            if cgroup:
                cgroup.remove()
            raise
        finally:
            for fd in (out_fd, err_fd, result_write):
                os.close(fd)
        reader.start()
        try:
            proc.communicate(json.dumps(payload).encode(), timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Still running (timeout, or an exception here): nothing of the run may outlive this call.
            if proc.returncode is None:
                _stop(proc)
                if mode == "rlimits" and os.geteuid() == 0:  # also what left the group (namespaces need not)
                    subprocess.run(
                        [_PYTHON, "-I", "-S", "-B", _CHILD, "kill-uid", str(payload["uid"])], env=_ENV
                    )
            if cgroup:
                cgroup.kill()  # whatever is left of the run, in whatever session or namespace
            if mode == "rlimits" and os.geteuid() == 0:
                _remove_leftovers(payload["uid"])
        data = reader.finish()
        oom = cgroup.oom_killed() if cgroup else False
        cpu_s = cgroup.cpu_seconds() if cgroup else None
        if cgroup:
            cgroup.remove()
        stdout, stderr = _tail(files["stdout"]), _tail(files["stderr"])
        over_output = any(os.path.getsize(files[n]) >= limits.max_output_bytes for n in ("stdout", "stderr"))
        if mode == "rlimits":
            _make_removable(workdir)
    duration = time.monotonic() - start
    records, malformed = _parse_records(data, nonce, plans, reader.overflow)
    run = _Run(records, malformed, timed_out, over_output, oom, stdout, stderr, duration, cpu_s)
    return _classify(program, plans, limits, mode, run)


def _stop(proc: subprocess.Popen) -> None:
    """End a run still going: the launcher kills and reaps its child (the namespace's pid 1, or the harness),
    so nothing of the run is left as an orphan for the trainer's pid 1; SIGKILL of the group if it does not."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=_STOP_GRACE_S)
        return
    except (subprocess.TimeoutExpired, OSError):
        pass
    _kill_group(proc.pid)
    proc.wait()


_SYSV = {"shm": 0, "msg": 1, "sem": 2}  # /proc/sysvipc file -> index into (shmctl, msgctl, semctl)
_IPC_RMID = 0
_SHARED_DIRS = ("/dev/shm", "/dev/mqueue", "/tmp", "/var/tmp")


def _remove_leftovers(uid: int) -> None:
    """rlimits mode as root: what the run's uid left in the host's shared places. System V segments and files
    in /dev/shm are memory that no rlimit counts and that would outlive the run."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ctls = (libc.shmctl, libc.msgctl, libc.semctl)
    for kind, which in _SYSV.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                header, *rows = f.read().splitlines()
        except OSError:
            continue
        columns = header.split()
        for row in rows:
            fields = dict(zip(columns, row.split(), strict=False))
            ident = fields.get("shmid") or fields.get("msqid") or fields.get("semid")
            if ident and uid in (int(fields.get("uid", -1)), int(fields.get("cuid", -1))):
                ctls[which](int(ident), _IPC_RMID, None)
    for directory in _SHARED_DIRS:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _make_removable(path: str) -> None:
    # The program may have made its files read-only; TemporaryDirectory's cleanup must not fail on them.
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            try:
                os.chmod(os.path.join(root, d), 0o700)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)


def _tail(path: str) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - _TAIL_BYTES))
        return safe_text(f.read().decode("utf-8", "replace"))


# ------------------------------------------------------------------------------------------ result records

_STR = (str,)
_INT = (int,)
# event -> {field: allowed types or values}; any other field, type or value makes the record malformed.
_SCHEMA = {
    "setup_failed": {"error": _STR},
    "setup": {"status": ("ok", "error", "syntax_error"), "type": _STR, "message": _STR, "traceback": _STR},
    "program": {"status": ("ok", "error", "syntax_error"), "type": _STR, "message": _STR, "traceback": _STR},
    "test": {
        "index": _INT,
        "status": ("passed", "failed", "values"),
        "type": _STR,
        "message": _STR,
        "traceback": _STR,
        "got": (str, type(None)),
        "values": (list,),
    },
    "exit": {"code": _INT, "signal": _INT, "dropped": _INT},
    "done": {"dropped": _INT},
}
_REQUIRED = {"setup": ("status",), "program": ("status",), "test": ("index", "status")}


class _Malformed(ValueError):
    pass


def _parse_records(data: bytes, nonce: str, plans, overflow: bool) -> tuple[list[dict], str]:
    """The run's records, validated; (records, "") or ([], why the channel's content is not to be trusted).

    Only the harness writes records, and it writes each once, in a known shape: a record that is not valid JSON,
    has a wrong field, type or size, repeats a test, or a channel over its cap, is the program's doing (it can
    find the nonce in its own memory) and ends its run as ``killed``, without touching the rest of the batch.
    """
    if overflow:
        return [], f"the result channel carried more than {_RESULT_READ_BYTES} bytes"
    prefix = nonce.encode() + b" "
    records, seen = [], set()
    try:
        for line in data.split(b"\n"):
            if not line.startswith(prefix):
                continue
            if len(line) > _RECORD_BYTES:
                raise _Malformed(f"a record of {len(line)} bytes")
            try:
                record = json.loads(line[len(prefix) :])
            except (ValueError, RecursionError, MemoryError) as exc:
                raise _Malformed(f"a record that is not valid JSON ({type(exc).__name__})") from None
            _validate(record, plans)
            key = (record["event"], record.get("index"))
            if key in seen:
                raise _Malformed(
                    f"a second {record['event']} record"
                    + (f" for test {key[1]}" if key[1] is not None else "")
                )
            seen.add(key)
            if record["event"] == "test" and record["status"] == "values":
                record["decoded"] = _decode_values(record["values"], plans[record["index"]])
            records.append(record)
    except _Malformed as exc:
        return [], str(exc)
    return records, ""


def _validate(record, plans) -> None:
    if not isinstance(record, dict):
        raise _Malformed(f"a record that is a {type(record).__name__}, not an object")
    event = record.get("event")
    if not isinstance(event, str) or event not in _SCHEMA:
        raise _Malformed(f"a record with event {str(event)[:40]!r}")
    schema = _SCHEMA[event]
    for key, value in record.items():
        if key == "event":
            continue
        allowed = schema.get(key)
        if allowed is None:
            raise _Malformed(f"a {event} record with field {str(key)[:40]!r}")
        if isinstance(allowed[0], type):
            if isinstance(value, bool) or not isinstance(value, allowed):
                raise _Malformed(f"a {event} record whose {key} is a {type(value).__name__}")
            if isinstance(value, str) and len(value) > _FIELD_CHARS:
                raise _Malformed(f"a {event} record whose {key} has {len(value)} characters")
        elif value not in allowed:
            raise _Malformed(f"a {event} record with {key} {str(value)[:40]!r}")
    missing = [k for k in _REQUIRED.get(event, ()) if k not in record]
    if missing:
        raise _Malformed(f"a {event} record without {missing[0]}")
    if event == "exit" and len({"code", "signal"} & set(record)) != 1:
        raise _Malformed("an exit record without exactly one of code and signal")
    if event == "test":
        index = record["index"]
        if not 0 <= index < len(plans):
            raise _Malformed(f"a record for test {index} of {len(plans)}")
        outside = plans[index].judged == "outside"
        if record["status"] == ("passed" if outside else "values"):
            raise _Malformed(f"a {record['status']} record for a test judged {plans[index].judged}")
        if ("values" in record) != (record["status"] == "values"):
            raise _Malformed("values in a record that is not a values record")


def _decode_values(values: list, plan) -> list:
    if len(values) != verdict.n_values(plan):
        raise _Malformed(f"{len(values)} values for a test with {verdict.n_values(plan)} checks")
    decoded = []
    for value in values:
        if not isinstance(value, str) or len(value) > _VALUE_CHARS:
            raise _Malformed("a value that is not an encoded string within the size cap")
        try:
            decoded.append(verdict.decode(json.loads(value)))
        except (ValueError, RecursionError, MemoryError, TypeError) as exc:
            raise _Malformed(f"a value that does not decode ({str(exc)[:80]})") from None
    return decoded


# ------------------------------------------------------------------------------------------------ verdict


@dataclass
class _Run:
    records: list
    malformed: str
    timed_out: bool
    over_output: bool
    oom: bool
    stdout: str
    stderr: str
    duration: float
    cpu_s: float | None


_UNSAFE_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def safe_text(text: str) -> str:
    """``text`` with what breaks tokenizers or terminals replaced by U+FFFD: lone surrogates (not encodable
    as UTF-8) and control characters other than newline and tab."""
    return _UNSAFE_CHARS.sub("\ufffd", text)


def _short(text: str, limit: int = _FEEDBACK_CHARS) -> str:
    """At most ``limit`` characters: the first line (what happened) and the end (the error itself)."""
    text = safe_text(text).strip()
    if len(text) <= limit:
        return text
    head = text.split("\n", 1)[0][: limit // 4]
    return head + "\n..." + text[-(limit - len(head) - 4) :]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _classify(program: Program, plans, limits: SandboxLimits, mode: str, run: _Run) -> ExecutionResult:
    tests = program.tests
    judged = tuple(p.judged for p in plans)
    by_event: dict[str, dict] = {}
    test_records: dict[int, dict] = {}
    for record in run.records:
        if record["event"] == "test":
            test_records[record["index"]] = record
        else:
            by_event[record["event"]] = record
    verdicts: dict[int, verdict.Verdict] = {}
    for i, record in test_records.items():
        if record["status"] == "values":
            verdicts[i] = verdict.judge(plans[i], record["decoded"])
    passed = tuple(
        (test_records[i]["status"] == "passed" or (i in verdicts and verdicts[i].passed))
        if i in test_records
        else False
        for i in range(len(tests))
    )
    exit_info = {k: v for k, v in by_event.get("exit", {}).items() if k in ("code", "signal")}
    done = "done" in by_event
    failed = [i for i in sorted(test_records) if not passed[i]]
    stage_error = next(
        (by_event[s] for s in ("setup", "program") if s in by_event and by_event[s]["status"] != "ok"), None
    )
    program_ok = by_event.get("program", {}).get("status") == "ok"

    def result(reason: str, feedback: str) -> ExecutionResult:
        n_passed = sum(passed) if reason != "killed" else 0
        return ExecutionResult(
            reason,
            n_passed,
            len(tests),
            _short(feedback),
            passed if reason != "killed" else (False,) * len(tests),
            run.duration,
            run.stdout,
            run.stderr,
            mode,
            exit_info,
            judged,
            run.cpu_s,
        )

    if run.malformed:
        return result("killed", f"Killed: the run wrote {run.malformed} to the sandbox's result channel.")
    if "setup_failed" in by_event:
        return result("killed", f"The sandbox could not start: {by_event['setup_failed'].get('error')}")
    if run.over_output:
        return result(
            "killed", f"Killed: the program wrote more than {limits.max_output_bytes} bytes of output."
        )
    if stage_error and stage_error["status"] == "syntax_error":
        return result("syntax_error", stage_error.get("traceback", "SyntaxError"))
    if stage_error:
        what = "The task's setup code" if stage_error["event"] == "setup" else "The program"
        kind = stage_error.get("type")
        if kind == "MemoryError":
            return result(
                "memory",
                f"{what} ran out of memory (limit {limits.memory_mb} MB).\n{stage_error.get('traceback', '')}",
            )
        if kind == "SystemExit":
            status = stage_error.get("message", "")
            return result(
                "runtime_error",
                f"{what} called sys.exit({status}) before the tests ran; exiting is not passing.",
            )
        return result(
            "runtime_error",
            f"{what} raised an error before the tests ran:\n{stage_error.get('traceback', '')}",
        )
    if run.oom:
        return result(
            "memory",
            f"Killed: the run used more than {limits.memory_mb + limits.tmpfs_mb} MB in all (its processes, "
            "shared memory and files in memory).",
        )
    signal_number = exit_info.get("signal")
    if not done and (run.timed_out or signal_number == signal.SIGXCPU):
        where = "while running the program"
        if program_ok:
            running = next((i for i in range(len(tests)) if i not in test_records), None)
            where = f"while running the test: {tests[running]}" if running is not None else "after the tests"
        return result("timeout", f"Timed out after {limits.timeout_s:g} s {where}")
    dropped = by_event.get("done", {}).get("dropped", 0)
    if done and program_ok and all(passed) and not dropped:
        return result(
            "passed", f"All {len(tests)} tests passed." if tests else "It ran without errors (no tests)."
        )
    if any(test_records[i].get("type") == "MemoryError" for i in failed):
        return result("memory", f"Ran out of memory (limit {limits.memory_mb} MB) in a test.")
    if done and program_ok:
        if not failed:  # records were dropped at the harness's size cap: never a pass
            return result("test_failure", "Some test results were over the sandbox's size cap.")
        index = failed[0]
        first = test_records[index]
        text = f"Test failed: {tests[index].strip()}\n"
        if index in verdicts:
            v = verdicts[index]
            if v.error:
                text += f"{v.error} (the call returned {v.got})"
            else:
                text += f"AssertionError (the call returned {v.got})" if v.got else "AssertionError"
        elif first.get("type") == "AssertionError" and not first.get("message"):
            got = first.get("got")
            text += f"AssertionError (the call returned {got})" if got else "AssertionError"
        else:
            text += first.get("traceback", "")
        return result("test_failure", text)
    if done:
        return result("runtime_error", "The program's results are missing (over the sandbox's size cap).")
    if signal_number is not None:
        if "MemoryError" in run.stderr:
            return result("memory", f"Ran out of memory (limit {limits.memory_mb} MB).\n{run.stderr[-500:]}")
        why = {
            signal.SIGXFSZ: f"it wrote more than {limits.max_output_bytes} bytes to its output or a file",
            signal.SIGSEGV: "it crashed (segmentation fault; e.g. a recursion limit raised too far)",
        }.get(signal_number, "")
        return result("killed", f"Killed by {_signal_name(signal_number)}{': ' + why if why else ''}.")
    code = exit_info.get("code")
    return result(
        "runtime_error",
        f"The process exited (status {code}) before the tests finished.\n{run.stderr[-500:]}".strip(),
    )
