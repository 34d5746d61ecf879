"""mtgrpo: multi-turn GRPO (solve -> feedback -> refine, tool use, self-correction) on top of TRL."""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"
__all__ = ["MTGRPOConfig", "ScriptArguments", "MultiTurnGRPOTrainer"]

# Module paths before the one-package-per-concern layout (0.1.0), kept importable for one release: importing an
# old path warns and returns the module at its new path (the same object, so patches and private names work).
MOVED_MODULES = {
    "mtgrpo.recipe_file": "mtgrpo.recipe",
    "mtgrpo.feedback_model": "mtgrpo.feedback.model",
    "mtgrpo.feedback_training": "mtgrpo.feedback.training",
    "mtgrpo.feedback_weights": "mtgrpo.feedback.weights",
    "mtgrpo.data": "mtgrpo.tasks.data",
    "mtgrpo.code_data": "mtgrpo.tasks.code",
    "mtgrpo.search": "mtgrpo.tasks.search",
    "mtgrpo.tools": "mtgrpo.tasks.tools",
    "mtgrpo.evaluate": "mtgrpo.evaluation.evaluate",
    "mtgrpo.eval_backends": "mtgrpo.evaluation.backends",
    "mtgrpo.eval_cli": "mtgrpo.evaluation.cli",
    "mtgrpo.plot": "mtgrpo.evaluation.plot",
    "mtgrpo.launcher": "mtgrpo.launch.cli",
    "mtgrpo.doctor": "mtgrpo.launch.doctor",
    "mtgrpo.checkpoints": "mtgrpo.launch.checkpoints",
    "mtgrpo.signals": "mtgrpo.launch.signals",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED_MODULES[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; the old path will be removed in the next release.",
            DeprecationWarning,
            stacklevel=3,
        )
        return importlib.import_module(new)

    def exec_module(self, module):
        pass  # already executed under its new name

    def get_code(self, fullname):  # `python -m mtgrpo.launcher` (old layout) runs the module at its new path
        warnings.warn(f"python -m {fullname}: use python -m {MOVED_MODULES[fullname]}", DeprecationWarning, stacklevel=2)
        new = MOVED_MODULES[fullname]
        return importlib.util.find_spec(new).loader.get_code(new)


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())  # before path finders: a stale old file must not win


def __getattr__(name):
    # Lazy so that light entry points (launcher, doctor, SageMaker submission) do not import torch and TRL.
    if name in ("MTGRPOConfig", "ScriptArguments"):
        from . import config

        return getattr(config, name)
    if name == "MultiTurnGRPOTrainer":
        from .trainer import MultiTurnGRPOTrainer

        return MultiTurnGRPOTrainer
    if f"{__name__}.{name}" in MOVED_MODULES:  # `from mtgrpo import eval_cli` (old layout)
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'mtgrpo' has no attribute {name!r}")
