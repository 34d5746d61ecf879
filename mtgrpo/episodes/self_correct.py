"""Attempt -> fixed "there might be an error" instruction -> second attempt (SCoRe, Kumar et al. 2024).

    mtgrpo train --config recipes/smollm2-135m-instruct/arithmetic-score.yaml

Turn 1: the policy answers. Then the fixed `self_correct_prompt` (masked; no feedback is written by anyone).
Turn 2: the policy answers again with its first attempt in context.

Training runs in SCoRe's two stages, switched by the optimizer step; r1 = R(turn 1), r2 = R(turn 2), each advantage
group-normalised on its own:
    stage I  (step < score_stage1_steps): turn 2 ("refine") <- r2. Turn 1 ("solve_stage1") earns no advantage; its
             tokens stay in the loss only so that turn_kl's `solve_stage1` coefficient holds them near the reference
             model (SCoRe's strong first-turn KL). Without that coefficient turn 1 is masked out.
    stage II (from then on): turn 1 ("solve") <- r1; turn 2 ("refine") <- r2 + alpha * (r2 - r1), alpha =
             `refine_bonus_alpha` (SCoRe's shaping; the bonus is 0 where either turn is unscorable).

The stage is the one of the optimizer step that TRAINS a batch, not the one that sampled it: TRL reuses a generation
for several optimizer steps (`num_iterations` > 1, `steps_per_generation` > `gradient_accumulation_steps`), so a batch
sampled in stage I may be trained in stage II. The trainer calls `set_step` before each rollout (the sampling stage
decides the transcripts and `score/stage`), and for a stage-I batch also builds its stage-II credit, mask and turn_kl
coefficients (`restaged`, `advantages(..., stage=2)`), which it swaps in for micro-batches trained from
`score_stage1_steps` on (mtgrpo/score_stages.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..advantages import group_normalize
from .base import Rollout, Segment, TurnSpec

STAGE1_CREDIT = "solve_stage1"


@dataclass
class SelfCorrectEpisode:
    prompt: str = ""
    stage1_steps: int = 0
    alpha: float = 0.0
    anchor_turn1: bool = True  # stage I: keep turn 1 in the loss (for its KL); False masks it out
    step: int = field(default=0, init=False)

    @classmethod
    def from_config(cls, args) -> SelfCorrectEpisode:
        return cls(
            prompt=args.self_correct_prompt,
            stage1_steps=args.score_stage1_steps,
            alpha=args.refine_bonus_alpha,
            anchor_turn1=bool((args.turn_kl or {}).get(STAGE1_CREDIT)),
        )

    def __post_init__(self):
        if not self.prompt.strip():
            raise ValueError("self_correct_prompt is empty: the second attempt needs an instruction (SCoRe's default).")
        if self.stage1_steps < 0 or self.alpha < 0:
            raise ValueError("score_stage1_steps and refine_bonus_alpha must be >= 0.")

    def set_step(self, step: int) -> None:
        """The optimizer step of the coming rollout (the trainer calls this before each one)."""
        self.step = step

    def stage_at(self, step: int) -> int:
        return 1 if step < self.stage1_steps else 2

    @property
    def stage(self) -> int:
        return self.stage_at(self.step)

    def restaged(self, rollouts: list[Rollout], stage: int) -> list[Rollout]:
        """Copies of `rollouts` whose turn 1 has the credit and mask it would have had if sampled in `stage` (the
        tokens are the same; only who is trained on them, and with which advantage, changes)."""
        spec = self._first_turn(stage)
        out = []
        for rollout in rollouts:
            first = rollout.turns("solver")[0]
            segments = [
                replace(seg, credit=spec.credit if spec.trained else None, trained=spec.trained) if seg is first else seg
                for seg in rollout.segments
            ]
            out.append(replace(rollout, segments=segments, state={**rollout.state, "stage": stage}))
        return out

    def _first_turn(self, stage: int) -> TurnSpec:
        if stage == 1:
            return TurnSpec(role="solver", credit=STAGE1_CREDIT, trained=self.anchor_turn1)
        return TurnSpec(role="solver", credit="solve")

    def next_turn(self, rollout: Rollout, turn_index: int) -> TurnSpec | None:
        if turn_index == 0:
            rollout.state["stage"] = self.stage  # credit follows the stage the episode was sampled in
            return self._first_turn(self.stage)
        if turn_index == 1:
            return TurnSpec(role="solver", credit="refine", message=self.prompt)
        return None

    def after_turn(self, rollout: Rollout, segment: Segment) -> None:
        pass

    def scored_turns(self, rollout: Rollout) -> dict[str, Segment]:
        solver = rollout.turns("solver")
        return {"turn1": solver[0], "final": solver[-1]}

    def turn_rewards(self, rewards: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        r1 = rewards["turn1"]
        return {"solve": r1, STAGE1_CREDIT: torch.zeros_like(r1), "refine": self._second_turn_reward(rewards)}

    def advantages(
        self, rewards: dict[str, torch.Tensor], num_generations: int, scale: str, stage: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-credit advantages of the current stage, or of `stage` when given."""
        r1 = rewards["turn1"]
        return {
            STAGE1_CREDIT: torch.zeros_like(r1),
            "solve": group_normalize(r1, num_generations, scale),
            "refine": group_normalize(self._second_turn_reward(rewards, stage), num_generations, scale),
        }

    def _second_turn_reward(self, rewards: dict[str, torch.Tensor], stage: int | None = None) -> torch.Tensor:
        r1, r2 = rewards["turn1"], rewards["final"]
        if (stage or self.stage) == 1 or self.alpha == 0:
            return r2
        return r2 + self.alpha * torch.nan_to_num(r2 - r1, nan=0.0)

    def metrics(self, rollouts: list[Rollout]) -> dict[str, list[float]]:
        return {"score/stage": [float(r.state.get("stage", self.stage)) for r in rollouts]}
