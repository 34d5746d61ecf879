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


def get_reward_func(name: str) -> Callable:
    """The reward function registered as ``name``, or the one at dotted path ``pkg.module.func`` / ``pkg.module:func``."""
    reward_funcs = _load_rewards_package().REWARD_FUNCS
    if name in reward_funcs:
        return reward_funcs[name]
    if "." in name or ":" in name:
        module_name, _, attr = name.rpartition(":") if ":" in name else name.rpartition(".")
        module = importlib.import_module(module_name)
        if not hasattr(module, attr):
            raise ValueError(f"Reward {name!r}: module {module_name!r} has no attribute {attr!r}.")
        return getattr(module, attr)
    raise ValueError(
        f"Unknown reward {name!r}. Known rewards: {', '.join(sorted(reward_funcs))}. "
        "Use one of these names or a dotted path to your own function, e.g. my_pkg.my_module.my_reward."
    )


def get_reward_funcs(names: list[str]) -> list[Callable]:
    """``get_reward_func`` for each name, in order."""
    return [get_reward_func(name) for name in names]
