"""Checkers: feedback written by a program that checks the first answer (`feedback_source: checker`).

    feedback_checker: arithmetic                    # built-ins: arithmetic, code_tests
    feedback_checker: my_pkg.checks:units          # or any function (row: dict, attempt: str) -> str | Check

A checker carries information the first answer lacked (a recomputed calculation, a test's verdict) without reading
the gold answer: it is called with the dataset row minus its gold columns (GOLD_COLUMNS), so a checker cannot leak
the answer even by mistake. It returns the feedback text, or a `Check` with counts that are logged as
`feedback_checker/claims_checked` and `feedback_checker/claims_wrong`. A checker that raises on one row gives that
episode a plain fallback feedback, counted as `feedback_checker/errors`; training goes on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# Columns that hold (or are) the answer: never shown to a checker. `tests` are a code task's hidden tests.
GOLD_COLUMNS = ("answer", "aliases", "normalized_aliases", "tests", "solution", "canonical_solution")
BUILTIN_CHECKERS = ("arithmetic", "code_tests")
FALLBACK_FEEDBACK = "The checker could not check this answer. Review your work step by step."

_NUMBER = r"-?\d+(?:\.\d+)?"
# "47 * 83 = 321", "12 + 30 / 4 = 19.5", "6 x 7 = 42": an expression of numbers and operators, then = and a number.
_CLAIM = re.compile(rf"(?<![\w.])({_NUMBER}(?:\s*[-+*/×x÷]\s*{_NUMBER})+)\s*=\s*({_NUMBER})(?!\w|\.\d)")


@dataclass(frozen=True)
class Check:
    """A checker's verdict: the feedback text and, when the checker counts them, the claims it checked."""

    text: str
    claims_checked: int | None = None
    claims_wrong: int | None = None


def arithmetic(row: dict, attempt: str) -> Check:
    """Recompute every `a op b = c` claim of the attempt with the calculator and name the wrong ones."""
    from ..tasks.calculator import calculator

    checked, wrong = 0, []
    for match in _CLAIM.finditer(attempt):
        expression, stated = match.group(1), match.group(2)
        try:
            value = calculator(expression.replace("x", "*"))
        except ValueError:
            continue  # not a calculation the calculator can redo (e.g. division by zero): not counted
        checked += 1
        if not _same_number(value, stated):
            wrong.append(f"{expression.strip()} = {stated}")
    if not checked:
        return Check("I found no calculation written as a op b = c in your answer to check. Write out each "
                     "calculation you make, then give the final answer.", 0, 0)
    if not wrong:
        return Check(f"I recomputed the {_plural(checked, 'calculation')} in your answer and found no mistake.",
                     checked, 0)
    listed = "; ".join(wrong)
    return Check(f"I recomputed the {_plural(checked, 'calculation')} in your answer; {_plural(len(wrong), 'is')} "
                 f"wrong: {listed}. Redo {'it' if len(wrong) == 1 else 'them'} carefully and give the final answer.",
                 checked, len(wrong))


def code_tests(row: dict, attempt: str) -> Check:
    """Run the attempt's program on the task's VISIBLE tests in the sandbox and report the first failure."""
    from ..registry import _load_rewards_package
    from ..tasks.code import execution_report

    tests = row.get("visible_tests")
    execute = _load_rewards_package().code_exec.execute_completions
    (result,) = execute([attempt], [list(tests or [])], [row.get("setup_code")], require_tests=False)
    return Check(execution_report(result), result.total, result.total - result.passed)


def resolve_checker(name: str | None) -> Callable[[dict, str], Check | str]:
    """The recipe's `feedback_checker`: a built-in name or an import path package.module:function."""
    if not name:
        raise ValueError("feedback_source: checker needs feedback_checker: a built-in ("
                         + ", ".join(BUILTIN_CHECKERS) + ") or an import path package.module:function.")
    if ":" in name:
        from ..tasks.toolbox import import_object

        checker = import_object(name, "feedback_checker")
    elif name in BUILTIN_CHECKERS:
        checker = {"arithmetic": arithmetic, "code_tests": code_tests}[name]
    else:
        raise ValueError(f"feedback_checker: unknown checker {name!r}. Built-ins: {', '.join(BUILTIN_CHECKERS)}; your "
                         "own checker is named by import path, package.module:function(row, attempt) -> str.")
    if not callable(checker):
        raise ValueError(f"feedback_checker: {name!r} is a {type(checker).__name__}, not a function "
                         "(row: dict, attempt: str) -> str.")
    return checker


def run_checker(checker: Callable, row: dict | None, attempt: str) -> tuple[Check, bool]:
    """(the check, whether the checker failed): the row reaches it without its gold columns."""
    visible = {k: v for k, v in (row or {}).items() if k not in GOLD_COLUMNS}
    try:
        out = checker(visible, attempt)
    except Exception:  # a user's checker failing on one row must not stop training: fall back, count it
        return Check(FALLBACK_FEEDBACK), True
    if isinstance(out, str):
        return Check(out), False
    if isinstance(out, Check):
        return out, False
    return Check(FALLBACK_FEEDBACK), True  # neither text nor a Check: counted as an error


def _same_number(value: str, stated: str) -> bool:
    from fractions import Fraction

    exact = value.split(" = ")[-1]  # "7/2 = 3.5" -> "3.5"
    try:
        return Fraction(exact) == Fraction(stated) or Fraction(value.split(" = ")[0]) == Fraction(stated)
    except (ValueError, ZeroDivisionError):
        return False


def _plural(count: int, word: str) -> str:
    if word == "is":
        return "one is" if count == 1 else f"{count} are"
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
