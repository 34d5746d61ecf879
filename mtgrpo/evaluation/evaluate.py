"""Run a recipe's episode protocol on an evaluation set and score every turn.

The same `run_episodes` loop as training, with an evaluation backend (transformers or vLLM, see eval_backends)
instead of the trainer's. Greedy decoding gives the headline numbers; `num_samples=k` adds k sampled episodes
per problem for pass@k. The command line around it is `mtgrpo eval` (eval_cli.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..chat import ChatTurns
from ..episodes import run_episodes
from ..metrics import self_correction_metrics
from .backends import TransformersBackend


@dataclass
class EvalResult:
    """metrics: see `summarize`; records: one dict per problem (see `evaluate`)."""

    metrics: dict[str, float]
    records: list[dict] = field(default_factory=list)


def evaluate(
    model,
    tokenizer,
    episode,
    dataset,
    correctness_fn,
    max_new_tokens: int,
    batch_size: int = 32,
    desc: str = "eval",
    *,
    backend=None,
    num_samples: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
    chat_template_kwargs: dict | None = None,
) -> EvalResult:
    """Greedy episodes on every row of `dataset` (columns prompt, answer); correctness judged by `correctness_fn`.

    `backend` defaults to transformers generation with `model`; pass a `VLLMBackend` (and `model=None`) for
    vLLM. With `num_samples=k`, each problem also gets k episodes sampled at `temperature`. Prompts and turn
    boundaries are built exactly as in training (`ChatTurns.for_training` with the recipe's `chat_template_kwargs`
    and, for native tool calls, the tools' schemas).

    Each record holds `problem`, `answer`, `turns` (role, text, tokens of every turn), `correct` ({scored turn:
    bool}, e.g. turn1 / final), `episode_metrics` (the protocol's per-episode values, e.g. tools/*, as lists)
    and, with sampling, `samples` (one {scored turn: bool} per sampled episode).
    """
    backend = backend or TransformersBackend(model, tokenizer, max_new_tokens)
    if model is not None:
        model.eval()
    chat = ChatTurns.for_training(tokenizer, chat_template_kwargs)
    if hasattr(episode, "bind"):
        episode.bind(chat)  # settles the tool protocol, and with it the tool schemas in the prompt
    tools = getattr(episode, "chat_tools", None) or None
    backend.stop_ids.add(chat.end_of_turn_id)  # as in training: a turn ends at the template's end-of-turn token
    greedy = backend.generate_fn(0.0)
    if num_samples:
        sampled = backend.generate_fn(temperature)
        torch.manual_seed(seed)
    records = []
    with tqdm(total=len(dataset), desc=desc, unit="problem") as bar:
        for start in range(0, len(dataset), batch_size):
            rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
            prompt_ids = chat.prompt_ids(rows["prompt"], tools=tools)
            rollouts = run_episodes(episode, prompt_ids, greedy, chat, num_generations=1, rows=list(rows))
            correct = _judge(episode, rollouts, rows, correctness_fn)
            batch = [_record(episode, rows[b], rollout, correct[b]) for b, rollout in enumerate(rollouts)]
            if num_samples:
                # Sampled episodes in chunks of about `batch_size` sequences, so k does not multiply peak memory.
                per_chunk = max(1, batch_size // num_samples)
                for first in range(0, len(rows), per_chunk):
                    chunk = rows.select(range(first, min(first + per_chunk, len(rows))))
                    repeated = [p for p in prompt_ids[first : first + len(chunk)] for _ in range(num_samples)]
                    repeated_rows = [row for row in chunk for _ in range(num_samples)]
                    samples = run_episodes(episode, repeated, sampled, chat, num_samples, rows=repeated_rows)
                    flags = _judge(episode, samples, chunk, correctness_fn, repeat=num_samples)
                    for b in range(len(chunk)):
                        batch[first + b]["samples"] = flags[b * num_samples : (b + 1) * num_samples]
            records.extend(batch)
            bar.update(len(rows))
    return EvalResult(metrics=summarize(records), records=records)


def _judge(episode, rollouts, rows, correctness_fn, repeat: int = 1) -> list[dict[str, bool]]:
    """{scored turn: correct} per rollout. The function gets the kwargs TRL gives rewards: every dataset column but
    `prompt`, plus the episode's own columns."""
    scored = [episode.scored_turns(r) for r in rollouts]
    columns = {c: [v for v in rows[c] for _ in range(repeat)] for c in rows.column_names if c != "prompt"}
    if hasattr(episode, "reward_kwargs"):  # per-episode columns, e.g. the tool episode's calls and results
        columns.update(episode.reward_kwargs(rollouts))
    prompts = [p for p in rows["prompt"] for _ in range(repeat)]
    flags = [{} for _ in rollouts]
    for key in scored[0]:
        values = correctness_fn(
            prompts=prompts,
            completions=[[{"role": "assistant", "content": s[key].text}] for s in scored],
            completion_ids=[s[key].ids for s in scored],
            **columns,
        )
        for flag, value in zip(flags, values, strict=True):
            flag[key] = value is not None and value > 0.5  # None: the function could not score it
    return flags


def _record(episode, row: dict, rollout, correct: dict[str, bool]) -> dict:
    return {
        "problem": row.get("problem"),
        "answer": row["answer"],
        "turns": [{"role": s.role, "text": s.text, "tokens": s.num_tokens} for s in rollout.turns()],
        "correct": correct,
        # Raw values, not means: summarize pools them over all episodes exactly as the trainer logs them.
        "episode_metrics": {
            name: list(values) for name, values in episode.metrics([rollout]).items() if values
        },
    }


def summarize(records: list[dict]) -> dict[str, float]:
    """Metrics of eval records, named as in training logs.

    turns/1/accuracy, turns/final/accuracy, self_correction/{delta, incorrect_to_correct, correct_to_incorrect}
    (when a turn-1 answer is scored; otherwise only turns/final/accuracy); tokens/<role>/mean (mean tokens per
    turn of each role); the episode protocol's own metrics (e.g. tools/calls_per_episode, tools/success_rate);
    with sampling, pass@k/<scored turn> (share of problems with a correct answer among k samples).
    """
    if not records:
        return {}
    metrics = {}
    if "turn1" in records[0]["correct"]:
        metrics.update(
            self_correction_metrics(
                [r["correct"]["turn1"] for r in records], [r["correct"]["final"] for r in records]
            )
        )
    else:
        metrics["turns/final/accuracy"] = sum(r["correct"]["final"] for r in records) / len(records)
    pooled: dict[str, list[float]] = {}
    for r in records:
        for t in r["turns"]:
            pooled.setdefault(f"tokens/{t['role']}/mean", []).append(t["tokens"])
        for name, values in r.get("episode_metrics", {}).items():
            pooled.setdefault(name, []).extend(values)
    # A per-event metric with no event (tools/success_rate when no episode called a tool) is left out, not 0/0.
    metrics.update({name: sum(values) / len(values) for name, values in pooled.items() if values})
    if records[0].get("samples"):
        k = len(records[0]["samples"])
        for key in records[0]["correct"]:
            metrics[f"pass@{k}/{key}"] = sum(any(s[key] for s in r["samples"]) for r in records) / len(
                records
            )
    return metrics


# Table rows in reading order: label, metric name. Other metrics follow with their own names as labels.
_TABLE_ROWS = [
    ("accuracy after turn 1", "turns/1/accuracy"),
    ("accuracy after the final turn", "turns/final/accuracy"),
    ("Δ(t1, final)", "self_correction/delta"),
    ("Δ^{i→c} (wrong → right)", "self_correction/incorrect_to_correct"),
    ("Δ^{c→i} (right → wrong)", "self_correction/correct_to_incorrect"),
    ("tool calls per episode", "tools/calls_per_episode"),
    ("tool call success rate", "tools/success_rate"),
]


def markdown_table(columns: dict[str, dict[str, float]]) -> str:
    """A markdown table of metrics, one column per run: `{"before": metrics, "after": metrics}`."""
    names = [name for _, name in _TABLE_ROWS]
    present = {name for metrics in columns.values() for name in metrics}
    rows = [(label, name) for label, name in _TABLE_ROWS if name in present]
    for name in sorted(present - set(names)):
        if name.startswith("tokens/") and name.endswith("/mean"):  # tokens/<role>/mean, from summarize
            label = f"mean tokens per {name.split('/')[1]} turn"
        elif name.startswith("pass@"):
            k, turn = name.split("/", 1)
            label = f"{k} ({turn})"
        else:
            label = name
        rows.append((label, name))
    lines = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for label, name in rows:
        cells = [_format(metrics.get(name), name) for metrics in columns.values()]
        title = f"`{name}`" if label == name else f"{label} (`{name}`)"
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(value: float | None, name: str) -> str:
    if value is None:
        return "–"
    # Counts (tokens, tool calls, tool errors per episode) get one decimal; everything else is a rate.
    is_count = "tokens" in name or name.startswith(("tools/calls_per_episode", "tools/errors/"))
    return f"{value:.1f}" if is_count else f"{value:.3f}"
