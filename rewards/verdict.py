"""Judge tests in the trainer, not in the sandboxed interpreter: the program never sees the expected values.

>>> plan = plan_test("assert add(1, 2) == 3")
>>> plan.judged, plan.inside_source
('outside', '__check__(add(1, 2))')
>>> judge(plan, [3]).passed
True

A test whose every assert has one of the common shapes

    assert CALL == EXPECTED        (also !=, <, <=, >, >=, in, not in, is None/True/False, either side)
    assert CALL / assert not CALL
    assert abs(CALL - X) < EPS     (any safe arithmetic or builtin around CALL: set(), sorted(), round(), len() ...)
    assert math.isclose(CALL, X, rel_tol=..., abs_tol=...)

(HumanEval's ``check(candidate)`` asserts included, after ``mtgrpo.code_data.split_humaneval_check``) is sent
into the sandbox with each assert replaced by ``__check__(CALL)``: the sandbox evaluates only CALL and reports its
value as plain data (builtin types, size-capped, see ``decode``). The trainer then evaluates the rest of the
assert (the wrappers, the expected value, the comparison) with its own builtins and ``==`` on that data. The
program can no longer pass by returning an object whose ``__eq__`` is always true, by shadowing ``set`` or
``abs``, by patching the harness, or by reading the expected value from the test's source or code objects: it
is not in the sandbox. It has to compute the value.

Other tests (asserts in loops, expected values computed by test helpers, ...) run inside as before; the plan
says ``judged == "inside"`` and the result reports it per test (docs/code_sandbox.md).
"""

from __future__ import annotations

import ast
import builtins
import functools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

REPORT = "__check__"  # the name the harness binds, per test, to its value reporter
MAX_DEPTH = 64  # nesting of one reported value (the harness refuses deeper values)
MAX_NODES = 20_000  # containers and scalars in one reported value
MAX_INT_DIGITS = 4_000  # below Python's own int/str conversion limit (4300)

# Pure builtins the trainer applies itself: around the program's value (peeled off the call sent inside) and in
# the expected side. Nothing here runs code of the program: the values are plain builtin data.
_SAFE_FUNCS = {
    name: getattr(builtins, name)
    for name in (
        "abs", "all", "any", "bool", "float", "int", "len", "list", "max", "min", "round", "sorted", "str", "sum",
        "tuple",
    )
}  # fmt: skip
_MAX_SAME_HASH = 8  # equal hashes among a set's members or a dict's keys (honest data: practically never 2)
_MATH_FUNCS = {
    n: getattr(math, n) for n in ("isclose", "fabs", "floor", "ceil", "sqrt", "trunc", "isnan", "isinf")
}
_MATH_CONSTS = {n: getattr(math, n) for n in ("pi", "e", "inf", "nan", "tau")}
_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
_SINGLETONS = (None, True, False)
_JUDGING = (
    ast.Compare, ast.BoolOp, ast.IfExp, ast.Lambda, ast.NamedExpr,
    ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
)  # fmt: skip
_MAX_SIZE = 1_000_000  # elements a trainer-side sequence product or power may produce


def _check_hashes(items) -> list:
    """``items`` as a list, refused when many share a hash: a set or dict of colliding keys (``k * (2**61 - 1)``
    for ints) costs quadratic time to build, seconds of the trainer's CPU, holding the GIL."""
    items = list(items)
    counts: dict[int, int] = {}
    for item in items:
        h = hash(item)
        counts[h] = counts.get(h, 0) + 1
        if counts[h] > _MAX_SAME_HASH:
            raise BadValue("too many members with equal hashes")
    return items


def _safe_set(*args):
    return set(_check_hashes(*args)) if args else set()


def _safe_frozenset(*args):
    return frozenset(_check_hashes(*args)) if args else frozenset()


def _safe_dict(*args, **kwargs):
    pairs = list(args[0].items() if args and isinstance(args[0], dict) else args[0]) if args else []
    _check_hashes(k for k, _ in pairs)
    return dict(pairs, **kwargs)


_SAFE_FUNCS.update(set=_safe_set, frozenset=_safe_frozenset, dict=_safe_dict)


class Unverifiable(Exception):
    """A test shape the trainer cannot judge itself (it then runs inside the sandbox)."""


@dataclass(frozen=True)
class TestPlan:
    """How one test runs: entirely inside the sandbox, or its calls inside and its verdict in the trainer."""

    judged: str  # "outside" or "inside"
    inside_source: (
        str  # what the sandbox gets: the test itself, or its statements with asserts -> __check__(CALL)
    )
    checks: tuple = ()  # outside: per assert, the ast.Expression the trainer evaluates (placeholder ``__value__``)
    assert_sources: tuple[str, ...] = ()  # outside: each assert as written (for feedback)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    failed_assert: str = ""  # the first assert that failed
    got: str = ""  # repr of the value its call returned (short)
    error: str = ""  # e.g. "TypeError: '<' not supported ..." when the trainer's own evaluation raised


# ----------------------------------------------------------------------------------------------------- plan


@functools.lru_cache(maxsize=16384)
def plan_test(test: str, setup_code: str = "") -> TestPlan:
    """The plan for one test snippet; ``setup_code`` matters only for the names it (re)defines."""
    try:
        return _plan(test, setup_code)
    except Exception:  # an odd test the planner does not foresee runs inside, as before
        return TestPlan("inside", test)


def _plan(test: str, setup_code: str) -> TestPlan:
    inside = TestPlan("inside", test)
    try:
        tree = ast.parse(test)
        shadowed = _assigned_names(tree) | (_assigned_names(ast.parse(setup_code)) if setup_code else set())
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return inside
    top_asserts = [n for n in tree.body if isinstance(n, ast.Assert)]
    all_asserts = [n for n in ast.walk(tree) if isinstance(n, ast.Assert)]
    if not top_asserts or len(top_asserts) != len(all_asserts):
        return inside  # no assert, or asserts inside loops/conditions/functions: their data runs inside
    if any(REPORT in _names(n) for n in tree.body):
        return inside
    checks, sources, body = [], [], []
    for node in tree.body:
        if not isinstance(node, ast.Assert):
            body.append(node)
            continue
        try:
            check, calls = _split_assert(node.test, shadowed)
        except (Unverifiable, RecursionError):
            return inside
        checks.append(check)
        sources.append(ast.get_source_segment(test, node) or ast.unparse(node))
        # A constant assert (`assert True, "..."`) sends nothing: the trainer evaluates it alone.
        report = ast.Expr(ast.Call(ast.Name(REPORT, ast.Load()), calls, [])) if calls else ast.Pass()
        body.append(ast.copy_location(report, node))
    module = ast.fix_missing_locations(ast.Module(body, []))
    return TestPlan("outside", ast.unparse(module), tuple(checks), tuple(sources))


def plan_tests(tests: Sequence[str], setup_code: str = "") -> list[TestPlan]:
    return [plan_test(t, setup_code or "") for t in tests]


def _assigned_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _split_assert(test: ast.expr, shadowed: set[str]) -> tuple[ast.Expression, list[ast.expr]]:
    """(what the trainer evaluates, with ``__value__`` for the value; the one expression sent inside)."""
    is_const = functools.partial(_is_const, shadowed=shadowed)
    if isinstance(test, ast.Compare):
        operands = [test.left, *test.comparators]
        derived = [i for i, o in enumerate(operands) if not is_const(o)]
        if len(derived) != 1:
            raise Unverifiable("a comparison needs exactly one side that is not a constant")
        for op, left, right in zip(test.ops, operands[:-1], operands[1:], strict=True):
            if isinstance(op, ast.Is | ast.IsNot):
                other = left if is_const(left) else right
                if not (isinstance(other, ast.Constant) and other.value in _SINGLETONS):
                    raise Unverifiable("`is` compares identity: only with None, True or False")
        i = derived[0]
        skeleton, call = _peel(operands[i], shadowed)
        operands[i] = skeleton
        return _expression(ast.Compare(operands[0], test.ops, operands[1:])), [call]
    if (
        isinstance(test, ast.Call)
        and _func_name(test.func, shadowed) == "math.isclose"
        and all(is_const(k.value) for k in test.keywords)
    ):
        derived = [i for i, a in enumerate(test.args) if not is_const(a)]
        if len(derived) != 1 or len(test.args) != 2:
            raise Unverifiable("isclose needs one constant and one computed argument")
        args = list(test.args)
        args[derived[0]], call = _peel(args[derived[0]], shadowed)
        return _expression(ast.Call(test.func, args, test.keywords)), [call]
    if is_const(test):
        return _expression(test), []  # e.g. `assert False`: nothing to compute inside
    skeleton, call = _peel(test, shadowed)  # truthiness: `assert CALL`, `assert not CALL`, `assert len(CALL)`
    return _expression(skeleton), [call]


def _expression(node: ast.expr) -> ast.Expression:
    return ast.fix_missing_locations(ast.Expression(node))


def _peel(node: ast.expr, shadowed: set[str]) -> tuple[ast.expr, ast.expr]:
    """Strip safe wrappers (``set(...)``, ``abs(... - X)``, ``round(..., 2)``, ``not ...``, ``...[0]``) that hold
    exactly one computed operand; the innermost computed part is what runs inside."""
    is_const = functools.partial(_is_const, shadowed=shadowed)
    placeholder = ast.Name("__value__", ast.Load())
    if isinstance(node, ast.Call) and _func_name(node.func, shadowed) and not _is_isclose(node, shadowed):
        if all(is_const(k.value) for k in node.keywords) and not any(
            isinstance(a, ast.Starred) for a in node.args
        ):
            computed = [i for i, a in enumerate(node.args) if not is_const(a)]
            if len(computed) == 1:
                args = list(node.args)
                args[computed[0]], call = _peel(args[computed[0]], shadowed)
                return ast.Call(node.func, args, node.keywords), call
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        if is_const(node.right):
            inner, call = _peel(node.left, shadowed)
            return ast.BinOp(inner, node.op, node.right), call
        if is_const(node.left):
            inner, call = _peel(node.right, shadowed)
            return ast.BinOp(node.left, node.op, inner), call
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        inner, call = _peel(node.operand, shadowed)
        return ast.UnaryOp(node.op, inner), call
    elif isinstance(node, ast.Subscript) and is_const(node.slice):
        inner, call = _peel(node.value, shadowed)
        return ast.Subscript(inner, node.slice, ast.Load()), call
    if is_const(node):
        raise Unverifiable("nothing computed")
    if not any(isinstance(n, ast.Call) for n in ast.walk(node)) and not isinstance(node, ast.Name):
        raise Unverifiable("the computed side calls nothing")
    if any(isinstance(n, _JUDGING) for n in ast.walk(node)):
        # A comparison sent inside would be judged by the program's own __eq__ (and carry the expected value).
        raise Unverifiable("the computed side compares or branches")
    return placeholder, node


def _is_isclose(node: ast.Call, shadowed) -> bool:
    return _func_name(node.func, shadowed) == "math.isclose"


def _func_name(func: ast.expr, shadowed: set[str]) -> str:
    """The trainer-side function a call names ("sorted", "math.isclose"), or "" when it is not one of ours."""
    if isinstance(func, ast.Name) and func.id in _SAFE_FUNCS and func.id not in shadowed:
        return func.id
    if (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id == "math"
        and func.attr in _MATH_FUNCS
    ):
        return f"math.{func.attr}"
    return ""


def _is_const(node: ast.expr, shadowed: set[str]) -> bool:
    """True when the trainer can evaluate ``node`` on its own: literals, safe builtins and math on literals."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return all(_is_const(e, shadowed) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is not None and _is_const(k, shadowed) for k in node.keys) and all(
            _is_const(v, shadowed) for v in node.values
        )
    if isinstance(node, ast.UnaryOp):
        return type(node.op) in _UNARY and _is_const(node.operand, shadowed)
    if isinstance(node, ast.BinOp):
        return type(node.op) in _BINOPS and _is_const(node.left, shadowed) and _is_const(node.right, shadowed)
    if isinstance(node, ast.Call):
        return (
            bool(_func_name(node.func, shadowed))
            and all(_is_const(a, shadowed) and not isinstance(a, ast.Starred) for a in node.args)
            and all(k.arg is not None and _is_const(k.value, shadowed) for k in node.keywords)
        )
    if isinstance(node, ast.Attribute):
        return isinstance(node.value, ast.Name) and node.value.id == "math" and node.attr in _MATH_CONSTS
    if isinstance(node, ast.Subscript):
        return _is_const(node.value, shadowed) and _is_const(node.slice, shadowed)
    if isinstance(node, ast.Slice):
        return all(p is None or _is_const(p, shadowed) for p in (node.lower, node.upper, node.step))
    return False


# ---------------------------------------------------------------------------------------------------- judge


def judge(plan: TestPlan, values: Sequence) -> Verdict:
    """Evaluate each assert of an outside plan on the decoded ``values`` (one per assert, in order)."""
    value_iter = iter(values)
    for check, source in zip(plan.checks, plan.assert_sources, strict=True):
        env = {}
        if _uses_value(check):
            env["__value__"] = next(value_iter)
        try:
            ok = bool(_eval(check.body, env))
        except Exception as exc:  # the program's value did not fit the assert (e.g. sorted() of mixed types)
            return Verdict(
                False, source, _short_repr(env.get("__value__")), f"{type(exc).__name__}: {exc}"[:300]
            )
        if not ok:
            return Verdict(False, source, _short_repr(env.get("__value__")) if env else "")
    return Verdict(True)


def n_values(plan: TestPlan) -> int:
    return sum(_uses_value(c) for c in plan.checks)


def _uses_value(check: ast.Expression) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "__value__" for n in ast.walk(check))


def _short_repr(value, limit: int = 300) -> str:
    try:
        text = repr(value)
    except Exception:  # e.g. an int past the conversion limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _eval(node: ast.expr, env: dict):
    """A small evaluator for the node kinds ``_is_const`` and ``_peel`` accept; nothing else can reach it."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.Tuple):
        return tuple(_eval(e, env) for e in node.elts)
    if isinstance(node, ast.List):
        return [_eval(e, env) for e in node.elts]
    if isinstance(node, ast.Set):
        return {_eval(e, env) for e in node.elts}
    if isinstance(node, ast.Dict):
        return {_eval(k, env): _eval(v, env) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, env))
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, env), _eval(node.right, env)
        _check_size(type(node.op), left, right)
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _eval(comparator, env)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Call):
        name = _func_name(node.func, set())
        func = _MATH_FUNCS[name[5:]] if name.startswith("math.") else _SAFE_FUNCS[name]
        args = [_eval(a, env) for a in node.args]
        kwargs = {k.arg: _eval(k.value, env) for k in node.keywords}
        return func(*args, **kwargs)
    if isinstance(node, ast.Attribute):
        return _MATH_CONSTS[node.attr]
    if isinstance(node, ast.Subscript):
        return _eval(node.value, env)[_eval(node.slice, env)]
    if isinstance(node, ast.Slice):
        return slice(*(None if p is None else _eval(p, env) for p in (node.lower, node.upper, node.step)))
    raise Unverifiable(type(node).__name__)


def _check_size(op, left, right) -> None:
    # The trainer must not build a gigantic object from a reported value ("x" * 10**12, 10 ** 10**9).
    if op is ast.Pow and isinstance(left, int | float) and isinstance(right, int):
        size = abs(left).bit_length() if isinstance(left, int) else 64
        if abs(right) > 10_000 or size * abs(right) > 1_000_000:
            raise OverflowError("power too large to evaluate in the trainer")
    if op is ast.Mult:
        for seq, n in ((left, right), (right, left)):
            if (
                isinstance(seq, str | bytes | list | tuple)
                and isinstance(n, int)
                and len(seq) * n > _MAX_SIZE
            ):
                raise OverflowError("product too large to evaluate in the trainer")


# ----------------------------------------------------------------------------------------------- plain data


class BadValue(ValueError):
    """A reported value that is not what the harness's encoder writes (a forged or corrupted record)."""


def decode(data, depth: int = 0, budget: list | None = None):
    """The value the harness encoded (``_sandbox_child._plain``), as builtin Python data; ``BadValue`` otherwise.

    JSON types map to themselves (arrays are lists); other builtins are one-key objects: ``{"t": [...]}`` tuple,
    ``{"s": [...]}`` set, ``{"fs": [...]}`` frozenset, ``{"d": [[k, v], ...]}`` dict, ``{"b": hex}`` bytes,
    ``{"c": [re, im]}`` complex. Depth and node count are bounded, so nothing here can exhaust the trainer.
    """
    budget = [MAX_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise BadValue("value too large or too deeply nested")
    if data is None or isinstance(data, bool | float | str):
        return data
    if isinstance(data, int):
        if data.bit_length() > MAX_INT_DIGITS * 4:
            raise BadValue("integer too large")
        return data
    if isinstance(data, list):
        return [decode(x, depth + 1, budget) for x in data]
    if not (isinstance(data, dict) and len(data) == 1):
        raise BadValue(f"not an encoded value: {type(data).__name__}")
    ((tag, body),) = data.items()
    try:
        if tag in ("t", "s", "fs") and isinstance(body, list):
            items = [decode(x, depth + 1, budget) for x in body]
            if tag == "t":
                return tuple(items)
            return (set if tag == "s" else frozenset)(_check_hashes(items))
        if tag == "d" and isinstance(body, list):
            pairs = []
            for pair in body:
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise BadValue("dict items must be [key, value] pairs")
                pairs.append((decode(pair[0], depth + 1, budget), decode(pair[1], depth + 1, budget)))
            _check_hashes(k for k, _ in pairs)
            return dict(pairs)
        if tag == "b" and isinstance(body, str):
            return bytes.fromhex(body)
        if tag == "c" and isinstance(body, list) and len(body) == 2:
            if all(isinstance(x, float | int) and not isinstance(x, bool) for x in body):
                return complex(*body)
    except TypeError as exc:  # unhashable members: the encoder never writes them
        raise BadValue(str(exc)) from None
    except ValueError as exc:
        raise BadValue(str(exc)) from None
    raise BadValue(f"unknown value tag {str(tag)[:20]!r}")
