"""Run untrusted Python programs against their tests in a separate, isolated, resource-limited process.

>>> run_program("def add(a, b):\\n    return a + b", ["assert add(1, 2) == 3", "assert add(2, 2) == 5"]).fraction
0.5

Each run starts a fresh interpreter (``python -I -S``, never a fork of the trainer) in its own session, with an
empty environment, a private working directory, a wall-clock timeout that kills the whole process group and
rlimits on CPU time, address space, processes and file size. As root (or with CAP_SYS_ADMIN) it also gets its
own mount, pid, network, IPC and UTS namespaces, a read-only chroot and a throwaway uid. What holds where:
docs/code_sandbox.md.

``run_programs`` runs a batch on a thread pool (each thread waits on its own subprocess), two runs per CPU this
process may use. The feedback text quotes the tests it ran: to show a model its errors without leaking hidden
tests, run only the visible tests for that.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
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

logger = logging.getLogger(__name__)

_CHILD = str(Path(__file__).resolve().with_name("_sandbox_child.py"))
_PYTHON = os.path.realpath(sys.executable)  # the base interpreter: under -I -S no venv site-packages
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
_TAIL_BYTES = 4096
_RESULT_READ_BYTES = 4 << 20
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

    @property
    def fraction(self) -> float:
        """Share of the tests that passed (0 when the run failed before or while running them)."""
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.reason == "passed"


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
    error = "not Linux" if not sys.platform.startswith("linux") else None
    if error is None:
        probe = _run(Program("x = 1", ("assert x == 1",)), SandboxLimits(), "namespaces")
        error = None if probe.reason == "passed" else probe.feedback
    if error is None:
        return "namespaces"
    if wanted == "namespaces":
        raise RuntimeError(f"MTGRPO_SANDBOX_ISOLATION=namespaces but the namespace sandbox fails: {error}")
    logger.warning(
        "Code sandbox: Linux namespaces are unavailable (%s); running programs with rlimits only, which does "
        "not block writes outside the working directory or network use by determined code. Run as root or "
        "with CAP_SYS_ADMIN for the full sandbox (docs/code_sandbox.md).",
        error.strip().splitlines()[-1][:200],
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
    later calls (so two rewards over the same batch execute it once).
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
            todo, pool.map(lambda k: _run(Program(*k[:3]), limits, mode), todo), strict=True
        ):
            results[key] = result
            if cache:
                _CACHE.put(key, result)
    return [results[k] for k in keys]


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


# ------------------------------------------------------------------------------------------------- one run


def _ro_paths() -> list[str]:
    """What the jail shows (read-only): system binaries and libraries, and the interpreter's own prefix."""
    prefixes = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    prefixes.add(str(Path(_PYTHON).parent.parent))
    return ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", *sorted(prefixes)]


def _run(program: Program, limits: SandboxLimits, mode: str) -> ExecutionResult:
    start = time.monotonic()
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="mtgrpo-sandbox-") as tmp:
        workdir = os.path.join(tmp, "work")
        os.mkdir(workdir, 0o700)
        files = {name: os.path.join(tmp, name) for name in ("stdout", "stderr", "result")}
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        out_fd, err_fd = os.open(files["stdout"], flags, 0o600), os.open(files["stderr"], flags, 0o600)
        result_fd = os.open(files["result"], flags | os.O_APPEND, 0o600)
        payload = {
            "nonce": nonce,
            "result_fd": result_fd,
            "result_bytes": min(256 << 10, limits.max_output_bytes // 2),
            "code": program.code,
            "tests": list(program.tests),
            "setup_code": program.setup_code,
            "cpu_seconds": int(limits.timeout_s) + 1,
            "memory_bytes": limits.memory_mb << 20,
            "max_output_bytes": limits.max_output_bytes,
            "max_processes": limits.max_processes,
            "tmpfs_bytes": limits.tmpfs_mb << 20,
            "jail_dir": workdir,
            "ro_paths": _ro_paths(),
            # A fresh uid per run: RLIMIT_NPROC is per uid, and one program cannot signal another's processes.
            "uid": 1_000_000 + secrets.randbelow(2_000_000_000),
        }
        if mode == "rlimits" and os.geteuid() == 0:  # the child drops to payload["uid"], which must own this
            os.chown(workdir, payload["uid"], payload["uid"])
        env = {**_ENV, "HOME": "/tmp" if mode == "namespaces" else workdir}
        env["TMPDIR"] = env["HOME"]
        timed_out = False
        try:
            proc = subprocess.Popen(
                [_PYTHON, "-I", "-S", "-B", "-u", _CHILD, mode],
                stdin=subprocess.PIPE,
                stdout=out_fd,
                stderr=err_fd,
                pass_fds=(result_fd,),
                cwd=workdir,
                env=env,
                start_new_session=True,  # its own process group, which the timeout kills as a whole
            )
        finally:
            for fd in (out_fd, err_fd, result_fd):
                os.close(fd)
        try:
            proc.communicate(json.dumps(payload).encode(), timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Still running (timeout, or an exception here): nothing of the run may outlive this call.
            if proc.returncode is None:
                _kill_group(proc.pid)
                proc.wait()
                if mode == "rlimits" and os.geteuid() == 0:  # also what left the group (namespaces need not)
                    subprocess.run(
                        [_PYTHON, "-I", "-S", "-B", _CHILD, "kill-uid", str(payload["uid"])], env=_ENV
                    )
        records = _read_records(files["result"], nonce)
        stdout, stderr = _tail(files["stdout"]), _tail(files["stderr"])
        over_output = any(os.path.getsize(files[n]) >= limits.max_output_bytes for n in ("stdout", "stderr"))
        if mode == "rlimits":
            _make_removable(workdir)
    duration = time.monotonic() - start
    return _classify(program, limits, mode, records, timed_out, over_output, stdout, stderr, duration)


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


def _read_records(path: str, nonce: str) -> list[dict]:
    with open(path, "rb") as f:
        data = f.read(_RESULT_READ_BYTES)
    records = []
    prefix = nonce.encode() + b" "
    for line in data.splitlines():
        if line.startswith(prefix):
            try:
                records.append(json.loads(line[len(prefix) :]))
            except ValueError:
                continue
    return records


def _tail(path: str) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - _TAIL_BYTES))
        return f.read().decode("utf-8", "replace")


def _short(text: str, limit: int = _FEEDBACK_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _classify(
    program, limits, mode, records, timed_out, over_output, stdout, stderr, duration
) -> ExecutionResult:
    tests = program.tests
    by_event: dict[str, dict] = {}
    test_records: dict[int, dict] = {}
    for record in records:
        if record.get("event") == "test" and isinstance(record.get("index"), int):
            test_records.setdefault(record["index"], record)
        else:
            by_event.setdefault(record.get("event"), record)
    passed = tuple(test_records.get(i, {}).get("status") == "passed" for i in range(len(tests)))
    exit_info = {k: v for k, v in by_event.get("exit", {}).items() if k in ("code", "signal")}
    done = "done" in by_event
    failed = [test_records[i] for i in sorted(test_records) if test_records[i].get("status") != "passed"]
    stage_error = next(
        (by_event[s] for s in ("setup", "program") if s in by_event and by_event[s]["status"] != "ok"), None
    )

    def result(reason: str, feedback: str) -> ExecutionResult:
        n_passed = sum(passed) if reason != "killed" else 0
        return ExecutionResult(
            reason, n_passed, len(tests), _short(feedback), passed, duration, stdout, stderr, mode, exit_info
        )

    if "setup_failed" in by_event:
        return result("killed", f"The sandbox could not start: {by_event['setup_failed'].get('error')}")
    if over_output:
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
                f"{what} ran out of memory (limit {limits.memory_mb} MB).\n{stage_error['traceback']}",
            )
        if kind == "SystemExit":
            status = stage_error.get("message", "")
            return result(
                "runtime_error",
                f"{what} called sys.exit({status}) before the tests ran; exiting is not passing.",
            )
        return result(
            "runtime_error", f"{what} raised an error before the tests ran:\n{stage_error['traceback']}"
        )
    signal_number = exit_info.get("signal")
    if not done and (timed_out or signal_number == signal.SIGXCPU):
        where = "while running the program"
        if "program" in by_event:
            running = next((i for i in range(len(tests)) if i not in test_records), None)
            where = f"while running the test: {tests[running]}" if running is not None else "after the tests"
        return result("timeout", f"Timed out after {limits.timeout_s:g} s {where}")
    if done and all(passed):
        return result(
            "passed", f"All {len(tests)} tests passed." if tests else "It ran without errors (no tests)."
        )
    if any(r.get("type") == "MemoryError" for r in failed):
        return result("memory", f"Ran out of memory (limit {limits.memory_mb} MB) in a test.")
    if done:
        first = failed[0] if failed else {}
        index = first.get("index", 0)
        text = f"Test failed: {tests[index].strip()}\n"
        if first.get("type") == "AssertionError" and not first.get("message"):
            got = first.get("got")
            text += f"AssertionError (the call returned {got})" if got else "AssertionError"
        else:
            text += first.get("traceback", "")
        return result("test_failure", text)
    if signal_number is not None:
        if "MemoryError" in stderr:
            return result("memory", f"Ran out of memory (limit {limits.memory_mb} MB).\n{stderr[-500:]}")
        why = {
            signal.SIGXFSZ: f"it wrote more than {limits.max_output_bytes} bytes to its output or a file",
            signal.SIGSEGV: "it crashed (segmentation fault; e.g. a recursion limit raised too far)",
        }.get(signal_number, "")
        return result("killed", f"Killed by {_signal_name(signal_number)}{': ' + why if why else ''}.")
    code = exit_info.get("code")
    return result(
        "runtime_error",
        f"The process exited (status {code}) before the tests finished.\n{stderr[-500:]}".strip(),
    )
