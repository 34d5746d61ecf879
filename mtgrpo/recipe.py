"""Recipes: read a recipe YAML, check its keys, parse it with CLI overrides into the three argument dataclasses.

The one recipe parser below every entry point (train, eval, demo, the node launcher, the doctor, the SageMaker
entry point). `read_recipe` imports neither torch nor TRL, so the launcher and the doctor stay light; the
dataclasses are imported only when a recipe is checked or parsed.
"""

from __future__ import annotations

import difflib
import functools
import sys
from argparse import ArgumentTypeError
from dataclasses import fields
from pathlib import Path

import yaml


def read_recipe(path: str | Path) -> dict:
    """The recipe as a plain dict (no torch/TRL import)."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(
            f"Recipe {path} is a folder. Pass one of its YAML files (recipes/<model>/<task>-<episode>.yaml)."
        )
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {path} does not exist. Pass a YAML file under recipes/.")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"Recipe {path} is not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"Recipe {path} must be a YAML mapping of field: value.")
    return recipe


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error as one line with its line numbers, and the usual fix for a tab."""
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    opened = f"{context} opened on line {start.line + 1}: " if context and start else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    fix = "indent with spaces, not tabs" if "\\t" in problem else "fix the YAML there"
    return f"{opened}{problem}{where}; {fix}."


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


def parse_recipe(argv: list[str] | None = None, command_flags: list[str] | tuple = ()):
    """(script_args, training_args, model_args) from `--config RECIPE` plus CLI overrides (TRL's TrlParser).
    `command_flags`: the calling command's own flags (`mtgrpo eval --limit`), offered for a misspelled flag."""
    from trl import TrlParser

    argv = list(sys.argv[1:] if argv is None else argv)
    # Our checks first: argparse would print its 250-line usage for one bad value and HfArgumentParser would name
    # an unknown flag without the closest valid one.
    if "-h" not in argv and "--help" not in argv:  # with --help, TrlParser lists the fields
        path = _config_path(argv)
        if path is not None:
            check_recipe(path)
        check_overrides(argv, command_flags=command_flags)
    parser = TrlParser(recipe_dataclasses())
    return parser.parse_args_and_config(args=argv)


def _config_path(argv: list[str]) -> str | None:
    """The recipe path of `--config PATH` or `--config=PATH`; None without --config."""
    for i, token in enumerate(argv):
        if token.startswith("--config="):
            return token.partition("=")[2]
        if token == "--config":
            if i + 1 == len(argv) or argv[i + 1].startswith("--"):
                raise ValueError("--config needs a recipe file: --config recipes/<model>/<task>-<episode>.yaml.")
            return argv[i + 1]
    return None


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
            recipe = f" A recipe is passed as --config {token}." if token.endswith((".yaml", ".yml")) else ""
            raise ValueError(f"Unexpected argument {token!r}: recipe overrides are --field value pairs.{recipe}")
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
    recipe = check_recipe_keys(path)
    flags = _field_flags()
    for key, value in recipe.items():
        action = flags.get(f"--{key}")
        if action is not None and _value_problem(action, value):
            raise ValueError(
                f"Recipe {path}: {key}: {value!r} is not {_expected(action)} (recipe field `{key}`). Fix the value."
            )
    check_overrides(overrides, launcher_flags, flags)
    return recipe


@functools.cache  # one TrlParser for every check of a command, not one per recipe and per flag list
def _field_flags() -> dict:
    """Every spelling TrlParser takes for a recipe field (--max_steps, --max-steps, --no_log_on_each_node) -> its
    argparse action; `--field` itself maps to the action that stores the value."""
    from trl import TrlParser

    flags = {}
    for action in TrlParser(recipe_dataclasses())._actions:
        for flag in action.option_strings if action.dest != "help" else ():
            flags.setdefault(flag, action)
    return flags


def check_overrides(overrides: list[str] | tuple, launcher_flags: list[str] | tuple = (), flags: dict | None = None,
                    command_flags: list[str] | tuple = ()):
    """`--field value` overrides: an unknown flag with the closest valid one, a value of the wrong type."""
    flags = flags or _field_flags()
    for name, value in _override_pairs(list(overrides)):
        if name == "config":
            continue
        action = flags.get(f"--{name}")
        if action is None:
            names = sorted({*launcher_flags, *command_flags, *(f"--{a.dest}" for a in flags.values())})
            close = difflib.get_close_matches(f"--{name}", names, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            if launcher_flags:
                raise ValueError(
                    f"Unknown flag --{name}: not a launcher option and not a recipe field.{hint} Launcher options are "
                    "spelled with dashes (--num-nodes); recipe overrides with the field name (--learning_rate 1.0e-06)."
                )
            raise ValueError(f"Unknown flag --{name}: not a recipe field.{hint} The fields are listed by --help.")
        if value is None and (action.nargs in (0, "?") or getattr(action.type, "__name__", "") == "string_to_bool"):
            continue  # a bare flag: --bf16, --no_log_on_each_node
        if value is None and action.nargs == "+":
            raise ValueError(f"--{name}: needs one or more values, e.g. --{name} A B (recipe field `{action.dest}`).")
        if value is None or _value_problem(action, value):
            shown = f"--{name} {value if value is not None else ''}".rstrip()
            raise ValueError(f"{shown}: needs {_expected(action)} (recipe field `{action.dest}`).")
