"""Answer; when a turn ends without a final answer, an intervention asks for one (MuTIS, EMNLP 2025).

    mtgrpo train --config recipes/qwen2.5-1.5b-instruct/gsm8k-mutis.yaml

Turn 1: the policy answers. If the turn states no final answer, the recipe's `intervention_text` is injected (masked)
and the policy goes on in a new turn, up to `max_turns` turns in all (MuTIS: up to 3 turns plus a final one, 4). An
episode whose last turn still has no answer ends there and is scored as it is. Each turn is cut to its
`turn_max_tokens` cap after generation (the backend's max_completion_length still bounds every call).

What counts as a final answer follows the recipe's correctness reward: for the TriviaQA rewards (which read
`<answer>...</answer>`) that tag with some text in it; for the math rewards an explicitly stated answer — a
`\\boxed{}`, an "answer is N" / "Answer: N" phrase (what `format_reward` accepts), or an `<answer>` tag. The last
number alone does not count: `math_answer_correct` falls back to it, but that is a guess, not an answer.

Credit (MuTIS): the final outcome on every trained turn — the first ("solve") and each turn after an intervention
("retry") get the group-normalised R(final).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..advantages import group_normalize
from .base import Rollout, Segment, TurnSpec

ANSWER_FORMATS = ("explicit", "tag")
_ANSWER_TAG = re.compile(r"<answer>\s*\S.*?</answer>", re.DOTALL)


@dataclass
class MutisEpisode:
    intervention_text: str
    max_turns: int = 4
    turn_max_tokens: list[int] | None = None
    answer_format: str = "explicit"  # "tag": only <answer>...</answer> counts (TriviaQA rewards)

    @classmethod
    def from_config(cls, args) -> MutisEpisode:
        tag = args.correctness_reward.startswith("triviaqa")  # the TriviaQA rewards read only <answer> tags
        return cls(
            intervention_text=args.intervention_text,
            max_turns=args.max_turns,
            turn_max_tokens=list(args.turn_max_tokens) if args.turn_max_tokens else None,
            answer_format="tag" if tag else "explicit",
        )

    def __post_init__(self):
        if not self.intervention_text.strip():
            raise ValueError("intervention_text is empty: MuTIS injects it after a turn without an answer. Set it.")
        if self.max_turns < 1:
            raise ValueError(f"max_turns={self.max_turns} must be >= 1.")
        if self.turn_max_tokens is not None and (not self.turn_max_tokens or min(self.turn_max_tokens) < 1):
            raise ValueError(f"turn_max_tokens={self.turn_max_tokens} must be a non-empty list of positive counts.")
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"Unknown answer_format {self.answer_format!r}; use one of {list(ANSWER_FORMATS)}.")
        self._chat = None

    def bind(self, chat) -> None:
        self._chat = chat  # decodes a turn cut to its token cap

    def has_answer(self, text: str) -> bool:
        """Whether a turn states a final answer in the form the correctness reward reads (see the module doc)."""
        if _ANSWER_TAG.search(text):
            return True
        if self.answer_format == "tag":
            return False
        from ..registry import _load_rewards_package

        return _load_rewards_package().format_reward([text])[0] > 0

    def turn_cap(self, turn: int) -> int | None:
        """Token cap of policy turn `turn` (0-based): its entry of turn_max_tokens, else the last entry."""
        if not self.turn_max_tokens:
            return None
        return self.turn_max_tokens[min(turn, len(self.turn_max_tokens) - 1)]

    def next_turn(self, rollout: Rollout, turn_index: int) -> TurnSpec | None:
        if turn_index == 0:
            rollout.state["interventions"] = 0
            return TurnSpec(role="solver", credit="solve")
        if rollout.state.get("answered") or turn_index >= self.max_turns:
            return None
        rollout.state["interventions"] += 1
        return TurnSpec(role="solver", credit="retry", message=self.intervention_text)

    def after_turn(self, rollout: Rollout, segment: Segment) -> None:
        cap = self.turn_cap(len(rollout.turns("solver")) - 1)
        if cap is not None and len(segment.ids) > cap:
            # The backend cannot take a per-call length, so the turn is cut here; it then reads as truncated and
            # is closed by the template's end-of-turn token (masked) if another turn follows.
            segment.ids = segment.ids[:cap]
            if segment.logprobs is not None:
                segment.logprobs = segment.logprobs[:cap]
            segment.text = self._chat.tokenizer.decode(segment.ids, skip_special_tokens=True)
            segment.num_tokens = cap
        rollout.state["answered"] = self.has_answer(segment.text)

    def scored_turns(self, rollout: Rollout) -> dict[str, Segment]:
        solver = rollout.turns("solver")
        return {"turn1": solver[0], "final": solver[-1]}

    def turn_rewards(self, rewards: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"solve": rewards["final"], "retry": rewards["final"]}

    def advantages(self, rewards: dict[str, torch.Tensor], num_generations: int, scale: str) -> dict[str, torch.Tensor]:
        final = group_normalize(rewards["final"], num_generations, scale)
        return {"solve": final, "retry": final}

    def metrics(self, rollouts: list[Rollout]) -> dict[str, list[float]]:
        return {
            "interventions/per_episode": [float(r.state.get("interventions", 0)) for r in rollouts],
            "tokens/per_episode": [float(sum(s.num_tokens for s in r.turns("solver"))) for r in rollouts],
            "interventions/answered": [float(bool(r.state.get("answered"))) for r in rollouts],
        }
