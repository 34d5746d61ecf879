"""mtgrpo: multi-turn GRPO (solve -> feedback -> refine, tool use, self-correction) on top of TRL."""

__version__ = "0.1.0"
__all__ = ["MTGRPOConfig", "ScriptArguments", "MultiTurnGRPOTrainer"]


def __getattr__(name):
    # Lazy so that light entry points (launcher, doctor, SageMaker submission) do not import torch and TRL.
    if name in ("MTGRPOConfig", "ScriptArguments"):
        from . import config

        return getattr(config, name)
    if name == "MultiTurnGRPOTrainer":
        from .trainer import MultiTurnGRPOTrainer

        return MultiTurnGRPOTrainer
    raise AttributeError(f"module 'mtgrpo' has no attribute {name!r}")
