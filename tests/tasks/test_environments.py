"""A TRL environment_factory class runs unchanged as an mtgrpo tool episode: one instance per episode, reset(**row)
opens the episode, public methods are the tools (state carried across calls), get_reward() scores the episode."""

from __future__ import annotations

import sys
import textwrap

import pytest
from scripted import ScriptedGenerate

from mtgrpo.chat import ChatTurns
from mtgrpo.episodes.base import run_episodes

COUNTER = '''
class Counter:
    """A stateful environment in TRL's convention: the policy adds to a counter until it reaches the target."""

    def reset(self, target=None, **row):
        self.total, self.target, self.calls = 0, int(target), 0
        return f"Reach {self.target} by calling add."

    def add(self, amount: int) -> str:
        """Add to the counter.

        Args:
            amount: How much to add.
        """
        self.calls += 1
        self.total += int(amount)
        return f"total = {self.total}"

    def get_reward(self) -> float:
        return 1.0 if self.total == self.target else 0.0


class NoReset:
    def add(self, amount: int) -> str:
        """Add.

        Args:
            amount: How much.
        """
        return "x"


class Untyped:
    def reset(self, **row):
        return None

    def add(self, amount):
        """Add."""
        return "x"
'''


@pytest.fixture
def envs(tmp_path, monkeypatch):
    (tmp_path / "my_envs.py").write_text(textwrap.dedent(COUNTER))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("my_envs", None)


def _episode(tmp_path, path, **kw):
    from mtgrpo import MTGRPOConfig
    from mtgrpo.episodes import build_episode

    args = MTGRPOConfig(output_dir=str(tmp_path), episode="tool", environment_factory=path, max_tool_calls=2,
                        use_cpu=True, bf16=False, **kw)
    return build_episode(args)


def test_an_environment_runs_with_state_across_calls_and_scores_the_episode(envs, tmp_path, tokenizer):
    episode = _episode(tmp_path, "my_envs:Counter")
    assert list(episode.tools) == ["add"]
    chat = ChatTurns(tokenizer)
    prompts = chat.prompt_ids([[{"role": "user", "content": "Count."}]] * 2)
    call = '<tool>{"name": "add", "args": {"amount": 2}}</tool>'
    gen = ScriptedGenerate(tokenizer, [[call, call], [call, "done"], ["done"]])
    rows = [{"target": 4, "answer": "4"}, {"target": 4, "answer": "4"}]
    rollouts = run_episodes(episode, prompts, gen, chat, 2, rows=rows)
    assert gen.calls[0][1] == 1  # each copy has its own environment: its own first context
    assert "Reach 4 by calling add." in tokenizer.decode(gen.calls[0][2][0])  # reset()'s text opens the episode
    twice, once = rollouts
    assert [seg.text for seg in twice.turns("tool")] == ["total = 2", "total = 4"]  # state carried across calls
    assert [seg.text for seg in once.turns("tool")] == ["total = 2"]  # one instance per episode
    assert episode.reward_kwargs(rollouts)["environment_reward"] == [1.0, 0.0]
    # mtgrpo's per-turn credit: the calling turn is pre_tool, the turns after a result post_tool.
    assert [seg.credit for seg in twice.turns("solver")] == ["pre_tool", "post_tool", "post_tool"]


def test_environment_reward_reaches_reward_functions(envs):
    from mtgrpo.rewards import environment_reward

    assert environment_reward(["a", "b"], environment_reward=[1.0, None]) == [1.0, None]
    with pytest.raises(ValueError, match="set environment_factory"):
        environment_reward(["a"])


@pytest.mark.parametrize(
    "path, message",
    [
        ("my_envs:NoReset", "has no reset"),
        ("my_envs:Untyped", "without type hints: amount"),
        ("my_envs:Missing", "has no 'Missing'"),
        ("json:loads", "not a class"),
    ],
)
def test_bad_environments_are_clear_errors_at_start(envs, tmp_path, path, message):
    with pytest.raises(ValueError, match=message):
        _episode(tmp_path, path)


def test_tools_and_environment_are_exclusive(tmp_path):
    with pytest.raises(ValueError, match="either tools .* or environment_factory"):
        _episode(tmp_path, "my_envs:Counter", tools=["calculator"])
