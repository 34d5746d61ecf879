"""Where an optimizer step's time goes: plain one-turn GRPO vs three-turn MultiTurnGRPOTrainer.

    python benchmarks/step_breakdown.py [--model smollm2-135m-instruct] [--turn-tokens 32] [--steps 3]

(a) GRPOTrainer, one turn of up to 3T tokens; (b) MultiTurnGRPOTrainer, solve -> self-feedback -> refine, three
turns of up to T tokens. Same model, prompts, batch, rewards and seed. Each runs in its own subprocess so peak
RSS is its own. Prints, per optimizer step (mean over the steps after the first, which warms up): wall time split
into generation / reward / forward-backward / everything else (tokenisation, padding, episode bookkeeping,
optimizer update, logging), generation calls per batch, generated tokens, and peak RSS.
Targets for (b): everything else <= 5% of the step; 3 generation calls per batch; peak RSS <= 1.1 x (a).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StepTimer:
    """Mixin over a GRPOTrainer class: times generation, rewards and forward-backward inside each step."""

    def _bench_init(self):
        self.bench = defaultdict(float)
        self.bench_steps = []

    def _generate_single_turn(self, *args, **kwargs):
        start = time.perf_counter()
        ids, logprobs = super()._generate_single_turn(*args, **kwargs)
        self.bench["generation"] += time.perf_counter() - start
        self.bench["generation_calls"] += 1
        self.bench["generated_tokens"] += sum(len(x) for x in ids)
        return ids, logprobs

    def _calculate_rewards(self, *args, **kwargs):
        start = time.perf_counter()
        out = super()._calculate_rewards(*args, **kwargs)
        self.bench["reward"] += time.perf_counter() - start
        return out

    def _prepare_inputs(self, *args, **kwargs):
        start = time.perf_counter()
        out = super()._prepare_inputs(*args, **kwargs)
        self.bench["prepare"] += time.perf_counter() - start
        return out

    def training_step(self, *args, **kwargs):
        start = time.perf_counter()
        out = super().training_step(*args, **kwargs)
        self.bench["training_step"] += time.perf_counter() - start
        return out


def run_one(mode: str, args) -> dict:
    """Train `args.steps` steps in this process and return the per-step breakdown."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from mtgrpo import MTGRPOConfig, MultiTurnGRPOTrainer
    from mtgrpo.models import resolve_model_path
    from mtgrpo.registry import get_reward_funcs
    from mtgrpo.tasks.data import load_task_dataset

    model_path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dataset = load_task_dataset("arithmetic", "arithmetic", "train", num_examples=200, seed=0)
    common = dict(
        output_dir=os.path.join(args.output_dir, mode),
        # The generation batch (args.batch completions) is generated at once and trained in micro-batches.
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.batch // args.micro_batch,
        num_generations=args.generations,
        learning_rate=1e-5,
        beta=0.0,
        max_steps=args.steps,
        temperature=0.8,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
        mask_truncated_completions=False,
    )
    if mode == "single":
        trainer_cls = type("TimedGRPOTrainer", (StepTimer, GRPOTrainer), {})
        config = GRPOConfig(max_completion_length=3 * args.turn_tokens, **common)
    else:
        trainer_cls = type("TimedMultiTurnGRPOTrainer", (StepTimer, MultiTurnGRPOTrainer), {})
        config = MTGRPOConfig(max_completion_length=args.turn_tokens, feedback_source="self", **common)

    class StepClock(TrainerCallback):
        def on_step_begin(self, _args, state, control, **kwargs):
            trainer.bench.clear()
            self.start = time.perf_counter()

        def on_step_end(self, _args, state, control, **kwargs):
            step = dict(trainer.bench)
            step["total"] = time.perf_counter() - self.start
            trainer.bench_steps.append(step)

    trainer = trainer_cls(
        model=model_path,
        reward_funcs=get_reward_funcs(["math_answer_correct", "format_reward"]),
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepClock()],
    )
    trainer._bench_init()
    trainer.train()
    measured = trainer.bench_steps[1:] or trainer.bench_steps
    mean = {k: sum(s.get(k, 0.0) for s in measured) / len(measured) for k in measured[0]}
    forward_backward = mean["training_step"] - mean["prepare"]
    return {
        "mode": mode,
        "total": mean["total"],
        "generation": mean["generation"],
        "reward": mean["reward"],
        "forward_backward": forward_backward,
        "else": mean["total"] - mean["generation"] - mean["reward"] - forward_backward,
        "generation_calls": mean["generation_calls"],
        "generated_tokens": mean["generated_tokens"],
        # ru_maxrss is in KiB on Linux.
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def format_table(rows: list[dict]) -> str:
    head = ("run", "step s", "generation", "reward", "fwd-bwd", "else", "gen calls", "gen tokens", "peak RSS")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    labels = {"single": "(a) GRPOTrainer, 1 turn x 3T", "multi": "(b) MultiTurnGRPOTrainer, 3 turns x T"}
    for r in rows:

        def part(key, r=r):
            return f"{r[key]:.1f} s ({100 * r[key] / r['total']:.1f}%)"

        lines.append(
            f"| {labels[r['mode']]} | {r['total']:.1f} | {part('generation')} | {part('reward')} | "
            f"{part('forward_backward')} | {part('else')} | {r['generation_calls']:.0f} | "
            f"{r['generated_tokens']:.0f} | {r['peak_rss_gib']:.2f} GiB |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--turn-tokens", type=int, default=32, help="T: max tokens per turn")
    parser.add_argument("--batch", type=int, default=16, help="completions per step")
    parser.add_argument("--micro-batch", type=int, default=4, help="completions per forward-backward")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--output-dir", default="/tmp/mtgrpo-bench")
    parser.add_argument("--mode", choices=["single", "multi"], help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.mode:
        print("RESULT " + json.dumps(run_one(args.mode, args)), flush=True)
        return 0
    rows = []
    for mode in ("single", "multi"):
        print(f"running {mode} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not result:
            print(proc.stderr[-4000:], file=sys.stderr)
            return proc.returncode or 1
        rows.append(json.loads(result[-1][len("RESULT ") :]))
    print(format_table(rows))
    a, b = rows
    print(
        f"\n(b) everything else: {100 * b['else'] / b['total']:.1f}% of the step (target <= 5%); "
        f"generation calls per batch: {b['generation_calls']:.0f} (target 3); "
        f"peak RSS (b)/(a): {b['peak_rss_gib'] / a['peak_rss_gib']:.2f} (target <= 1.1)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
