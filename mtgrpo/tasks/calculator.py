"""The `calculator` tool: exact arithmetic on an expression string, never `eval`.

    calculator("47 * 83")          -> "3901"
    calculator("1/3 + 1/6")        -> "1/2"
    calculator("2 ** 0.5")         -> error: fractional powers are not exact

A small walk over Python's `ast`: only numbers, `+ - * / // % **`, unary `+ -` and parentheses. Integers of any
size, decimals and fractions are exact (`fractions.Fraction`), so "0.1 + 0.2" is 0.3. Exponents and results are
bounded so that a policy cannot make one call take the trainer's memory or minutes ("9 ** 9 ** 9"). We walk the
tree ourselves rather than use simpleeval (floats for `/`, and its size limits cover `**` only) or asteval (a whole
interpreter: statements, loops, function definitions — far more surface than a calculator needs).

A malformed expression raises `ValueError` with a message the policy can read; `mtgrpo.tasks.tools.call_tool`
turns it into an "Error: ..." result and counts it.
"""

from __future__ import annotations

import ast
import operator
from fractions import Fraction

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 1000
MAX_RESULT_DIGITS = 1000  # numerator or denominator
MAX_DEPTH = 50

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: None,  # bounded below
}
_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: Numbers (integers, decimals such as 2.5, fractions written with /) combined with
            + - * / // % ** and parentheses, for example "47 * 83" or "(12 + 30) / 4".

    Returns:
        The exact value: an integer, or a fraction such as 7/2 with its decimal value when it has one.
    """
    if not isinstance(expression, str):
        raise ValueError("the expression must be a string such as \"47 * 83\".")
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("^", "**")
    if not text:
        raise ValueError("the expression is empty.")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters.")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot parse {expression!r}: use numbers, + - * / // % ** and parentheses.") from None
    return _format(_evaluate(tree.body, 0))


def _evaluate(node: ast.AST, depth: int) -> Fraction:
    if depth > MAX_DEPTH:
        raise ValueError(f"the expression is nested more than {MAX_DEPTH} levels deep.")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        if isinstance(node.value, float):
            if node.value != node.value or node.value in (float("inf"), float("-inf")):
                raise ValueError("the number is too large.")
            # float literals come from decimal text ("2.5"): read them back exactly from that text
            return Fraction(str(node.value))
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _evaluate(node.operand, depth + 1)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, depth + 1), _evaluate(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
            raise ValueError("division by zero.")
        return _bounded(Fraction(_BINARY[type(node.op)](left, right)))
    if isinstance(node, ast.Name):
        raise ValueError(f"unknown name {node.id!r}: the calculator takes numbers and + - * / // % ** only.")
    if isinstance(node, ast.BinOp):
        raise ValueError("unsupported operator: use + - * / // % ** and parentheses.")
    raise ValueError("unsupported expression: use numbers, + - * / // % ** and parentheses.")


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise ValueError("fractional powers are not exact; use an integer exponent.")
    if abs(exponent) > MAX_EXPONENT:
        raise ValueError(f"the exponent {exponent} is larger than {MAX_EXPONENT}.")
    if base == 0 and exponent < 0:
        raise ValueError("division by zero (0 to a negative power).")
    # Estimate the size before computing it: 10**(digits * exponent) must stay within the result bound.
    digits = max(len(str(abs(base.numerator))), len(str(base.denominator)))
    if (digits - 1) * abs(exponent) > MAX_RESULT_DIGITS:
        raise ValueError(f"the result would have more than {MAX_RESULT_DIGITS} digits.")
    return _bounded(base ** int(exponent))


def _bounded(value: Fraction) -> Fraction:
    # Python 3.11 limits int -> str conversion to 4300 digits anyway; compare bit lengths, which is cheap.
    limit_bits = int(MAX_RESULT_DIGITS * 3.33) + 4
    if value.numerator.bit_length() > limit_bits or value.denominator.bit_length() > limit_bits:
        raise ValueError(f"the result has more than {MAX_RESULT_DIGITS} digits.")
    return value


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{value.numerator}/{value.denominator}"
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    if denominator == 1:  # a terminating decimal: show it too ("7/2 = 3.5")
        scale = 0
        while (value * 10**scale).denominator != 1:
            scale += 1
        scaled = abs(value.numerator * 10**scale // value.denominator)
        digits = str(scaled).rjust(scale + 1, "0")
        sign = "-" if value < 0 else ""
        text += f" = {sign}{digits[:-scale]}.{digits[-scale:]}"
    return text
