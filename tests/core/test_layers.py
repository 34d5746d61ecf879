"""The package layout is the map (docs/architecture.md): every import, including the lazy ones inside functions,
goes from a higher layer to a lower one or within one layer, and nothing imports an entry point."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mtgrpo"
# Lower number = lower layer. A module not listed inherits its subpackage's layer.
LAYERS = {
    # the core's leaves: recipes, turns, credit, models, reward lookup, what a run logs
    "mtgrpo.recipe": 0,
    "mtgrpo.config": 0,
    "mtgrpo.chat": 0,
    "mtgrpo.advantages": 0,
    "mtgrpo.turn_kl": 0,
    "mtgrpo.score_stages": 0,
    "mtgrpo.transcripts": 0,
    "mtgrpo.models": 0,
    "mtgrpo.registry": 0,
    "mtgrpo.metrics": 0,
    "mtgrpo.history": 0,
    "mtgrpo.rewards": 0,
    "mtgrpo.tasks": 1,
    "mtgrpo.feedback": 1,
    "mtgrpo.episodes": 2,
    "mtgrpo.trainer": 3,
    "mtgrpo.evaluation": 4,
    "mtgrpo.launch": 4,
}
ENTRY_POINTS = {"mtgrpo.cli", "mtgrpo.train", "mtgrpo.demo", "mtgrpo.evaluation.cli", "mtgrpo.launch.cli"}
FACADE = "mtgrpo"  # the public API (`from mtgrpo import MultiTurnGRPOTrainer`), above every layer but the entry points


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    if module in ENTRY_POINTS:
        return 99
    if module == FACADE:
        return 98
    name = module
    while name not in LAYERS:
        name = name.rpartition(".")[0]
        assert name != FACADE, f"{module} has no layer: add it (or its subpackage) to LAYERS and docs/architecture.md"
    return LAYERS[name]


def _imports(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mtgrpo")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mtgrpo"):
                found.add(target)
                # `from . import config` imports a module, not a name
                found |= {f"{target}.{a.name}" for a in node.names if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(".py").exists()}
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_go_down_the_layers(path):
    module = _module_name(path)
    wrong = []
    for target in sorted(_imports(path, module)):
        if target in ENTRY_POINTS and module != target:
            wrong.append(f"{target} (an entry point)")
        elif target != FACADE and module not in ENTRY_POINTS and _layer(target) > _layer(module):
            wrong.append(f"{target} (layer {_layer(target)} > {_layer(module)})")
    assert not wrong, f"{module} imports upward: {', '.join(wrong)}"


def test_old_module_paths_still_import_and_warn():
    import importlib
    import sys
    import warnings

    import mtgrpo

    for old, new in mtgrpo.MOVED_MODULES.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert importlib.import_module(old) is importlib.import_module(new)
        assert any(f"{old} moved to {new}" in str(w.message) for w in caught), old
