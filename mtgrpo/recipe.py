"""Recipes: read a recipe YAML, check its keys, parse it with CLI overrides into the three argument dataclasses.

The one recipe parser below every entry point (train, eval, demo, the node launcher, the doctor, the SageMaker
entry point). `read_recipe` imports neither torch nor TRL, so the launcher and the doctor stay light; the
dataclasses are imported only when a recipe is checked or parsed.
"""

from __future__ import annotations

import difflib
import sys
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
