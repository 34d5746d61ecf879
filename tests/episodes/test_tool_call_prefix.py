"""tool_call_prefix: the opening of a call written for the policy (a way in for a model that never calls a tool),
given to a share of each group's episodes, masked or trained with its turn's credit, never used in evaluation."""

from __future__ import annotations

from scripted import ScriptedGenerate

from mtgrpo.chat import ChatTurns
from mtgrpo.episodes import build_episode
from mtgrpo.episodes.base import run_episodes
from mtgrpo.episodes.tool import ToolEpisode
from mtgrpo.tasks.toolbox import resolve_tools

PREFIX = '<tool>{"name": "calculator", "args": {"expression": "'


def _run(tokenizer, rate, trained, first_turns, answers, n=4):
    episode = ToolEpisode(tools=resolve_tools(["calculator"]), call_prefix=PREFIX, call_prefix_rate=rate,
                          call_prefix_trained=trained)
    chat = ChatTurns(tokenizer)
    prompts = chat.prompt_ids([[{"role": "user", "content": "What is 47 * 83?"}]] * n)
    gen = ScriptedGenerate(tokenizer, [first_turns, answers])
    return episode, run_episodes(episode, prompts, gen, chat, n), gen


def test_half_of_each_group_gets_the_prefix_and_the_call_starts_in_it(tokenizer):
    firsts = ["It is 3900.", '47 * 83"}}</tool>', "It is 3900.", '47 * 83"}}</tool>']
    episode, rollouts, gen = _run(tokenizer, 0.5, False, firsts, ["The answer is 3901."] * 2)
    assert not episode.shared_first_context  # copies of one prompt start from different contexts
    assert gen.calls[0][1] == 1
    prefixed = [r.segments[0].role == "prefix" for r in rollouts]
    assert prefixed == [False, True, False, True]  # every other episode: half of each group
    for rollout in rollouts[1::2]:
        assert rollout.state["tool_successes"] == 1
        assert rollout.turns("tool")[0].text == "3901"  # the call read across prefix and policy text
        assert not rollout.segments[0].trained and rollout.segments[0].credit is None  # masked by default
    assert all(r.state["tool_calls"] == 0 for r in rollouts[::2])
    assert episode.metrics(rollouts)["tools/calls_without_prefix"] == [0.0, 0.0]


def test_a_trained_prefix_gets_its_turn_credit(tokenizer):
    _, rollouts, _ = _run(tokenizer, 1.0, True, ['47 * 83"}}</tool>', "no call"], ["3901"], n=2)
    called, not_called = rollouts
    assert (called.segments[0].role, called.segments[0].trained, called.segments[0].credit) == ("prefix", True, "pre_tool")
    # A prefix the policy did not turn into a call shares its turn's no_tool credit.
    assert (not_called.segments[0].trained, not_called.segments[0].credit) == (True, "no_tool")
    assert called.tool_mask()[: len(called.segments[0].ids)] == [1] * len(called.segments[0].ids)


def test_evaluation_never_gets_the_prefix(tmp_path):
    from mtgrpo import MTGRPOConfig

    args = MTGRPOConfig(output_dir=str(tmp_path), episode="tool", tools=["calculator"], tool_call_prefix=PREFIX,
                        use_cpu=True, bf16=False)
    assert build_episode(args).call_prefix == PREFIX
    assert build_episode(args, for_evaluation=True).call_prefix == ""
    assert args.tool_call_prefix == PREFIX  # the training config is left as it was
