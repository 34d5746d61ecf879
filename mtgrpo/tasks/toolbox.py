"""Tools named in a recipe (`tools:`), in TRL's convention: plain Python functions with type hints and a docstring.

    tools: [calculator]                          # built-ins: wiki_search, calculator, python
    tools: [calculator, my_pkg.tools:lookup]     # or any importable function, as `package.module:function`

A tool's JSON schema (what `tool_protocol: native` renders into the prompt) comes from transformers'
`get_json_schema`, exactly as for `GRPOTrainer(tools=[...])`, so a function written for TRL works here unchanged.
Everything is checked when the trainer is built: an unknown name, an import that fails, something that is not a
function, or a function without type hints or docstring is one clear error naming it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from .calculator import calculator

BUILTIN_TOOLS = ("wiki_search", "calculator", "python")
PYTHON_TOOL_OUTPUT_CHARS = 1000


def python(code: str) -> str:
    """Run a Python snippet in the code sandbox and return what it printed.

    Args:
        code: A short Python program; use print() to show results, for example "print(47 * 83)".

    Returns:
        The tail of the program's standard output, then of its error output if it failed.
    """
    from ..rewards.sandbox import run_program

    result = run_program(code, [], timeout_s=5.0)
    output = result.stdout_tail.strip()
    if result.reason not in ("passed",):
        detail = result.stderr_tail.strip() or result.feedback
        output = f"{output}\n{detail}".strip()
    return output[-PYTHON_TOOL_OUTPUT_CHARS:] or "(no output: print the values you want to see)"


def resolve_tools(names, build_wiki_search: Callable[[], Callable] | None = None) -> dict[str, Callable]:
    """{name the policy calls: function} for a recipe's `tools:` list.

    `build_wiki_search` builds the search tool from the recipe's search settings; it is only called when
    `wiki_search` is listed, so a calculator recipe never loads a search index.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("tools: is empty. List at least one tool: a built-in (" + ", ".join(BUILTIN_TOOLS)
                         + ") or an import path package.module:function.")
    tools: dict[str, Callable] = {}
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"tools: {name!r} is not a tool name. Use a built-in ({', '.join(BUILTIN_TOOLS)}) "
                             "or an import path package.module:function.")
        func = _builtin(name, build_wiki_search) if ":" not in name else import_object(name, "tools")
        check_tool(func, name)
        if func.__name__ in tools:
            raise ValueError(f"tools: two tools are called {func.__name__!r}; the policy could not tell them apart.")
        tools[func.__name__] = func
    return tools


def _builtin(name: str, build_wiki_search) -> Callable:
    if name == "calculator":
        return calculator
    if name == "python":
        return python
    if name == "wiki_search":
        if build_wiki_search is None:
            raise ValueError("tools: wiki_search needs the recipe's search settings (search_backend, search_corpus).")
        return build_wiki_search()
    import difflib

    close = difflib.get_close_matches(name, BUILTIN_TOOLS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"tools: unknown tool {name!r}.{hint} Built-ins: {', '.join(BUILTIN_TOOLS)}; your own tools are named by "
        "import path, package.module:function."
    )


def import_object(path: str, field_name: str):
    """`package.module:attribute` -> the attribute, or a ValueError naming the recipe field and what failed."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{field_name}: {path!r} is not an import path; write package.module:name.")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any import failure (missing module, error inside it) is the user's to fix
        raise ValueError(f"{field_name}: cannot import {module_name!r} for {path!r}: {type(err).__name__}: {err}. "
                         "Check the module path and that its package is installed.") from err
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"{field_name}: module {module_name!r} has no {attribute!r} ({path!r}).") from None


def check_tool(func, name: str) -> None:
    """The conditions TRL's tool use puts on a tool, checked up front with the recipe's name for it."""
    if not inspect.isfunction(func) and not inspect.ismethod(func):
        raise ValueError(f"tools: {name!r} is a {type(func).__name__}, not a function. A tool is a plain "
                         "function with type hints and a docstring.")
    if not (func.__doc__ or "").strip():
        raise ValueError(f"tools: {name!r} has no docstring. Describe what it does and its arguments (Google style, "
                         "with an Args: section): the policy and the chat template read it.")
    parameters = inspect.signature(func).parameters.values()
    untyped = [p.name for p in parameters if p.annotation is inspect.Parameter.empty]
    if untyped:
        raise ValueError(f"tools: {name!r} has arguments without type hints: {', '.join(untyped)}. Annotate them "
                         "(e.g. query: str); the tool's JSON schema is built from them.")
