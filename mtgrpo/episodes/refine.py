"""Solve -> feedback -> refine (MLMT-RL / self-refine).

Turn 1: the policy solves. Turn 2: feedback, written either by the policy itself under a tutor prompt
(`feedback_source: self`), taken from a fixed template (`feedback_source: template`, no generation), or written by
a separate model (`feedback_source: model`, mtgrpo/feedback_model.py: one batched call per feedback turn, its text
injected as a masked message like the template; frozen, or trained on the `feedback` advantage by its own update
with `train_feedback_model: true`, mtgrpo/feedback_training.py).
Turn 3: the policy refines with its attempt and the feedback in context. Injected instructions are masked.

Credit (each advantage group-normalised on its own; r1 = R(turn 1), rf = R(final)):
    solve    <- w * r1 + (1 - w) * rf                      (w = `turn1_reward_weight`)
    refine   <- rf + alpha * (rf - r1)                      (alpha = `refine_bonus_alpha`)
    feedback <- rf, the verifier outcome of the refined answer (MLMT-RL's reward for the feedback writer), or with
                `feedback_reward: improvement` rf - r1 (RL-guided SCoRe; 0 where either turn is unscorable); it
                trains the policy's own feedback tokens (`self`) or the separate feedback model (`model`)
Named settings:
    w = 0, alpha = 0 (default): MLMT-RL / Bi-NAC — both solver turns are credited with the final outcome.
    w = 1, alpha > 0: SCoRe stage II — turn 1 earns its own reward, the final turn a bonus for improving on it.
    w = 1, alpha = 0: two independent single-turn objectives; SCoRe reports that this collapses into the final
    turn copying the first (a warning is logged).
A term with a zero weight is left out, so an unscorable turn (reward NaN) only affects the advantages that use
it; where r1 or rf is unscorable the improvement bonus is 0.

Code tasks (rows with a `visible_tests` column, dataset_schema mbpp / humaneval): before the feedback turn, the
turn-1 program runs in the code sandbox against the task's VISIBLE tests only (hidden tests score, never shown),
and the execution report opens the feedback turn's message, whoever writes the feedback (MLMT-RL appends the
sandbox errors of the first program in the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..advantages import group_normalize
from ..tasks.code import execution_report
from .base import Rollout, Segment, TurnSpec

__all__ = ["RefineEpisode", "execution_report"]


@dataclass
class RefineEpisode:
    feedback_source: str = "self"
    train_feedback: bool = False
    feedback_prompt: str = ""
    feedback_template: str = ""
    refine_prompt: str = ""
    turn1_reward_weight: float = 0.0
    refine_bonus_alpha: float = 0.0
    feedback_reward: str = "outcome"  # trained feedback: "outcome" = rf (MLMT-RL), "improvement" = rf - r1
    feedback_model: object | None = None  # feedback_source=model: a FeedbackModel (generate(conversations) -> texts)
    feedback_checker: object | None = None  # feedback_source=checker: (row, attempt) -> str | Check
    feedback_credit = "feedback"  # the advantage a trainable feedback model's samples get (mtgrpo/feedback_training.py)

    @classmethod
    def from_config(cls, args) -> RefineEpisode:
        return cls(
            feedback_source=args.feedback_source,
            train_feedback=args.train_feedback,
            feedback_prompt=args.feedback_prompt,
            feedback_template=args.feedback_template,
            refine_prompt=args.refine_prompt,
            turn1_reward_weight=args.turn1_reward_weight,
            refine_bonus_alpha=args.refine_bonus_alpha,
            feedback_reward=args.feedback_reward,
            feedback_model=_feedback_model(args),
            feedback_checker=_feedback_checker(args),
        )

    def __post_init__(self):
        if self.feedback_reward not in ("outcome", "improvement"):
            raise ValueError(f"Unknown feedback_reward {self.feedback_reward!r}; use 'outcome' or 'improvement'.")
        solve = TurnSpec(role="solver", credit="solve")
        if self.feedback_source == "self":
            self.plan = [
                solve,
                TurnSpec(role="feedback", credit="feedback", trained=self.train_feedback, message=self.feedback_prompt),
                TurnSpec(role="solver", credit="refine", message=self.refine_prompt),
            ]
        elif self.feedback_source == "template":
            # The template is the feedback turn: shown to the policy, never generated, never trained.
            self.plan = [
                solve,
                TurnSpec(
                    role="solver",
                    credit="refine",
                    message=f"{self.feedback_template}\n\n{self.refine_prompt}",
                    message_role="feedback",
                    message_text=self.feedback_template,
                ),
            ]
        elif self.feedback_source == "checker":
            # Like the template, but the text comes from a program that checks turn 1 (prepare_turn); never trained.
            self.plan = [solve, TurnSpec(role="solver", credit="refine", message_role="feedback")]
            if self.feedback_checker is None:
                raise ValueError("feedback_source=checker needs a feedback_checker (see mtgrpo/feedback/checkers.py).")
        elif self.feedback_source == "model":
            # Like the template, but the text comes from the feedback model (prepare_turn); never trained.
            self.plan = [
                solve,
                TurnSpec(role="solver", credit="refine", message_role="feedback", message_policy="feedback"),
            ]
            if self.feedback_model is None:
                raise ValueError("feedback_source=model needs a feedback_model (see mtgrpo/feedback_model.py).")
        else:
            raise ValueError(
                f"Unknown feedback_source {self.feedback_source!r}; use 'self', 'template', 'model' or 'checker'."
            )

    @property
    def num_generation_turns(self) -> int:
        return len(self.plan)

    def bind(self, chat) -> None:
        self._chat = chat  # feedback_source=model: decodes the problem when a rollout has no dataset row

    def prepare_turn(self, rollouts: list[Rollout], turn_index: int) -> None:
        """Before the feedback turn: run code tasks' turn-1 programs, then (feedback_source=model) ask the feedback
        model, once for the whole batch, with the execution report (if any) opening its request."""
        if self.feedback_source == "checker":
            if turn_index == 1:
                self._check_turn1(rollouts)
            return  # the checker decides what the feedback shows (code_tests runs the visible tests itself)
        self._run_turn1_programs(rollouts, turn_index)
        if self.feedback_source == "model" and turn_index == 1:
            from ..feedback.model import write_feedback

            def request(rollout: Rollout) -> str:
                result = rollout.state.get("execution")
                return self.feedback_prompt if result is None else f"{execution_report(result)}\n\n{self.feedback_prompt}"

            write_feedback(self.feedback_model, rollouts, request, getattr(self, "_chat", None))

    def _check_turn1(self, rollouts: list[Rollout]) -> None:
        """feedback_source=checker: the checker's verdict on each first answer becomes its feedback turn."""
        from ..feedback.checkers import run_checker

        for rollout in rollouts:
            check, failed = run_checker(self.feedback_checker, rollout.state.get("row"), rollout.turns("solver")[0].text)
            rollout.state["checker"] = {"text": check.text, "failed": failed, "checked": check.claims_checked,
                                        "wrong": check.claims_wrong}

    def _run_turn1_programs(self, rollouts: list[Rollout], turn_index: int) -> None:
        """Before the feedback turn: run the turn-1 programs of code tasks (in parallel, sandboxed)."""
        code = [r for r in rollouts if turn_index == 1 and _visible_tests(r) is not None]
        if not code:
            return
        from ..registry import _load_rewards_package

        execute = _load_rewards_package().code_exec.execute_completions
        results = execute(
            [r.turns("solver")[0].text for r in code],
            [_visible_tests(r) for r in code],
            [r.state["row"].get("setup_code") for r in code],
            require_tests=False,  # a task without visible tests still shows its syntax and runtime errors
        )
        for rollout, result in zip(code, results, strict=True):
            rollout.state["execution"] = result

    def next_turn(self, rollout: Rollout, turn_index: int) -> TurnSpec | None:
        if turn_index >= len(self.plan):
            return None
        spec = self.plan[turn_index]
        if self.feedback_source == "model" and turn_index == 1:
            feedback = rollout.state["model_feedback"]
            spec = replace(spec, message=f"{feedback}\n\n{self.refine_prompt}", message_text=feedback)
        if self.feedback_source == "checker" and turn_index == 1:
            feedback = rollout.state["checker"]["text"]
            return replace(spec, message=f"{feedback}\n\n{self.refine_prompt}", message_text=feedback)
        result = rollout.state.get("execution")
        if turn_index != 1 or result is None:
            return spec
        report = execution_report(result)
        shown = spec.message_text if spec.message_text is not None else spec.message
        return replace(spec, message=f"{report}\n\n{spec.message}", message_text=f"{report}\n\n{shown}")

    def after_turn(self, rollout: Rollout, segment: Segment) -> None:
        pass

    def metrics(self, rollouts: list[Rollout]) -> dict[str, list[float]]:
        """Per-turn values whose mean over all processes is logged."""
        out = {"feedback/mean_tokens": [seg.num_tokens for r in rollouts for seg in r.turns("feedback")]}
        checks = [r.state["checker"] for r in rollouts if "checker" in r.state]
        if checks:
            out["feedback_checker/errors"] = [float(c["failed"]) for c in checks]
            out["feedback_checker/claims_checked"] = [c["checked"] for c in checks if c["checked"] is not None]
            out["feedback_checker/claims_wrong"] = [c["wrong"] for c in checks if c["wrong"] is not None]
        return out

    def scored_turns(self, rollout: Rollout) -> dict[str, Segment]:
        """The turns whose text the reward functions score: the first and the final answer."""
        solver = rollout.turns("solver")
        return {"turn1": solver[0], "final": solver[-1]}

    def turn_rewards(self, rewards: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The raw reward behind each credit key (shown in transcripts)."""
        return {"solve": rewards["turn1"], "refine": rewards["final"], "feedback": self._feedback_reward(rewards)}

    def _feedback_reward(self, rewards: dict[str, torch.Tensor]) -> torch.Tensor:
        """What trained feedback tokens earn: rf (MLMT-RL), or rf - r1 (RL-guided SCoRe), which pays nothing for
        restating a right first answer; 0 where only turn 1 is unscorable. Where the final answer is unscorable the
        reward is NaN in both modes: the episode is left out of the group baseline with advantage 0, as TRL does."""
        if self.feedback_reward == "improvement":
            rf = rewards["final"]
            return torch.where(torch.isnan(rf), rf, torch.nan_to_num(rf - rewards["turn1"], nan=0.0))
        return rewards["final"]

    def advantages(self, rewards: dict[str, torch.Tensor], num_generations: int, scale: str) -> dict[str, torch.Tensor]:
        r1, rf = rewards["turn1"], rewards["final"]
        w, alpha = self.turn1_reward_weight, self.refine_bonus_alpha
        solve = _weighted_sum((w, r1), (1 - w, rf))
        refine = rf if alpha == 0 else rf + alpha * torch.nan_to_num(rf - r1, nan=0.0)
        return {
            "solve": group_normalize(solve, num_generations, scale),
            "refine": group_normalize(refine, num_generations, scale),
            "feedback": group_normalize(self._feedback_reward(rewards), num_generations, scale),
        }


def _feedback_checker(args):
    """feedback_source=checker: the checker function, resolved (and checked) when the episode is built."""
    if args.feedback_source != "checker":
        return None
    from ..feedback.checkers import resolve_checker

    return resolve_checker(args.feedback_checker)


def _feedback_model(args):
    """feedback_source=model: the frozen feedback model, built on first use (mtgrpo/feedback_model.py)."""
    if args.feedback_source != "model":
        return None
    from ..feedback.model import LazyFeedbackModel

    return LazyFeedbackModel(args)


def _visible_tests(rollout: Rollout) -> list[str] | None:
    row = rollout.state.get("row")
    tests = row.get("visible_tests") if isinstance(row, dict) else None
    return list(tests) if tests is not None else None


def _weighted_sum(*terms: tuple[float, torch.Tensor]) -> torch.Tensor:
    """sum of weight * reward over the terms with a non-zero weight (0 * NaN would be NaN)."""
    used = [weight * reward for weight, reward in terms if weight != 0]
    return torch.stack(used).sum(dim=0) if used else torch.zeros_like(terms[0][1])
