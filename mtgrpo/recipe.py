"""Recipes: read a recipe YAML, check its keys, parse it with CLI overrides into the three argument dataclasses.

The one recipe parser below every entry point (train, eval, demo, the node launcher, the doctor, the SageMaker
entry point). `read_recipe` imports neither torch nor TRL, so the launcher and the doctor stay light; the
dataclasses are imported only when a recipe is checked or parsed.
"""

from __future__ import annotations

import difflib
import sys
from argparse import ArgumentTypeError
from dataclasses import fields
from pathlib import Path

import yaml


def read_recipe(path: str | Path) -> dict:
    """The recipe as a plain dict (no torch/TRL import)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {path} does not exist. Pass a YAML file under recipes/.")
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"Recipe {path} must be a YAML mapping of field: value.")
    return recipe


def recipe_dataclasses():
    """The dataclasses a recipe fills: (ScriptArguments, MTGRPOConfig, trl.ModelConfig)."""
    from trl import ModelConfig

    from .config import MTGRPOConfig, ScriptArguments

    return (ScriptArguments, MTGRPOConfig, ModelConfig)


def check_recipe_keys(path: str | Path) -> dict:
    """Load a recipe and reject keys no dataclass knows, suggesting the closest field name."""
    recipe = read_recipe(path)
    known = {f.name for cls in recipe_dataclasses() for f in fields(cls)} | {"env"}
    for key in recipe:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Unknown recipe key {key!r} in {path}.{hint} Fix the spelling or remove it; valid keys are the "
                "fields of mtgrpo.ScriptArguments, mtgrpo.MTGRPOConfig and trl.ModelConfig."
            )
    return recipe


def parse_recipe(argv: list[str] | None = None):
    """(script_args, training_args, model_args) from `--config RECIPE` plus CLI overrides (TRL's TrlParser)."""
    from trl import TrlParser

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        check_recipe_keys(argv[argv.index("--config") + 1])
    parser = TrlParser(recipe_dataclasses())
    return parser.parse_args_and_config(args=argv)


def _expected(action) -> str:
    if action.choices:
        return f"one of {[str(c) for c in action.choices]}"
    kind = action.type
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number (write floats with a dot and an exponent sign, e.g. 1.0e-06)"
    if getattr(kind, "__name__", "") == "string_to_bool":
        return "true or false"
    return f"a {getattr(kind, '__name__', kind)}"


def _value_problem(action, value) -> bool:
    """Whether `value` (from YAML, or a CLI string) cannot fill the field behind `action`."""
    if value is None:
        return False
    many = action.nargs in ("+", "*")
    if many and not isinstance(value, list | str):
        return True
    for item in value if many and isinstance(value, list) else [value]:
        kind = action.type
        if isinstance(item, str) and kind is not None:
            try:
                item = kind(item)
            except (ValueError, TypeError, ArgumentTypeError):
                return True
        elif kind is int and (isinstance(item, bool) or not isinstance(item, int)):
            return True
        elif kind is float and (isinstance(item, bool) or not isinstance(item, int | float)):
            return True
        elif getattr(kind, "__name__", "") == "string_to_bool" and not isinstance(item, bool):
            return True
        if action.choices and str(item) not in {str(c) for c in action.choices}:
            return True
    return False


def _override_pairs(overrides: list[str]) -> list[tuple[str, object]]:
    """`--name value`, `--name=value`, `--name v1 v2` (a list) and a bare `--flag` as (name, value) pairs."""
    pairs, i = [], 0
    while i < len(overrides):
        token = overrides[i]
        if not token.startswith("--"):
            raise ValueError(f"Unexpected argument {token!r}: recipe overrides are --field value pairs.")
        name, eq, value = token[2:].partition("=")
        i += 1
        if eq:
            pairs.append((name, value))
            continue
        values = []
        while i < len(overrides) and not overrides[i].startswith("--"):
            values.append(overrides[i])
            i += 1
        pairs.append((name, values[0] if len(values) == 1 else (values or None)))
    return pairs


def check_recipe(path: str | Path, overrides: list[str] | tuple = (), launcher_flags: list[str] | tuple = ()) -> dict:
    """The whole recipe with its CLI overrides, checked without building anything (no device is touched): unknown
    keys and flags with the closest valid name (a launcher's own flags included), and each value's type. What a
    launcher calls before it starts a server or submits a job; returns the recipe."""
    from trl import TrlParser

    recipe = check_recipe_keys(path)
    actions = {}
    for action in TrlParser(recipe_dataclasses())._actions:
        if action.option_strings == [f"--{action.dest}"] or action.dest not in actions:
            actions.setdefault(action.dest, action)
    for key, value in recipe.items():
        if key in actions and _value_problem(actions[key], value):
            raise ValueError(
                f"Recipe {path}: {key}: {value!r} is not {_expected(actions[key])} (recipe field `{key}`). Fix the value."
            )
    for name, value in _override_pairs(list(overrides)):
        if name == "config":
            continue
        if name not in actions:
            flags = sorted({*launcher_flags, *(f"--{dest}" for dest in actions if dest != "help")})
            close = difflib.get_close_matches(f"--{name}", flags, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise ValueError(
                f"Unknown flag --{name}: not a launcher option and not a recipe field.{hint} Launcher options are "
                "spelled with dashes (--num-nodes); recipe overrides with the field name (--learning_rate 1.0e-06)."
            )
        action = actions[name]
        if value is None and getattr(action.type, "__name__", "") == "string_to_bool":
            continue  # a bare boolean flag: --bf16
        if value is None or _value_problem(action, value):
            raise ValueError(f"--{name} {value if value is not None else ''}: needs {_expected(action)} (recipe field `{name}`).")
    return recipe
