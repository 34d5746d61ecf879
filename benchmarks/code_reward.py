"""Code reward throughput: 64 sandboxed programs scored in parallel vs one at a time.

    python benchmarks/code_reward.py [--programs 64] [--timeout 2.0] [--workers N]

The batch mixes what a GRPO step sees: programs that pass, fail an assert, raise, do not compile and loop
forever (killed at the timeout). Every program is distinct and the result cache is off, so each one really runs.
Prints programs/second for the serial run (one worker) and the parallel run (``--workers``, default: the
sandbox's own, two per usable CPU), the speed-up, and the isolation mode. Target: >= 1.8x on a 2-core machine.

Also prints what the trainer itself spends per program on the verdict it computes outside the sandbox
(rewards/verdict.py: planning each test, decoding and judging the reported values), and the time to extract the
program from a 200k-character adversarial completion (target: < 50 ms).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtgrpo.registry import _load_rewards_package  # noqa: E402

rewards = _load_rewards_package()
sandbox, verdict, code_exec = rewards.sandbox, rewards.verdict, rewards.code_exec

TESTS = ("assert solve(10) == 55", "assert solve(1) == 1", "assert solve(0) == 0")
KINDS = {
    # Passing programs do a little real work, as MBPP solutions do.
    "pass": "def solve(n):\n    total = 0\n    for i in range(n + 1):\n        total += i\n    return total  # {i}\n",
    "fail": "def solve(n):\n    return n * {i}  # wrong for most inputs\n",
    "raise": "def solve(n):\n    return [][{i}]\n",
    "syntax": "def solve(n)\n    return n  # {i}\n",
    "timeout": "def solve(n):\n    while True:\n        n += {i}\n",
}
# One cycle of 16: 11 pass, 2 fail an assert, 1 raises, 1 does not compile, 1 loops until the timeout.
MIX = ["pass"] * 5 + ["fail", "raise", "syntax"] + ["pass"] * 4 + ["fail", "timeout"] + ["pass"] * 2


def batch(n: int) -> list:
    kinds = [MIX[i % len(MIX)] for i in range(n)]
    return [sandbox.Program(KINDS[kind].format(i=i), TESTS) for i, kind in enumerate(kinds)]


def timed(programs, limits, workers):
    start = time.perf_counter()
    results = sandbox.run_programs(programs, limits=limits, max_workers=workers, cache=False)
    return time.perf_counter() - start, results


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--programs", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=2.0, help="per-program wall-clock limit (seconds)")
    parser.add_argument("--workers", type=int, default=sandbox.default_workers())
    args = parser.parse_args()

    limits = sandbox.SandboxLimits(timeout_s=args.timeout)
    programs = batch(args.programs)
    print(f"isolation: {sandbox.isolation_mode()}, {args.programs} programs, timeout {args.timeout:g} s")
    serial_s, serial = timed(programs, limits, 1)
    parallel_s, parallel = timed(programs, limits, args.workers)
    reasons = collections.Counter(r.reason for r in parallel)
    assert [r.reason for r in serial] == [r.reason for r in parallel], "serial and parallel runs disagree"
    print(f"outcomes: {dict(reasons)}")
    print(f"serial   (1 worker):  {serial_s:6.2f} s  {args.programs / serial_s:6.1f} programs/s")
    print(
        f"parallel ({args.workers} workers): {parallel_s:6.2f} s  {args.programs / parallel_s:6.1f} programs/s"
    )
    print(f"speed-up: {serial_s / parallel_s:.2f}x")
    print(f"cgroups: {sandbox.cgroup_support()[0] or 'none (' + sandbox.cgroup_support()[1] + ')'}")
    outside_cost(programs)
    extraction_cost()


def outside_cost(programs, repeats: int = 20) -> None:
    """Trainer-side cost of the outside verdict per program: plan every test (uncached, as for a new task;
    cached, as for the other completions of a prompt), decode the reported values and judge them."""
    plan = verdict.plan_test.__wrapped__
    values = [json.dumps(n) for n in (55, 1, 0)]  # what the harness reports for the passing programs
    start = time.perf_counter()
    for _ in range(repeats):
        for p in programs:
            plans = [plan(t, p.setup_code) for t in p.tests]
    uncached = (time.perf_counter() - start) / (repeats * len(programs))
    start = time.perf_counter()
    for _ in range(repeats):
        for p in programs:
            plans = verdict.plan_tests(p.tests, p.setup_code)
            for test_plan, value in zip(plans, values, strict=True):
                verdict.judge(test_plan, [verdict.decode(json.loads(value))])
    cached = (time.perf_counter() - start) / (repeats * len(programs))
    outside = sum(t.judged == "outside" for t in plans)
    print(
        f"outside verdict ({outside}/{len(plans)} tests per program): {uncached * 1e6:.0f} us per program to "
        f"plan a new task's tests, {cached * 1e6:.0f} us per program to decode and judge (plans cached)"
    )


ADVERSARIAL = {  # 200k-character completions that made a backtracking fence regex slow
    "spaces after a fence": "```" + " " * 200_000,
    "backticks": "```python\n" + "`" * 200_000,
    "empty blocks": "```\n" * 50_000,
    "tagged blocks": "```a\n" * 40_000,
    "fences, no newline": "``` a" * 40_000,
}


def extraction_cost() -> None:
    for name, text in ADVERSARIAL.items():
        wall, cpu = time.perf_counter(), time.process_time()
        code_exec.extract_program(text)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"extract_program, {name} ({len(text)} chars): {wall * 1e3:.1f} ms ({cpu * 1e3:.1f} ms CPU)")


if __name__ == "__main__":
    main()
