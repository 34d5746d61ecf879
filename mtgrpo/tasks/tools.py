"""Run a policy's tool call safely: every failure becomes an error result the policy reads, never an exception.

    result = call_tool({"wiki_search": wiki_search}, "wiki_search", {"query": "Nile"}, timeout=10.0)
    result.ok, result.content, result.error    # True, "Nile\\nThe Nile is ...", None

Failure kinds (ToolResult.error, counted per episode): "malformed" (the call is not a JSON object with a name),
"unknown_tool", "bad_arguments" (the arguments do not fit the tool's signature), "exception" (the tool raised),
"timeout" (it ran longer than `timeout` seconds) and "empty" (it returned nothing). Error contents start with
"Error:", as in MT-GRPO, so the policy can tell them from results.
"""

from __future__ import annotations

import inspect
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

ERROR_KINDS = ("malformed", "unknown_tool", "bad_arguments", "exception", "timeout", "empty")


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one tool call.

    name: the tool that was called (None when the call could not be parsed).
    content: what the policy is shown: the tool's output, or a message starting with "Error:".
    error: one of ERROR_KINDS, or None for a successful call.
    """

    name: str | None
    content: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_json_call(payload: str) -> tuple[str, dict] | ToolResult:
    """`{"name": ..., "args": {...}}` (the text protocol) -> (name, args), or a "malformed" error result."""
    try:
        command = json.loads(payload)
    except json.JSONDecodeError as err:
        return ToolResult(None, f"Error: the tool call is not valid JSON ({err.msg}).", "malformed")
    if not isinstance(command, dict) or not isinstance(command.get("name"), str):
        return ToolResult(
            None, 'Error: a tool call must be a JSON object {"name": ..., "args": {...}}.', "malformed"
        )
    args = command.get("args", {})
    if not isinstance(args, dict):
        return ToolResult(
            command["name"], 'Error: the tool call\'s "args" must be a JSON object.', "bad_arguments"
        )
    return command["name"], args


def call_tool(tools: dict[str, Callable], name: str, args: dict, timeout: float) -> ToolResult:
    """Run `tools[name](**args)` with a time limit; failures come back as error results."""
    if name not in tools:
        known = ", ".join(sorted(tools))
        return ToolResult(name, f"Error: unknown tool '{name}'. Available tools: {known}.", "unknown_tool")
    func = tools[name]
    signature = inspect.signature(func)
    try:
        signature.bind(**args)
    except TypeError as err:
        return ToolResult(name, f"Error: wrong arguments for {name}{signature}: {err}.", "bad_arguments")

    outcome: dict = {}

    def run():
        try:
            outcome["value"] = func(**args)
        except Exception as err:  # any failure of the tool is reported to the policy, never raised
            outcome["error"] = err

    # A daemon thread per call, not a pool: Python cannot stop a thread, so a call that never returns is left
    # behind, and only a daemon thread neither blocks the next call nor keeps the process alive at exit. Threads
    # (not processes) because the tools' state (a BM25 index, a JVM) lives in this process.
    worker = threading.Thread(target=run, name=f"tool-{name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return ToolResult(name, f"Error: {name} did not finish within {timeout:g} s.", "timeout")
    if "error" in outcome:
        err = outcome["error"]
        return ToolResult(name, f"Error: {name} failed: {type(err).__name__}: {err}", "exception")
    content = "" if outcome.get("value") is None else str(outcome["value"])
    if not content.strip():
        return ToolResult(name, f"Error: {name} returned nothing.", "empty")
    return ToolResult(name, content)
