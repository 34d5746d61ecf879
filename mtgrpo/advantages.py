"""Group-normalised advantages (GRPO) and their placement on tokens."""

from __future__ import annotations

import torch

EPS = 1e-4  # same epsilon as TRL's GRPOTrainer and MT-GRPO


def group_normalize(rewards: torch.Tensor, num_generations: int, scale: str = "group") -> torch.Tensor:
    """(r - mean of its group) / (std + 1e-4), matching GRPOTrainer's `scale_rewards` modes.

    `rewards` holds the whole generation batch of every process (gathered), so groups are never split.
    NaN rewards (unscorable completions) are left out of the baseline and get advantage 0, as in TRL.
    """
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    centred = (grouped - mean).view(-1)
    if scale == "group":
        std = _nanstd(grouped, dim=1).repeat_interleave(num_generations)
    elif scale == "batch":
        std = _nanstd(rewards.view(1, -1), dim=1).expand_as(rewards)
    elif scale == "none":
        return torch.nan_to_num(centred, nan=0.0)
    else:
        raise ValueError(f"Unknown scale_rewards {scale!r}; use 'group', 'batch' or 'none'.")
    return torch.nan_to_num(centred / (std + EPS), nan=0.0)


def _nanstd(x: torch.Tensor, dim: int) -> torch.Tensor:
    # Unbiased std over non-NaN entries, like trl.trainer.utils.nanstd.
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim)
    var = torch.nansum((x - mean) ** 2, dim=dim) / (count - 1).clamp(min=1)
    return var.sqrt()


def token_advantages(rollouts, advantages: dict[str, torch.Tensor], width: int) -> torch.Tensor:
    """A (B, width) tensor: each trained segment's tokens get its credit's advantage; everything else 0.

    `advantages` maps a credit key to a (B,) tensor over these (local) rollouts; untrained tokens are masked
    out of the loss by tool_mask, the 0 only keeps them neutral in any statistic that ignores the mask.
    """
    out = torch.zeros(len(rollouts), width)
    for b, rollout in enumerate(rollouts):
        pos = 0
        for seg in rollout.segments:
            if seg.trained and seg.credit is not None:
                out[b, pos : pos + len(seg.ids)] = advantages[seg.credit][b]
            pos += len(seg.ids)
    return out


def mean_turn_advantages(rollout, token_adv_row: torch.Tensor) -> list[float | None]:
    """Mean advantage over each turn's trained tokens (None for untrained turns), in `rollout.turns()` order."""
    means, pos = {}, 0
    for seg in rollout.segments:
        if seg.trained and seg.ids:
            means[id(seg)] = token_adv_row[pos : pos + len(seg.ids)].mean().item()
        pos += len(seg.ids)
    return [means.get(id(seg)) for seg in rollout.turns()]
