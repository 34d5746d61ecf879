"""SCoRe's stage decided by the optimizer step that trains a micro-batch, not the one that sampled it.

TRL generates once per `steps_per_generation * num_iterations` micro-batches and trains the buffered generation over
the following optimizer steps. With `num_iterations` > 1 or `steps_per_generation` > `gradient_accumulation_steps`,
a batch sampled in stage I (step < `score_stage1_steps`) is still being trained on after the switch. For such a
batch the trainer also builds its stage-II view (mtgrpo/episodes/self_correct.py `restaged`): the per-token
advantages, the loss mask (turn 1 is trained in stage II even where stage I masked it), TRL's token count for the
loss normaliser and the `turn_kl` coefficients. They travel batch-first in the batch dict under `stage2_*` keys, so
TRL's shuffle and split keep them aligned with their rows, and `_compute_loss` swaps them in for a micro-batch whose
optimizer step is in stage II. A batch sampled in stage II, or a run without a stage switch, carries none of this,
and its loss is TRL's (with `turn_kl`'s term) as before.
"""

from __future__ import annotations

import torch

from .advantages import token_advantages
from .turn_kl import turn_kl_coefficients

_SWAPPED = ("advantages", "tool_mask", "num_items_in_batch", "turn_kl_coef")
_PREFIX = "stage2_"


class ScoreStageMixin:
    """For episodes with `stage_at(step)` and `restaged(rollouts, stage)` (SCoRe); a no-op for every other one."""

    def _add_stage2_view(self, output: dict, rewards: dict, start: int, count: int, num_generations: int) -> None:
        """Add the stage-II view of a training batch sampled in stage I (every process calls this together: the
        token count is gathered)."""
        episode = self.episode
        if not hasattr(episode, "restaged") or episode.stage != 1:
            return
        if episode.stage_at(self._last_step_training_this_generation()) == 1:
            return  # every micro-batch of it is trained in stage I (the usual case): no view, no collective
        rollouts = episode.restaged(self._rollouts, stage=2)
        advantages = episode.advantages(rewards, num_generations, self.scale_rewards, stage=2)
        local = {k: v[start : start + count].cpu() for k, v in advantages.items()}
        completion_mask = output["completion_mask"]
        width, device = completion_mask.size(1), completion_mask.device
        # TRL pads tool_mask with 1 and zeroes truncated rows through completion_mask, which stays the same here.
        tool_mask = torch.tensor([r.tool_mask() + [1] * (width - len(r.tool_mask())) for r in rollouts], device=device)
        view = {
            "advantages": token_advantages(rollouts, local, width).to(device),
            "tool_mask": tool_mask,
            "num_items_in_batch": self.accelerator.gather((completion_mask * tool_mask).sum()).sum(),
        }
        if "turn_kl_coef" in output:
            view["turn_kl_coef"] = turn_kl_coefficients(rollouts, self.args.turn_kl, width).to(device)
        output.update({_PREFIX + key: value for key, value in view.items()})

    def _last_step_training_this_generation(self) -> int:
        """An upper bound on the last optimizer step that trains the generation being made: TRL trains it over the
        next steps_per_generation * num_iterations micro-batches, which may start mid-step (the + 1)."""
        micro_batches = self.args.steps_per_generation * self.num_iterations
        accumulation = self.args.gradient_accumulation_steps
        return self.state.global_step + (micro_batches + accumulation - 1) // accumulation

    def _compute_loss(self, model, inputs):
        if hasattr(self.episode, "stage_at") and self.model.training:
            stage = self.episode.stage_at(self.state.global_step)  # the optimizer step this micro-batch trains in
            self._metrics["train"]["score/trained_stage"].append(float(stage))
            if stage == 2 and _PREFIX + "advantages" in inputs:
                inputs = inputs | {key: inputs[_PREFIX + key] for key in _SWAPPED if _PREFIX + key in inputs}
        return super()._compute_loss(model, {k: v for k, v in inputs.items() if not k.startswith(_PREFIX)})
