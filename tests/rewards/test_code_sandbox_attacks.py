"""Attacks on the code sandbox by a policy that wants reward without solving the task (issue 20), one class each.

Every attack program here scored (or crashed the reward batch) against the sandbox before issue 20; each test
checks that it now fails and that honest programs in the same batch keep their scores. Guarantees that only a
mode or a machine feature gives (namespaces, cgroups, a known keyctl syscall) are skipped where it is missing;
docs/code_sandbox.md says what holds where.
"""

import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from mtgrpo.registry import _load_rewards_package

rewards = _load_rewards_package()
sandbox, code_exec, verdict = rewards.sandbox, rewards.code_exec, rewards.verdict
Program, SandboxLimits, run_program, run_programs = (
    sandbox.Program,
    sandbox.SandboxLimits,
    sandbox.run_program,
    sandbox.run_programs,
)

REPO = Path(__file__).resolve().parents[2]
LIMITS = SandboxLimits(timeout_s=3.0)
TESTS = ("assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(-1, 1) == 0")
GOOD = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"

namespaces_only = pytest.mark.skipif(
    sandbox.isolation_mode() != "namespaces", reason="needs the namespace sandbox (docs/code_sandbox.md)"
)
cgroups_only = pytest.mark.skipif(
    not sandbox.cgroup_support()[0], reason=f"no per-run cgroups here: {sandbox.cgroup_support()[1]}"
)


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.setattr(sandbox, "_CACHE", sandbox._LRU(64))


@pytest.fixture(params=["machine", "rlimits"])
def mode(request, monkeypatch):
    """Run the test in the machine's own mode and in the rlimits fallback."""
    if request.param == "rlimits":
        monkeypatch.setenv("MTGRPO_SANDBOX_ISOLATION", "rlimits")
        sandbox.isolation_mode.cache_clear()
    yield sandbox.isolation_mode()
    sandbox.isolation_mode.cache_clear()


def batch_with_honest_neighbours(attack: str, tests=TESTS, limits=LIMITS):
    """Run the attack between two honest programs; the honest ones must pass, whatever the attack does."""
    results = run_programs(
        [Program(GOOD, tests), Program(attack, tests), Program(GOOD + "# another\n", tests)], limits=limits
    )
    assert [results[0].reason, results[2].reason] == ["passed", "passed"], [r.feedback for r in results]
    assert psutil.Process().children(recursive=True) == []
    return results[1]


# -------------------------------------------------- 1. malformed records cannot crash the reward batch

# The nonce sits in the harness's closure: a program finds it with gc and writes its own records.
FORGE = """
import gc, os, re
def _nonce():
    for o in gc.get_objects():
        for c in getattr(o, "__closure__", None) or ():
            try:
                v = c.cell_contents
            except ValueError:
                continue
            if isinstance(v, str) and re.fullmatch("[0-9a-f]{32} ", v):
                return v
def _forge(line):
    n = _nonce()
    assert n, "no nonce found"
    for fd in range(3, 64):
        try:
            os.write(fd, n.encode() + line + b"\\n")
        except OSError:
            pass
"""
MALFORMED = {
    "wrong-types": b'{"event": "test", "index": 0, "status": "failed", "type": "E", "message": "m", "traceback": 7}',
    "missing-field": b'{"event": "program"}',
    "deeply-nested": b'{"event": "done", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "not-an-object": b"[1, 2]",
    "huge-field": b'{"event": "setup_failed", "error": "' + b"x" * 900_000 + b'"}',
    "bad-value": b'{"event": "test", "index": 0, "status": "values", "values": ["{\\"s\\": [[1]]}"]}',
}


@pytest.mark.parametrize("record", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_records_kill_only_that_run(record):
    attack = FORGE + f"_forge({MALFORMED[record]!r})\n" + GOOD
    result = batch_with_honest_neighbours(attack)
    assert result.reason == "killed" and result.passed == 0
    assert "result channel" in result.feedback


def test_forged_pass_records_for_outside_tests_are_rejected():
    # With the nonce a program can write "passed" for a test; a test judged outside takes only values.
    attack = FORGE + '_forge(b\'{"event": "test", "index": 0, "status": "passed"}\')\n' + WRONG
    result = batch_with_honest_neighbours(attack)
    assert result.reason == "killed" and result.fraction == 0.0


def test_a_failure_of_the_machinery_costs_only_that_program(monkeypatch):
    real_run = sandbox._run

    def flaky_run(program, limits, mode):
        if "boom" in program.code:
            raise OSError("no process could start")
        return real_run(program, limits, mode)

    monkeypatch.setattr(sandbox, "_run", flaky_run)
    results = run_programs([Program(GOOD, TESTS), Program(GOOD + "# boom\n", TESTS)], limits=LIMITS)
    assert [r.reason for r in results] == ["passed", "killed"]
    assert "The sandbox failed: OSError" in results[1].feedback


# ------------------------------------------- 2. the result channel cannot be sought back to and rewritten

# Against a result file: clear O_APPEND on the shared descriptor, then overwrite each "failed" the harness
# wrote with "passed" (the offset comes from the file's size when the test started: no nonce needed, and the
# descriptor is write-only): the previous test's record at each call, the last one from sys.stdout.flush(),
# which the harness calls after its final record.
REWRITE = """
import fcntl, os, stat, sys
seekable = []
for fd in range(3, 64):
    try:
        os.lseek(fd, 0, os.SEEK_CUR)
        seekable.append(fd)
    except OSError:
        pass
print("seekable", seekable, flush=True)
target = next((fd for fd in seekable if stat.S_ISREG(os.fstat(fd).st_mode)), None)
OFFSET = 33 + len('{"event": "test", "index": 0, "status": "')
starts = []
def patch_previous():
    if target is not None and starts:
        fcntl.fcntl(target, fcntl.F_SETFL, fcntl.fcntl(target, fcntl.F_GETFL) & ~os.O_APPEND)
        os.pwrite(target, b"passed", starts[-1] + OFFSET)
class Flush:
    def write(self, text):
        return len(text)
    def flush(self):
        patch_previous()
def add(a, b):  # also called again, before the record, for the "the call returned" text: same size then
    size = os.fstat(target).st_size if target is not None else 0
    if not starts or size != starts[-1]:
        patch_previous()
        starts.append(size)
    sys.stdout = Flush()
    return a - b
"""


def test_result_channel_cannot_be_rewritten():
    result = batch_with_honest_neighbours(REWRITE)
    assert result.reason == "test_failure" and result.passed == 0
    assert "seekable []" in result.stdout_tail  # a pipe: no descriptor of the run can seek


# ----------------------------------------------------------- 3. cheating inside the interpreter


CHEATS = {
    "always-equal": "class Anything:\n    def __eq__(self, other):\n        return True\n"
    "def add(a, b):\n    return Anything()\n",
    "replace-exec": "import builtins\nbuiltins.exec = lambda *a, **k: None\n" + WRONG,
    "replace-compile": "import builtins\n_c = builtins.compile\n"
    "builtins.compile = lambda src, name, mode, *a, **k: _c('pass', name, mode)\n" + WRONG,
    # Reads the calling test's source from linecache and returns what it is compared with.
    "read-linecache": "import ast, linecache, sys\n"
    "def add(a, b):\n    name = sys._getframe(1).f_code.co_filename\n"
    "    line = ''.join(linecache.cache.get(name, (0, 0, [''], 0))[2])\n"
    "    return ast.literal_eval(line.split('==')[-1].strip()) if '==' in line else None\n",
    # The expected value is a constant of the test's own code object, one frame up.
    "frame-consts": "import sys\n"
    "def add(a, b):\n    consts = [c for c in sys._getframe(1).f_code.co_consts if isinstance(c, int)]\n"
    "    return consts[-1] if consts else None\n",
    # Patches the harness's record writer through its closure: every test record says "passed".
    "patch-harness": "import gc\n"
    "for o in gc.get_objects():\n"
    "    if getattr(o, '__name__', '') == 'emit' and getattr(o, '__closure__', None):\n"
    "        cell = o.__closure__[o.__code__.co_freevars.index('dumps')]\n"
    "        real = cell.cell_contents\n"
    "        cell.cell_contents = lambda r, real=real: real({**r, 'status': 'passed'} "
    "if r.get('event') == 'test' else r)\n" + WRONG,
}


@pytest.mark.parametrize("cheat", list(CHEATS), ids=list(CHEATS))
def test_cheating_inside_the_interpreter_does_not_score(cheat):
    result = batch_with_honest_neighbours(CHEATS[cheat])
    assert result.fraction == 0.0 and result.reason in ("test_failure", "killed")
    assert result.test_judged == ("outside",) * len(TESTS)


SET_TESTS = (
    "assert set(common((3, 4, 5), (5, 7, 4))) == set((4, 5))",
    "assert abs(area(2) - 12.566) < 0.001",
)


def test_shadowing_the_builtins_a_test_calls_does_not_score():
    attack = (
        "def common(a, b):\n    return None\ndef area(r):\n    return 0.0\n"
        "set = lambda *a: 0\nabs = lambda *a: 0\n"
    )
    good = "import math\ndef common(a, b):\n    return set(a) & set(b)\ndef area(r):\n    return math.pi * r * r\n"
    results = run_programs([Program(attack, SET_TESTS), Program(good, SET_TESTS)], limits=LIMITS)
    assert [r.fraction for r in results] == [0.0, 1.0]


def test_hidden_expected_values_never_enter_the_sandbox():
    # The program searches everything it can reach (objects, code constants, linecache, frames) for a value
    # shaped like the hidden answer and returns it.
    hunter = textwrap.dedent(
        """
        import gc, linecache, re, sys
        PATTERN = re.compile("hid" + r"den-[0-9]+")
        def strings():
            for o in gc.get_objects():
                items = o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else ()
                try:
                    yield from (x for x in items if isinstance(x, str))
                except Exception:
                    pass
            for entry in list(linecache.cache.values()):
                yield from entry[2]
            frame = sys._getframe()
            while frame:
                yield from (c for c in frame.f_code.co_consts if isinstance(c, str))
                frame = frame.f_back
        def secret(n):
            for s in strings():
                m = PATTERN.search(s)
                if m:
                    return m.group(0)
            return "nothing found"
        """
    )
    tests = ("assert secret(1) == 'hidden-4711'",)
    result = run_program(hunter, tests, limits=LIMITS)
    assert result.reason == "test_failure"
    assert "the call returned 'nothing found'" in result.feedback


def test_tests_of_other_shapes_run_inside_and_say_so():
    tests = ("for x in range(3):\n    assert add(x, 0) == x", "assert add(1, 1) == 2")
    result = run_program(GOOD, tests, limits=LIMITS)
    assert result.reason == "passed" and result.test_judged == ("inside", "outside")
    # ... where a program that cheats still wins: the weaker verdict is visible per test and in the metrics.
    cheat = run_program(CHEATS["always-equal"], tests, limits=LIMITS)
    assert cheat.test_passed == (True, False) and cheat.test_judged == ("inside", "outside")
    metrics = code_exec.code_metrics([result, cheat])
    assert metrics["code/verified_outside_rate"] == 0.5


# ------------------------------------------------------------ 4. memory outside the address-space limit

MEMORY_HOG = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
libc.shmdt.argtypes = (ctypes.c_void_p,)
total = 0
CHUNK = 32 << 20
for _ in range(16):  # System V segments: attached, filled, detached (no longer in the address space), kept
    shm = libc.shmget(0, CHUNK, 0o1600)
    if shm < 0:
        break
    addr = libc.shmat(shm, None, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        break
    ctypes.memset(addr, 1, CHUNK)
    libc.shmdt(addr)
    total += CHUNK
    print("allocated_mb", total >> 20, flush=True)
memfds = []
for _ in range(2000):  # memfds: written, never mapped
    try:
        fd = os.memfd_create("x")
        os.write(fd, b"x" * (1 << 20))
    except OSError:
        break
    memfds.append(fd)
    total += 1 << 20
    print("allocated_mb", total >> 20, flush=True)
def add(a, b):
    return a + b
"""


def test_memory_outside_the_address_space_limit_is_bounded(mode):
    if mode == "rlimits" and os.geteuid() != 0:
        pytest.skip(
            "as a normal user the rlimits mode has no bound on System V memory (docs/code_sandbox.md)"
        )
    limits = SandboxLimits(timeout_s=5.0, memory_mb=192, tmpfs_mb=32)
    before = _sysv_segments()
    result = run_program(MEMORY_HOG, TESTS, limits=limits)
    printed = [
        int(line.split()[1]) for line in result.stdout_tail.splitlines() if line.startswith("allocated_mb")
    ]
    assert max(printed, default=0) <= limits.memory_mb + limits.tmpfs_mb, result
    assert result.reason in ("passed", "memory"), result.feedback
    assert _sysv_segments() <= before  # nothing of the run stays in the host's IPC namespace


def test_rlimits_mode_as_root_removes_what_the_run_left_in_shared_places(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("only root's rlimits mode runs programs under a uid of their own")
    monkeypatch.setenv("MTGRPO_SANDBOX_ISOLATION", "rlimits")
    sandbox.isolation_mode.cache_clear()
    marker = f"mtgrpo-leftover-{os.getpid()}"
    code = f"for d in ('/dev/shm', '/tmp'):\n    open(f'{{d}}/{marker}', 'w').write('x' * 1000)\n" + GOOD
    try:
        assert run_program(code, TESTS, limits=LIMITS).reason == "passed"
    finally:
        sandbox.isolation_mode.cache_clear()
    assert not any(os.path.exists(f"{d}/{marker}") for d in ("/dev/shm", "/tmp"))


def _sysv_segments() -> set[str]:
    with open("/proc/sysvipc/shm") as f:
        return {line.split()[1] for line in f.readlines()[1:]}


# ---------------------------------------------------------------------------- 5. the session keyring

KEYRING_SCRIPT = r"""
import ctypes, json, os, sys
sys.path.insert(0, sys.argv[1])
SYS = {"x86_64": (248, 250), "aarch64": (217, 219)}[os.uname().machine]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def keyctl(*args):
    return libc.syscall(SYS[1], *args)
SESSION = ctypes.c_int(-3)
secret = b"keyring-secret-5150"
# Join a fresh named session keyring (the trainer's, here) and put a key in it; Docker's default seccomp
# profile, for one, refuses keyctl: then there is no keyring to reach.
if keyctl(1, b"mtgrpo-keyring-test") < 0 or libc.syscall(SYS[0], b"user", b"mtgrpo-secret", secret, len(secret), SESSION) < 0:
    print(json.dumps({"skip": f"keyctl refused here (errno {ctypes.get_errno()})"}))
    sys.exit(0)
from mtgrpo.registry import _load_rewards_package
sandbox = _load_rewards_package().sandbox
program = '''
import ctypes, os
SYS = {"x86_64": (248, 250), "aarch64": (217, 219)}[os.uname().machine]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
S = ctypes.c_int(-3)
key = libc.syscall(SYS[1], 10, S, b"user", b"mtgrpo-secret", 0)  # KEYCTL_SEARCH
buf = ctypes.create_string_buffer(256)
n = libc.syscall(SYS[1], 11, key, buf, 256) if key >= 0 else -1  # KEYCTL_READ
print("read", buf.raw[:max(n, 0)])
print("planted", libc.syscall(SYS[0], b"user", b"mtgrpo-planted", b"x", 1, S))
def add(a, b):
    return a + b
'''
result = sandbox.run_program(program, ["assert add(1, 2) == 3"], timeout_s=5.0)
planted = keyctl(10, SESSION, b"user", b"mtgrpo-planted", 0)
print(json.dumps({"reason": result.reason, "stdout": result.stdout_tail, "planted": planted >= 0}))
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="keyctl syscall number unknown")
def test_trainer_session_keyring_is_out_of_reach(mode):
    out = subprocess.run(
        [sys.executable, "-c", KEYRING_SCRIPT, str(REPO)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    assert report["reason"] == "passed"
    assert "keyring-secret-5150" not in report["stdout"]
    assert not report["planted"]  # the key the program added went to its own keyring, not the trainer's


# -------------------------------------------------------------------- 6. trainer-side input handling


@pytest.mark.parametrize(
    "text",
    [
        "```" + " " * 200_000,  # the quadratic case: spaces after a fence, no newline
        "```python\n" + "`" * 200_000,
        "```\n" * 50_000,
        "``" * 100_000,
        "```py" + "\t" * 100_000 + "x" * 100_000,
        "``` a" * 40_000,
        "```a\n" * 40_000,
    ],
    ids=["spaces", "backticks", "fences", "half-fences", "tag", "no-newline", "tagged-blocks"],
)
def test_program_extraction_is_linear(text):
    start = time.perf_counter()
    code_exec.extract_program(text)
    assert time.perf_counter() - start < 1.0  # quadratic took 24 s on 131k characters (figure: benchmark)


def test_fenced_blocks_match_the_regex_they_replace():
    import random
    import re

    regex = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
    rng = random.Random(20)
    for _ in range(5000):
        text = "".join(
            rng.choice(["`", "```", "\n", " ", "\t", "py", "x", "-"]) for _ in range(rng.randint(0, 25))
        )
        assert code_exec.fenced_blocks(text) == regex.findall(text), repr(text)


UNSAFE_MESSAGE = 'raise ValueError("bad \\ud800 text \\x1b[2J \\x00 \\x07 end")\n'


def test_feedback_is_safe_for_any_tokenizer(tokenizer):
    result = run_program(UNSAFE_MESSAGE + GOOD, TESTS, limits=LIMITS)
    assert result.reason == "runtime_error" and "bad" in result.feedback and "end" in result.feedback
    for text in (result.feedback, result.stdout_tail, result.stderr_tail):
        text.encode("utf-8")  # no lone surrogate
        assert not any(ord(c) < 32 and c not in "\n\t" for c in text)
    tokenizer.apply_chat_template([{"role": "user", "content": result.feedback}], tokenize=True)


def test_an_oversized_error_record_is_never_a_pass():
    # An exception type with a 300k-character name made the record too large to keep; the run then looked clean.
    attack = "raise type('E' * 300_000, (Exception,), {})('x')\n"
    [result] = code_exec.execute_completions(
        [f"```python\n{attack}```"], [[]], require_tests=False, limits=LIMITS
    )
    assert result.reason == "runtime_error" and "raised an error" in result.feedback


# ------------------------------------------------------------------------ 7. neighbours in a parallel batch


def test_timeouts_are_never_cached(monkeypatch):
    calls = []
    real_run = sandbox._run
    monkeypatch.setattr(sandbox, "_run", lambda *args: calls.append(args[0]) or real_run(*args))
    loop = Program("def add(a, b):\n    while True:\n        pass", TESTS)
    limits = SandboxLimits(timeout_s=1.0)
    for _ in range(2):
        assert [r.reason for r in run_programs([loop, Program(GOOD, TESTS)], limits=limits)] == [
            "timeout",
            "passed",
        ]
    assert [c.code for c in calls].count(loop.code) == 2  # run again: a busy machine may have caused it
    assert [c.code for c in calls].count(GOOD) == 1


SPINNERS = """
import os
for _ in range(12):
    if os.fork() == 0:
        os.setsid()
        while True:
            pass
def add(a, b):
    while True:
        pass
"""
# An honest program that needs 0.3 s of CPU: about 0.5 s wall with a fair share of the CPUs, several seconds
# when 24 spinning processes share the machine with it process by process.
BUSY_GOOD = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3:\n    pass\n" + GOOD


@cgroups_only
def test_spinning_children_cannot_starve_batch_neighbours():
    programs = [Program(SPINNERS, TESTS), Program(SPINNERS + "# 2\n", TESTS)]
    programs += [Program(BUSY_GOOD, TESTS), Program(BUSY_GOOD + "# 2\n", TESTS)]
    results = run_programs(programs, limits=LIMITS, max_workers=4)
    assert [r.reason for r in results] == ["timeout", "timeout", "passed", "passed"], [
        r.feedback for r in results
    ]
    for spinner in results[:2]:  # the whole tree counted, and held to one CPU
        assert spinner.cpu_s is not None
        assert spinner.cpu_s <= spinner.duration_s * sandbox._CPUS_PER_RUN + 0.5
    assert psutil.Process().children(recursive=True) == []


# --------------------------------------------------------------------------------------------- 8. zombies

ZOMBIE_SCRIPT = r"""
import ctypes, json, os, sys, time
sys.path.insert(0, sys.argv[1])
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us, as to a container's pid 1
import psutil
from mtgrpo.registry import _load_rewards_package
sandbox = _load_rewards_package().sandbox
program = "import os, time\nif os.fork() == 0:\n    time.sleep(100)\ndef add(a, b):\n    while True:\n        pass"
result = sandbox.run_program(program, ["assert add(1, 2) == 3"], timeout_s=1.0)
# Timeouts that fall anywhere in the launcher's start-up and forks.
for timeout in (0.02, 0.05, 0.1, 0.2):
    batch = [sandbox.Program(f"# {i} {timeout}\n" + program, ("assert add(1, 2) == 3",)) for i in range(8)]
    sandbox.run_programs(batch, limits=sandbox.SandboxLimits(timeout_s=timeout))
time.sleep(0.5)
children = [(p.pid, p.status()) for p in psutil.Process().children()]
print(json.dumps({"reason": result.reason, "children": children}))
"""


def test_a_timed_out_run_leaves_no_zombie_for_pid_1(mode):
    out = subprocess.run(
        [sys.executable, "-c", ZOMBIE_SCRIPT, str(REPO)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["reason"] == "timeout"
    assert report["children"] == []


# ------------------------------------------------------------------------------ 9. the isolation probe


@pytest.fixture
def probe(monkeypatch):
    """isolation_mode() with a scripted probe: yields the list of reasons the fake probe runs return."""
    outcomes, calls = [], []

    def fake_run(program, limits, mode):
        calls.append(limits.timeout_s)
        reason = outcomes.pop(0) if outcomes else "passed"
        return sandbox.ExecutionResult(reason, int(reason == "passed"), 1, f"probe says {reason}")

    monkeypatch.setattr(sandbox, "_run", fake_run)
    monkeypatch.setattr(sandbox.time, "sleep", lambda s: None)
    monkeypatch.delenv("MTGRPO_SANDBOX_ISOLATION", raising=False)
    sandbox.isolation_mode.cache_clear()
    yield outcomes, calls
    sandbox.isolation_mode.cache_clear()


def test_probe_retries_a_transient_failure(probe, caplog):
    outcomes, calls = probe
    outcomes += ["timeout", "timeout"]
    with caplog.at_level("INFO", logger=sandbox.__name__):
        assert sandbox.isolation_mode() == "namespaces"
    assert len(calls) == 3 and calls[1] > calls[0]  # retried, with more time
    assert "probe says timeout" in caplog.text


def test_probe_falls_back_with_the_reason_logged(probe, caplog):
    outcomes, calls = probe
    outcomes += ["killed"] * 3
    with caplog.at_level("WARNING", logger=sandbox.__name__):
        assert sandbox.isolation_mode() == "rlimits"
    assert len(calls) == 3 and "probe says killed" in caplog.text


def test_probe_failure_is_an_error_when_namespaces_are_required(probe, monkeypatch):
    outcomes, _ = probe
    outcomes += ["killed"] * 3
    monkeypatch.setenv("MTGRPO_SANDBOX_ISOLATION", "namespaces")
    with pytest.raises(RuntimeError, match="probe says killed"):
        sandbox.isolation_mode()
