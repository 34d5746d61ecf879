"""Rewards of tool use that fit any tool: they read the episode's tool counters (mtgrpo's tool episode passes
`tool_calls` and `tool_successes` to reward functions, one value per episode)."""

from __future__ import annotations


def tool_call_success(completions, tool_calls=None, tool_successes=None, **kwargs) -> list[float]:
    """Turn level: the share of the episode's tool calls that ran without error (0 without a call).

    MT-GRPO's tool-execution reward (there scaled by 0.2); with the outcome reward it is the R_T of turn credit."""
    if tool_calls is None or tool_successes is None:
        raise ValueError(
            "tool_call_success scores tool episodes: it needs the episode columns tool_calls and tool_successes "
            "(episode: tool)."
        )
    return [s / c if c else 0.0 for c, s in zip(tool_calls, tool_successes, strict=True)]


tool_call_success.reward_level = "turn"


def environment_reward(completions, environment_reward=None, **kwargs) -> list[float | None]:
    """Outcome level: what the episode's TRL environment says of it (`get_reward()`, environment_factory)."""
    if environment_reward is None:
        raise ValueError(
            "environment_reward scores episodes of an environment_factory class with get_reward(): set "
            "environment_factory (episode: tool), or remove environment_reward from reward_funcs."
        )
    return list(environment_reward)


environment_reward.reward_level = "outcome"
