"""Plan -> solve: a high-level turn writes a plan for the problem, the solver answers with it in context.

    mtgrpo train --config recipes/smollm2-135m-instruct/arithmetic-model-feedback.yaml --episode plan

The context-generator form of MLMT-RL (g ~ pi_H(.|x), y ~ pi_L(.|x, g)) and the strategy level of ToSCA. Who writes
the plan is `feedback_source`:
- `model`: a separate model (`feedback_model_name_or_path`, mtgrpo/feedback_model.py) answers [problem, plan_prompt].
  Frozen, it answers once per distinct prompt, so the `num_generations` copies of a prompt share one plan (a GRPO
  group then compares answers under the same plan, and vLLM's server mode still sees identical prompts). Trained
  (`train_feedback_model: true`), it samples one plan per episode: a group shared by one plan would give that plan
  advantages summing to zero, so no gradient; the group is then num_generations plans of the same problem, and
  the solver's turn is generated with distinct contexts (`shared_first_context` false).
  The plan is injected as a masked message (role "plan", policy "feedback"); the solver turn is the only one
  generated.
- `self`: the policy itself writes the plan under `plan_prompt` (role "plan"), then solves under
  `solve_with_plan_prompt`; with `train_feedback: true` the plan tokens are trained on the final outcome.

The prompt ends with the assistant header, and the plan must come before the solver's first turn, so the prompt's
assistant turn is closed empty with the template's end-of-turn token and the plan request (or the plan) follows as
the next user message, with the template's own turn boundaries (ids are concatenated, never re-rendered).

Credit (group-normalised; rf = R(final)): solve <- rf; plan <- rf (trained with `self` + `train_feedback`, or by the
feedback model's own update with `model` + `train_feedback_model`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..advantages import group_normalize
from .base import Rollout, Segment, TurnSpec


@dataclass
class PlanEpisode:
    feedback_source: str = "model"
    train_feedback: bool = False
    plan_prompt: str = ""
    solve_with_plan_prompt: str = ""
    feedback_model: object | None = (
        None  # feedback_source=model: a FeedbackModel (generate(conversations) -> texts)
    )
    train_feedback_model: bool = (
        False  # feedback_source=model: one sampled plan per episode, trained on "plan"
    )
    feedback_credit = (
        "plan"  # the advantage a trainable feedback model's samples get (mtgrpo/feedback_training.py)
    )

    @classmethod
    def from_config(cls, args) -> PlanEpisode:
        model = None
        if args.feedback_source == "model":
            from ..feedback.model import LazyFeedbackModel

            model = LazyFeedbackModel(args)
        return cls(
            feedback_source=args.feedback_source,
            train_feedback=args.train_feedback,
            plan_prompt=args.plan_prompt,
            solve_with_plan_prompt=args.solve_with_plan_prompt,
            feedback_model=model,
            train_feedback_model=args.train_feedback_model,
        )

    def __post_init__(self):
        if self.feedback_source == "model":
            if self.feedback_model is None:
                raise ValueError("episode=plan with feedback_source=model needs a feedback_model.")
            if self.train_feedback:
                raise ValueError("train_feedback applies to plans the policy writes (feedback_source=self).")
        elif self.feedback_source != "self":
            raise ValueError(
                f"episode=plan needs feedback_source 'model' or 'self', not {self.feedback_source!r}."
            )
        self._chat = None

    @property
    def num_generation_turns(self) -> int:
        return 1 if self.feedback_source == "model" else 2

    @property
    def shared_first_context(self) -> bool:
        """Whether the copies of a prompt still share one context at the first generated turn (run_episodes)."""
        return not self.train_feedback_model

    def bind(self, chat) -> None:
        self._chat = chat

    def _after_empty_turn(self, message: str) -> list[int]:
        """Ids that close the prompt's assistant turn empty and add `message` as the next user message."""
        return [self._chat.end_of_turn_id, *self._chat.user_turn(message)]

    def prepare_turn(self, rollouts: list[Rollout], turn_index: int) -> None:
        """Before the first turn (feedback_source=model), in one batched call: one plan per distinct prompt (frozen),
        or one per episode (trained)."""
        if self.feedback_source != "model" or turn_index != 0 or not rollouts:
            return
        from ..feedback.model import ask, problem_messages

        groups: dict[tuple[int, ...], list[Rollout]] = {}
        for rollout in rollouts:
            key = tuple(rollout.prompt_ids) if self.shared_first_context else (id(rollout),)
            groups.setdefault(key, []).append(rollout)
        firsts = [members[0] for members in groups.values()]
        conversations = [self._plan_request(problem_messages(r, self._chat)) for r in firsts]
        for members, plan in zip(
            groups.values(), ask(self.feedback_model, conversations, firsts), strict=True
        ):
            for rollout in members:
                rollout.state["plan"] = plan

    def _plan_request(self, problem: list[dict]) -> list[dict]:
        """[problem, plan request] as one user message after any system message (the problem, then the request)."""
        *head, last = problem
        return [*head, {"role": "user", "content": f"{last['content']}\n\n{self.plan_prompt}"}]

    def next_turn(self, rollout: Rollout, turn_index: int) -> TurnSpec | None:
        if self.feedback_source == "model":
            if turn_index > 0:
                return None
            plan = rollout.state["plan"]
            message = f"{plan}\n\n{self.solve_with_plan_prompt}"
            return TurnSpec(
                role="solver",
                credit="solve",
                message=message,
                message_role="plan",
                message_text=plan,
                message_ids=self._after_empty_turn(message),
                message_policy="feedback",
            )
        if turn_index == 0:
            spec = TurnSpec(role="plan", credit="plan", trained=self.train_feedback, message=self.plan_prompt)
            return replace(spec, message_ids=self._after_empty_turn(self.plan_prompt))
        if turn_index == 1:
            return TurnSpec(role="solver", credit="solve", message=self.solve_with_plan_prompt)
        return None

    def after_turn(self, rollout: Rollout, segment: Segment) -> None:
        pass

    def metrics(self, rollouts: list[Rollout]) -> dict[str, list[float]]:
        return {"plan/mean_tokens": [seg.num_tokens for r in rollouts for seg in r.turns("plan")]}

    def scored_turns(self, rollout: Rollout) -> dict[str, Segment]:
        return {"final": rollout.turns("solver")[-1]}

    def turn_rewards(self, rewards: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"solve": rewards["final"], "plan": rewards["final"]}

    def advantages(
        self, rewards: dict[str, torch.Tensor], num_generations: int, scale: str
    ) -> dict[str, torch.Tensor]:
        final = group_normalize(rewards["final"], num_generations, scale)
        return {"solve": final, "plan": final}
