"""Run a recipe's episode protocol on an evaluation set with greedy decoding and score every turn.

The same `run_episodes` loop as training, with a transformers `generate` backend instead of the trainer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .chat import ChatTurns
from .episodes import run_episodes
from .metrics import self_correction_metrics


@dataclass
class EvalResult:
    """metrics: turns/*, self_correction/*, tokens/<role>/mean; records: one dict per problem (texts, correctness)."""

    metrics: dict[str, float]
    records: list[dict] = field(default_factory=list)


def greedy_generate_fn(model, tokenizer, max_new_tokens: int, stop_ids: set[int]):
    """A `generate(prompt_ids, num_generations)` backend: greedy transformers decoding of left-padded prompts."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @torch.no_grad()
    def generate(prompt_ids: list[list[int]], num_generations: int):
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompt_ids])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
        out = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=sorted(stop_ids),
        )[:, width:].tolist()
        completions = []
        for ids in out:
            stop = next((i for i, tok in enumerate(ids) if tok in stop_ids), None)
            completions.append(ids if stop is None else ids[: stop + 1])
        return completions, None

    return generate


def evaluate(
    model,
    tokenizer,
    episode,
    dataset,
    correctness_fn,
    max_new_tokens: int,
    batch_size: int = 32,
    desc: str = "eval",
) -> EvalResult:
    """Greedy episodes on every row of `dataset` (columns prompt, answer); correctness judged by `correctness_fn`."""
    model.eval()
    chat = ChatTurns(tokenizer)
    stop_ids = {tokenizer.eos_token_id}
    eos = model.generation_config.eos_token_id
    stop_ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    generate = greedy_generate_fn(model, tokenizer, max_new_tokens, stop_ids)
    records = []
    with tqdm(total=len(dataset), desc=desc, unit="problem") as bar:
        for start in range(0, len(dataset), batch_size):
            rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
            prompt_ids = [
                list(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False))
                for p in rows["prompt"]
            ]
            rollouts = run_episodes(episode, prompt_ids, generate, chat, stop_ids, num_generations=1)
            scored = [episode.scored_turns(r) for r in rollouts]
            correct = {
                key: [
                    v > 0.5
                    for v in correctness_fn(
                        completions=[[{"role": "assistant", "content": s[key].text}] for s in scored],
                        answer=rows["answer"],
                    )
                ]
                for key in scored[0]
            }
            for b, rollout in enumerate(rollouts):
                records.append(
                    {
                        "problem": rows[b]["problem"] if "problem" in rows.column_names else None,
                        "answer": rows[b]["answer"],
                        "turns": [{"role": s.role, "text": s.text, "tokens": s.num_tokens} for s in rollout.turns()],
                        **{f"{key}_correct": correct[key][b] for key in correct},
                    }
                )
            bar.update(len(rows))
    return EvalResult(metrics=summarize(records), records=records)


def summarize(records: list[dict]) -> dict[str, float]:
    """Self-correction metrics and mean tokens per turn role from eval records."""
    metrics = {}
    if records and "turn1_correct" in records[0]:
        metrics.update(
            self_correction_metrics([r["turn1_correct"] for r in records], [r["final_correct"] for r in records])
        )
    elif records:
        metrics["turns/final/accuracy"] = sum(r["final_correct"] for r in records) / len(records)
    by_role: dict[str, list[int]] = {}
    for r in records:
        for t in r["turns"]:
            by_role.setdefault(t["role"], []).append(t["tokens"])
    for role, lengths in by_role.items():
        metrics[f"tokens/{role}/mean"] = sum(lengths) / len(lengths)
    return metrics
