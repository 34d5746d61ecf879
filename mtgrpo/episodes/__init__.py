"""Episode protocols: what the next turn's prompt is, who writes it, when the episode ends."""

from .base import Rollout, Segment, TurnSpec, run_episodes
from .refine import RefineEpisode

__all__ = ["Rollout", "Segment", "TurnSpec", "run_episodes", "RefineEpisode", "build_episode"]


def build_episode(args):
    """The episode protocol named by `args.episode` (an MTGRPOConfig)."""
    factories = {"refine": RefineEpisode.from_config}
    return factories[args.episode](args)
