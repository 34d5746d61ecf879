"""Episode transcripts: OUTPUT_DIR/episodes/step_{global_step:06d}.jsonl, one JSON object per episode."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .advantages import mean_turn_advantages


def _float_or_none(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def episode_records(
    inputs,
    rollouts,
    credit_rewards,
    token_advantages,
    first_index: int,
    num_generations: int,
    feedback_credit: str | None = None,
    feedback_advantages=None,
):
    """One dict per local episode. `credit_rewards` maps credit keys to (local) reward tensors. With a trained
    feedback model (`feedback_credit`, its (local) `feedback_advantages`), a turn it wrote is shown as trained, with
    the reward and advantage of its own update (the turn stays masked in the solver's stream)."""
    records = []
    for b, (row, rollout) in enumerate(zip(inputs, rollouts, strict=True)):
        turn_segments = rollout.turns()
        advantages = mean_turn_advantages(rollout, token_advantages[b].cpu())
        turns = []
        for seg, adv in zip(turn_segments, advantages, strict=True):
            credit, trained = seg.credit, seg.trained
            if feedback_credit and seg.policy == "feedback" and "feedback_sample" in rollout.state:
                credit, trained, adv = feedback_credit, True, float(feedback_advantages[b])
            reward = credit_rewards[credit][b] if credit in credit_rewards else None
            turns.append(
                {
                    "role": seg.role,
                    "policy": seg.policy,
                    "text": seg.text,
                    "trained": trained,
                    "reward": None if reward is None else _float_or_none(reward),
                    "advantage": adv,
                }
            )
        prompt = row["prompt"]
        if not isinstance(prompt, str):
            prompt = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
        final = [t for t in turns if t["role"] == "solver"][-1]
        records.append(
            {
                "group": (first_index + b) // num_generations,
                "prompt": prompt,
                "answer": row.get("answer"),
                "turns": turns,
                "final_reward": final["reward"],
            }
        )
    return records


def write_transcripts(output_dir: str, global_step: int, records: list[dict]) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a half-written transcript."""
    folder = Path(output_dir) / "episodes"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{global_step:06d}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, path)
    return path
