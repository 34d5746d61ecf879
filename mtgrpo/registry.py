"""Reward lookup: a name from ``mtgrpo.rewards.REWARD_FUNCS`` or a dotted path to your own function.

get_reward_funcs(["math_answer_correct", "my_pkg.my_module:my_reward"])
"""

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType


def _load_rewards_package() -> ModuleType:
    """Import ``mtgrpo.rewards``, falling back to the top-level ``rewards/`` folder of a plain checkout.

    The rewards live at the repository top level and only become ``mtgrpo.rewards`` through the
    package-dir mapping of ``pip install``; running from a checkout on PYTHONPATH must still work.
    """
    try:
        return importlib.import_module("mtgrpo.rewards")
    except ModuleNotFoundError as err:
        if err.name != "mtgrpo.rewards":  # a missing dependency inside the package is a real error
            raise
    rewards_dir = Path(__file__).resolve().parent.parent / "rewards"
    spec = importlib.util.spec_from_file_location(
        "mtgrpo.rewards", rewards_dir / "__init__.py", submodule_search_locations=[str(rewards_dir)]
    )
    module = importlib.util.module_from_spec(spec)
    # Registered before executing so the package's relative imports (from .math_answer ...) resolve.
    sys.modules["mtgrpo.rewards"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        # Like importlib: a half-executed module must not be found by the next import attempt.
        del sys.modules["mtgrpo.rewards"]
        raise
    sys.modules["mtgrpo"].rewards = module
    return module


def get_reward_func(name: str, field: str = "reward_funcs") -> Callable:
    """The reward function registered as ``name``, or the one at dotted path ``pkg.module.func`` / ``pkg.module:func``.
    `field`: the recipe field that named it, for the error messages."""
    reward_funcs = _load_rewards_package().REWARD_FUNCS
    if name in reward_funcs:
        return reward_funcs[name]
    if "." in name or ":" in name:
        module_name, _, attr = name.rpartition(":") if ":" in name else name.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:  # a wrong path, or a package it needs; an error in its code keeps its traceback
            raise ValueError(
                f"Reward {name!r} (recipe field `{field}`): cannot import {module_name!r}: {err}. Check the module "
                "path (importable from where you run, or installed) and that the packages it imports are installed."
            ) from None
        if not hasattr(module, attr):
            raise ValueError(
                f"Reward {name!r} (recipe field `{field}`): module {module_name!r} has no attribute {attr!r}."
            )
        return getattr(module, attr)
    raise ValueError(
        f"Unknown reward {name!r} (recipe field `{field}`). Known rewards: {', '.join(sorted(reward_funcs))}. "
        "Use one of these names or a dotted path to your own function, e.g. my_pkg.my_module.my_reward."
    )


def get_reward_funcs(names: list[str]) -> list[Callable]:
    """``get_reward_func`` for each name, in order."""
    return [get_reward_func(name) for name in names]


# What TRL passes every reward function besides the dataset's columns (GRPOTrainer._calculate_rewards).
_TRL_REWARD_ARGUMENTS = {"prompts", "completions", "completion_ids", "trainer_state", "log_metric", "log_extra",
                         "environments"}  # fmt: skip


def required_columns(func: Callable) -> list[str]:
    """The dataset columns a reward function cannot run without: its parameters without a default, other than
    the ones TRL always passes."""
    import inspect

    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # a callable whose signature cannot be read: nothing to check
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        p.name
        for p in parameters
        if p.kind in kinds and p.default is inspect.Parameter.empty and p.name not in _TRL_REWARD_ARGUMENTS
    ]


def check_reward_columns(funcs: list[Callable], columns, dataset_name: str) -> None:
    """A reward whose required column the data lacks (e.g. a code reward on arithmetic data) fails at start, naming
    the reward and the column, instead of a TypeError inside TRL after a whole generation."""
    columns = set(columns)
    for func in funcs:
        missing = [c for c in required_columns(func) if c not in columns]
        if missing:
            name = getattr(func, "__name__", repr(func))
            raise ValueError(
                f"Reward {name!r} needs the dataset column {missing[0]!r}, which dataset {dataset_name!r} does not "
                f"have (its columns: {', '.join(sorted(columns))}). Use a dataset with that column (its "
                "dataset_schema) or remove the reward from reward_funcs."
            )
