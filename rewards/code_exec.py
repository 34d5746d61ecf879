"""Code rewards: run the completion's program against the task's hidden tests in the sandbox (rewards/sandbox.py).

>>> code_tests_passed(["```python\\ndef add(a, b):\\n    return a + b\\n```"], tests=[["assert add(1, 2) == 3"]])
[1.0]

  code_tests_passed      share of the tests that pass, in [0, 1]
  code_all_tests_passed  1.0 only when every test passes (the all-or-nothing switch: name it in the recipe)

Dataset columns (mbpp and humaneval schemas, mtgrpo/code_data.py):
  tests          list[str]: hidden tests, each a snippet (usually one assert) run after the program; they score
  visible_tests  list[str]: the tests the prompt shows; run these, never `tests`, for feedback a model reads
  setup_code     str (optional): run before the program in its namespace (imports the prompt or tests rely on)
  entry_point    str (optional): the function the tests call; only for transcripts and prompts

Both rewards log code/pass_rate (share of programs passing every test), code/timeout_rate,
code/syntax_error_rate and code/verified_outside_rate (share of tests whose verdict the trainer computed itself,
rewards/verdict.py) through TRL's ``log_metric``, and each completion's failure reason and how its tests were
judged as the ``code_reason`` and ``code_judged`` columns of the completions table through ``log_extra`` (when
the trainer provides them). Two code rewards over the
same batch execute each program once (the sandbox caches results).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ._text import completion_text
from .sandbox import ExecutionResult, Program, SandboxLimits, run_programs

_FENCE = "```"
_PYTHON_TAGS = {"python", "py", "python3"}
# The opening fence's language tag. Disjoint character classes: matching cannot backtrack.
_TAG = re.compile(r"[ \t]*([A-Za-z0-9_+-]*)")


def _block_spans(text: str) -> list[tuple[str, int, int]]:
    """(tag, start, end) of each fenced block's body: ```python / ```py / bare ```, closed by ``` or cut off
    by the end of the text.

    A single left-to-right scan with ``str.find`` (linear in the text: a completion is untrusted input, and a
    backtracking regex took 24 s on 131k spaces after a fence). Same blocks as the regex
    ``` ```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z) ``` with DOTALL.
    """
    spans, pos, find, tag = [], 0, text.find, _TAG.match
    while (start := find(_FENCE, pos)) != -1:
        newline = find("\n", start + 3)
        if newline == -1:
            break  # an opening fence needs its line's end; no later fence can have one either
        close = find(_FENCE, newline + 1)
        end = len(text) if close == -1 else close
        spans.append(
            ("" if newline == start + 3 else tag(text, start + 3, newline).group(1), newline + 1, end)
        )
        if close == -1:
            break
        pos = close + 3
    return spans


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(tag, body) of each fenced block of ``text``, in order (see ``_block_spans``)."""
    return [(tag, text[start:end]) for tag, start, end in _block_spans(text)]


def extract_program(text: str) -> str:
    """The program in a completion: the last ```python block, else the last fenced block, else the text itself.

    The last block, because models write the solution and then refine or restate it (and the refine turn's
    corrected program is the last one). A block cut off by the length limit is taken up to the end of the text.
    Returns "" when there is nothing but whitespace.
    """
    if not isinstance(text, str):
        return ""
    spans = _block_spans(text)
    python = [span for span in spans if span[0].lower() in _PYTHON_TAGS]
    if python or spans:
        _, start, end = (python or spans)[-1]
        return text[start:end].strip("\n")
    return text.strip("\n") if text.strip() else ""


def code_metrics(results: Sequence[ExecutionResult]) -> dict[str, float]:
    """code/pass_rate, code/timeout_rate, code/syntax_error_rate over a batch of results, and
    code/verified_outside_rate: the share of the tests that ran whose verdict the trainer computed itself (a
    drop means the policy meets tests it could subvert from inside; rewards/verdict.py)."""
    n = len(results) or 1
    ran = [r for r in results if r.test_judged]
    tests = sum(len(r.test_judged) for r in ran)
    return {
        "code/pass_rate": sum(r.reason == "passed" for r in results) / n,
        "code/timeout_rate": sum(r.reason == "timeout" for r in results) / n,
        "code/syntax_error_rate": sum(r.reason == "syntax_error" for r in results) / n,
        "code/verified_outside_rate": sum(r.verified_outside for r in ran) / tests if tests else 0.0,
    }


def judged_column(result: ExecutionResult) -> str:
    """How the result's tests were judged, for the completions table: "outside 3/3", "outside 2/3, inside 1"."""
    if not result.test_judged:
        return "not run"
    outside, total = result.verified_outside, len(result.test_judged)
    return f"outside {outside}/{total}" + (f", inside {total - outside}" if outside < total else "")


def execute_completions(
    completions: Sequence,
    tests: Sequence[Sequence[str]],
    setup_code: Sequence[str | None] | None = None,
    *,
    limits: SandboxLimits | None = None,
    max_workers: int | None = None,
    require_tests: bool = True,
) -> list[ExecutionResult]:
    """Extract each completion's program and run it against its row's tests (completions with no code are not run).

    For a feedback turn pass the rows' ``visible_tests`` and ``require_tests=False``: a task with no visible test
    still shows its syntax and runtime errors. Rewards keep ``require_tests``: a row without tests is a data bug.
    """
    setup_code = setup_code if setup_code is not None else [""] * len(completions)
    programs = [extract_program(completion_text(c)) for c in completions]
    rows = list(zip(programs, tests, setup_code, strict=True))
    for i, (_, row_tests, _) in enumerate(rows):
        if require_tests and not row_tests:
            raise ValueError(
                f"Row {i} has no tests: code rewards need a non-empty `tests` column (dataset_schema mbpp or "
                "humaneval, or a list of assert strings per row)."
            )
    to_run = [Program(code, tuple(t), s or "") for code, t, s in rows if code]
    ran = iter(run_programs(to_run, limits=limits, max_workers=max_workers))
    return [
        next(ran)
        if code
        else ExecutionResult("no_code", 0, len(t), "No code found in the response.", (False,) * len(t))
        for code, t, _ in rows
    ]


def make_code_reward(
    name: str,
    *,
    all_or_nothing: bool = False,
    limits: SandboxLimits | None = None,
    max_workers: int | None = None,
) -> Callable:
    """A reward named ``name``: the share of tests passed, or 1.0/0.0 with ``all_or_nothing``."""

    def reward(completions, tests, setup_code=None, log_metric=None, log_extra=None, **kwargs) -> list[float]:
        results = execute_completions(completions, tests, setup_code, limits=limits, max_workers=max_workers)
        if log_metric is not None:
            for metric, value in code_metrics(results).items():
                log_metric(metric, value)
        if log_extra is not None:
            log_extra("code_reason", [r.reason for r in results])
            log_extra("code_judged", [judged_column(r) for r in results])
        return [float(r.all_passed) if all_or_nothing else r.fraction for r in results]

    reward.__name__ = reward.__qualname__ = name
    reward.__doc__ = (
        f"{'1.0 when every hidden test passes, else 0.0' if all_or_nothing else 'Share of the hidden tests passed'}"
        " by the completion's program, run in the sandbox."
    )
    reward.reward_level = "outcome"
    return reward


code_tests_passed = make_code_reward("code_tests_passed")
code_all_tests_passed = make_code_reward("code_all_tests_passed", all_or_nothing=True)
