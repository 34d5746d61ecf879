"""TRL environments (`environment_factory: package.module:Class`) as mtgrpo tool episodes.

TRL 1.16's convention, unchanged: the class is instantiated with no arguments, once per episode; `reset(**row)`
receives the episode's dataset row and may return text, which is shown to the policy before its first turn; every
public method (other than `reset` and `get_reward`) is a tool — a typed, documented method, like a tool function;
an optional `get_reward()` scores the episode from the environment's state. mtgrpo runs it as its tool episode, so
the turns keep mtgrpo's per-turn credit (MT-GRPO's pre_tool / post_tool advantages), and the reward reaches reward
functions as the `environment_reward` column (list `environment_reward` in `reward_funcs` to train on it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from .toolbox import check_tool, import_object

RESERVED = ("reset", "get_reward")


def load_environment(path: str) -> tuple[type, dict[str, Callable]]:
    """The class at `path`, checked as TRL's environment_factory would use it (errors name the recipe field), and
    the tools of the instance it was checked on (their schemas; each episode calls its own instance's)."""
    factory = import_object(path, "environment_factory")
    if not inspect.isclass(factory):
        raise ValueError(f"environment_factory: {path!r} is a {type(factory).__name__}, not a class with reset() and "
                         "tool methods.")
    if not callable(getattr(factory, "reset", None)):
        raise ValueError(f"environment_factory: {path!r} has no reset(**row) method; TRL's environments start each "
                         "episode with reset().")
    try:
        probe = factory()
    except Exception as err:
        raise ValueError(f"environment_factory: {path!r} cannot be created with no arguments: "
                         f"{type(err).__name__}: {err}.") from err
    tools = environment_tools(probe)
    if not tools:
        raise ValueError(f"environment_factory: {path!r} has no public methods besides reset/get_reward: it offers "
                         "the policy no tool.")
    for name, method in tools.items():
        check_tool(method, f"{path}.{name}")
    return factory, tools


def environment_tools(env) -> dict[str, Callable]:
    """{name: bound method} of the environment's tools: its public methods, as TRL takes them."""
    return {
        name: getattr(env, name)
        for name, member in inspect.getmembers(type(env), inspect.isfunction)
        if not name.startswith("_") and name not in RESERVED
    }


def reset_environment(env, row: dict | None) -> str | None:
    """Call reset(**row) the way TRL does; its text (if any) opens the episode."""
    text = env.reset(**(row or {}))
    return None if text is None else str(text)


def environment_reward(env) -> float | None:
    """get_reward() of the episode's environment (sync or async), None when the class has none."""
    get_reward = getattr(env, "get_reward", None)
    if get_reward is None:
        return None
    value = get_reward()
    if inspect.isawaitable(value):
        import asyncio

        value = asyncio.run(value)
    return None if value is None else float(value)
