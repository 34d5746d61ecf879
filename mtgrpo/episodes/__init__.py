"""Episode protocols: what the next turn's prompt is, who writes it, when the episode ends."""

from .base import Rollout, Segment, TurnSpec, run_episodes
from .mutis import MutisEpisode
from .plan import PlanEpisode
from .refine import RefineEpisode
from .self_correct import SelfCorrectEpisode
from .tool import ToolEpisode

__all__ = ["Rollout", "Segment", "TurnSpec", "run_episodes", "RefineEpisode", "ToolEpisode", "PlanEpisode", "build_episode",
           "episode_reward_columns"]


def build_episode(args, for_evaluation: bool = False):
    """The episode protocol named by `args.episode` (an MTGRPOConfig).

    `for_evaluation`: without the training aids (tool_call_prefix), so evaluation measures what the policy does by
    itself."""
    if for_evaluation and getattr(args, "tool_call_prefix", ""):
        import copy

        args = copy.copy(args)
        args.tool_call_prefix = ""
    factories = {"refine": RefineEpisode.from_config, "tool": ToolEpisode.from_config, "plan": PlanEpisode.from_config}
    factories["self_correct"] = SelfCorrectEpisode.from_config  # SCoRe (docs/self_correction.md)
    factories["mutis"] = MutisEpisode.from_config  # MuTIS interventions (docs/self_correction.md)
    return factories[args.episode](args)


def episode_reward_columns(name: str) -> tuple[str, ...]:
    """Columns episode `name` adds to what the reward functions receive (on top of the dataset's), e.g. tool calls."""
    classes = {"refine": RefineEpisode, "tool": ToolEpisode, "plan": PlanEpisode, "self_correct": SelfCorrectEpisode,
               "mutis": MutisEpisode}  # fmt: skip
    return tuple(getattr(classes[name], "reward_columns", ()))
