"""Episode protocols: what the next turn's prompt is, who writes it, when the episode ends."""

from .base import Rollout, Segment, TurnSpec, run_episodes
from .refine import RefineEpisode
from .tool import ToolEpisode

__all__ = ["Rollout", "Segment", "TurnSpec", "run_episodes", "RefineEpisode", "ToolEpisode", "build_episode"]


def build_episode(args):
    """The episode protocol named by `args.episode` (an MTGRPOConfig)."""
    factories = {"refine": RefineEpisode.from_config, "tool": ToolEpisode.from_config}
    return factories[args.episode](args)
