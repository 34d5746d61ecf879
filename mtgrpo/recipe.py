"""Read a recipe YAML as a plain dict (no torch/TRL import), for the launcher, doctor and the key check."""

from __future__ import annotations

from pathlib import Path

import yaml


def read_recipe(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {path} does not exist. Pass a YAML file under recipes/.")
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"Recipe {path} must be a YAML mapping of field: value.")
    return recipe
