"""Tools from the recipe (`tools:`): the calculator's exact, bounded arithmetic; built-ins and import paths resolved
with clear errors; a tool that raises, hangs or returns non-text is an Error: result the policy reads."""

from __future__ import annotations

import sys
import textwrap

import pytest

from mtgrpo.tasks.calculator import calculator
from mtgrpo.tasks.toolbox import resolve_tools
from mtgrpo.tasks.tools import call_tool


@pytest.mark.parametrize(
    "expression, value",
    [
        ("47 * 83", "3901"),
        ("(12 + 30) / 4", "21/2 = 10.5"),
        ("1/3 + 1/6", "1/2 = 0.5"),
        ("1/3", "1/3"),
        ("0.1 + 0.2", "3/10 = 0.3"),
        ("2 ** 100", str(2**100)),
        ("123456789123456789 * 987654321987654321", str(123456789123456789 * 987654321987654321)),
        ("-7 // 2", "-4"),
        ("-7 % 3", "2"),
        ("2 ** -2", "1/4 = 0.25"),
        ("6 × 7", "42"),
        ("-(3 - 10)", "7"),
    ],
)
def test_calculator_is_exact(expression, value):
    assert calculator(expression) == value


@pytest.mark.parametrize(
    "expression, message",
    [
        ("9 ** 9 ** 9", "exponent"),
        ("10 ** 999 * 10 ** 999 * 10 ** 999", "digits"),
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("x + 1", "unknown name"),
        ("__import__('os').system('true')", "unsupported"),
        ("2 ** 0.5", "fractional powers"),
        ("1e999", "too large"),
        ("-" * 60 + "1", "nested"),
        ("-" * 498 + "1", "nested"),
        ("(" * 300 + "1" + ")" * 300, "longer than"),
        ("1 +", "cannot parse"),
        ("", "empty"),
        ("1 if 1 else 2", "unsupported"),
        ("True + 1", "unsupported"),
    ],
)
def test_calculator_refuses_with_a_readable_message(expression, message):
    with pytest.raises(ValueError, match=message):
        calculator(expression)


def test_calculator_errors_reach_the_policy_as_counted_error_results():
    tools = resolve_tools(["calculator"])
    result = call_tool(tools, "calculator", {"expression": "1 / 0"}, timeout=5.0)
    assert not result.ok and result.error == "exception"
    assert result.content.startswith("Error: calculator failed: ValueError: division by zero")
    assert call_tool(tools, "calculator", {"expression": "47 * 83"}, timeout=5.0).content == "3901"


def test_python_tool_runs_in_the_sandbox_and_returns_its_output():
    tools = resolve_tools(["python"])
    assert call_tool(tools, "python", {"code": "print(47 * 83)"}, timeout=30.0).content == "3901"
    failed = call_tool(tools, "python", {"code": "raise ValueError('boom')"}, timeout=30.0).content
    assert "ValueError: boom" in failed


@pytest.fixture
def user_tools(tmp_path, monkeypatch):
    (tmp_path / "my_tools.py").write_text(textwrap.dedent('''
        import time

        def lookup(word: str) -> str:
            """Look a word up.

            Args:
                word: The word.
            """
            return word.upper()

        def untyped(word):
            """No hints."""
            return word

        def undocumented(word: str) -> str:
            return word

        def raises(word: str) -> str:
            """Always fails.

            Args:
                word: The word.
            """
            raise RuntimeError("broken tool")

        def hangs(word: str) -> str:
            """Never returns in time.

            Args:
                word: The word.
            """
            time.sleep(5)
            return word

        def not_text(word: str) -> dict:
            """Returns a dict.

            Args:
                word: The word.
            """
            return {"word": word}

        def nothing(word: str) -> str:
            """Returns nothing.

            Args:
                word: The word.
            """
            return None

        NOT_CALLABLE = 3
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("my_tools", None)


def test_import_path_tools_resolve_next_to_built_ins(user_tools):
    tools = resolve_tools(["calculator", "my_tools:lookup"])
    assert sorted(tools) == ["calculator", "lookup"]
    assert call_tool(tools, "lookup", {"word": "nile"}, timeout=5.0).content == "NILE"


@pytest.mark.parametrize(
    "names, message",
    [
        (["calculater"], "unknown tool 'calculater'. Did you mean 'calculator'"),
        (["no_such_module:fn"], "cannot import 'no_such_module'"),
        (["my_tools:missing"], "has no 'missing'"),
        (["my_tools:NOT_CALLABLE"], "is a int, not a function"),
        (["my_tools:untyped"], "without type hints: word"),
        (["my_tools:undocumented"], "has no docstring"),
        (["my_tools:lookup", "my_tools:lookup"], "two tools are called 'lookup'"),
        ([], "tools: is empty"),
    ],
)
def test_bad_tools_are_clear_errors_at_start(user_tools, names, message):
    with pytest.raises(ValueError, match=message):
        resolve_tools(names)


@pytest.mark.parametrize(
    "name, kind, text",
    [("raises", "exception", "broken tool"), ("hangs", "timeout", "did not finish"), ("nothing", "empty", "nothing")],
)
def test_a_failing_tool_is_an_error_result(user_tools, name, kind, text):
    tools = resolve_tools([f"my_tools:{name}"])
    result = call_tool(tools, name, {"word": "x"}, timeout=0.5)
    assert result.error == kind and result.content.startswith("Error:") and text in result.content


def test_non_text_results_are_shown_as_text(user_tools):
    tools = resolve_tools(["my_tools:not_text"])
    assert call_tool(tools, "not_text", {"word": "x"}, timeout=5.0).content == "{'word': 'x'}"


def test_recipe_tools_reach_the_tool_episode(tmp_path):
    from mtgrpo import MTGRPOConfig
    from mtgrpo.episodes import build_episode

    args = MTGRPOConfig(output_dir=str(tmp_path), episode="tool", tools=["calculator"], use_cpu=True, bf16=False)
    assert list(build_episode(args).tools) == ["calculator"]
    default = MTGRPOConfig(output_dir=str(tmp_path), episode="tool", use_cpu=True, bf16=False)
    assert list(build_episode(default).tools) == ["wiki_search"]  # recipes without `tools:` are unchanged
    with pytest.raises(ValueError, match="tool_call_prefix .* cannot be used with tool_protocol: native"):
        MTGRPOConfig(output_dir=str(tmp_path), episode="tool", tool_protocol="native", tool_call_prefix="<tool>",
                     use_cpu=True, bf16=False)
