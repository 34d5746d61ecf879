"""Learning race: plain one-turn GRPO against each multi-turn protocol, at the same wall-clock training budget.

    python benchmarks/learning_race.py [--budget-minutes 5] [--variants plain,template,self,score,mutis]
                                       [--output-dir runs/learning_race] [--rerun]

Every run trains the bundled SmolLM2-135M-Instruct on the demo's procedural arithmetic, from the same recipe values
(data, rewards, batch, group size, sampling temperature, learning rate, completion length, seed: the race checks
that the recipes agree on them and refuses to run otherwise), until its wall-clock budget is spent: a run stops
after the last optimizer step that its previous step's duration says will end inside the budget. Then every run
(and the untrained model, once per evaluation protocol) is evaluated on the held-out arithmetic split — problems
never seen in training — by `mtgrpo.evaluation.evaluate` with greedy decoding.

Variants (name: trainer, recipe, evaluation protocol):
    plain     TRL's own GRPOTrainer, one turn (arithmetic-refine.yaml values). Evaluated with the template refine
              protocol: its turn-1 accuracy is its one-turn accuracy, its final turn shows what it does when asked
              to check its answer.
    template  refine, fixed feedback text, SCoRe stage II credit (arithmetic-refine.yaml, the demo recipe)
    self      refine, the policy writes and is trained on its own feedback, improvement reward for the feedback
              (RL-guided SCoRe; arithmetic-refine.yaml + feedback_source self, train_feedback, feedback_reward
              improvement)
    score     SCoRe: attempt, fixed "there might be an error" instruction, second attempt; stage I then stage II
              (arithmetic-score.yaml; the recipe's stage-I share of its steps, 5 of 10, is kept as a share of the
              time budget: stage II starts at the step boundary nearest to half the budget)
    mutis     MuTIS interventions: a turn without a stated answer gets "give your final answer" (arithmetic-mutis.yaml)
Multi-turn variants are evaluated with their own protocol.

Prints one table (steps done, training minutes, turn-1 and final accuracy, Δ, Δ^{i→c}, Δ^{c→i}) and writes it to
OUTPUT_DIR/race_table.md. Each run trains in its own fresh Python process, and its result goes to
OUTPUT_DIR/<variant>/race_result.json as soon as it is measured (the evaluation transcripts, one per problem, to
OUTPUT_DIR/<variant>/eval_records.jsonl); a later call with the same budget reuses it (pass
--rerun to train again), and a failed run is reported while the others go on (exit status 1). The default budget (3 min
per run) took 22 minutes for the whole race on a 2-core CPU (measured 2026-11-23).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes" / "smollm2-135m-instruct"
REFINE = RECIPES / "arithmetic-refine.yaml"
RESULT_FILE = "race_result.json"

# name -> (recipe, CLI overrides, plain TRL trainer?, what it is)
VARIANTS = {
    "plain": (REFINE, [], True, "TRL GRPOTrainer, one turn"),
    "template": (REFINE, [], False, "refine, template feedback, SCoRe II credit"),
    "self": (
        REFINE,
        ["--feedback_source", "self", "--train_feedback", "true", "--feedback_reward", "improvement"],
        False,
        "refine, trained self-feedback, improvement reward",
    ),
    "score": (RECIPES / "arithmetic-score.yaml", [], False, "SCoRe stage I -> II (self_correct)"),
    "mutis": (RECIPES / "arithmetic-mutis.yaml", [], False, "MuTIS interventions"),
}
# Recipe values every variant must share, so the race compares protocols and not hyperparameters.
SHARED_FIELDS = (
    "model_name_or_path", "dataset_name", "dataset_schema", "num_train_examples", "num_test_examples", "reward_funcs",
    "correctness_reward", "num_generations", "per_device_train_batch_size", "gradient_accumulation_steps",
    "max_completion_length", "temperature", "learning_rate", "lr_scheduler_type", "beta", "seed", "system_prompt",
)  # fmt: skip
TABLE_COLUMNS = (
    ("steps", "steps"), ("train min", "train_minutes"), ("turn-1 acc.", "turns/1/accuracy"),
    ("final acc.", "turns/final/accuracy"), ("Δ", "self_correction/delta"),
    ("Δ^{i→c}", "self_correction/incorrect_to_correct"), ("Δ^{c→i}", "self_correction/correct_to_incorrect"),
)  # fmt: skip


class UsageError(ValueError):
    """Bad command-line input: printed as one line, exit status 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-minutes", type=float, default=3.0, help="training wall-clock budget of EVERY run")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    parser.add_argument("--output-dir", default="runs/learning_race")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N held-out problems")
    parser.add_argument("--rerun", action="store_true", help="train again even where a result with this budget exists")
    parser.add_argument("--run-one", choices=list(VARIANTS), help=argparse.SUPPRESS)  # one run, in a child process
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        raise UsageError(f"unknown or no variants {unknown}; choose from {list(VARIANTS)} (e.g. --variants plain,score)")
    if args.budget_minutes <= 0:
        raise UsageError(f"--budget-minutes must be > 0, got {args.budget_minutes}")
    if args.eval_limit is not None and args.eval_limit < 1:
        raise UsageError(f"--eval-limit must be >= 1, got {args.eval_limit}")
    return args


def recipe_args(variant: str, output_dir: Path):
    """(script_args, training_args, model_args) of a variant: its recipe, its overrides, the race's run settings."""
    from mtgrpo.recipe import parse_recipe

    recipe, overrides, _, _ = VARIANTS[variant]
    run = [
        "--output_dir", str(output_dir / variant), "--max_steps", "100000",  # the wall-clock budget stops it
        "--save_strategy", "no", "--report_to", "none", "--episode_log_steps", "0",
        "--disable_tqdm", "true",  # a bar over 100000 steps says nothing; the "[race] step k, m/M min" lines do
    ]  # fmt: skip
    return parse_recipe(["--config", str(recipe), *overrides, *run])


def check_shared_values(parsed: dict[str, tuple]) -> None:
    """Refuse to race variants whose recipes differ in a value they share (SHARED_FIELDS)."""
    def value(args, name):
        for part in args:
            if hasattr(part, name):
                return getattr(part, name)
        return None

    first, *rest = parsed
    for variant in rest:
        differ = [f for f in SHARED_FIELDS if value(parsed[first], f) != value(parsed[variant], f)]
        if differ:
            raise UsageError(
                f"variants {first!r} and {variant!r} differ in shared recipe values {differ}: make the recipes agree"
            )


def budget_callback(seconds: float, label: str):
    from transformers import TrainerCallback

    class WallClockBudget(TrainerCallback):
        """Stops training after the last step that the previous step's duration says ends inside the budget."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = self.last = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.monotonic()
            elapsed, step_seconds, self.last = now - self.start, now - self.last, now
            print(f"[race] {label}: step {state.global_step}, {elapsed / 60:.1f}/{seconds / 60:.1f} min", flush=True)
            if elapsed + step_seconds > seconds:
                control.should_training_stop = True

    return WallClockBudget()


def score_stage_share(variant: str) -> float:
    """The share of its training that the variant's recipe gives SCoRe stage I (score_stage1_steps / max_steps), 0
    for the others. A race run's step count is not known in advance, so the race keeps this share of the TIME."""
    import yaml

    recipe = yaml.safe_load(VARIANTS[variant][0].read_text())
    stage1, steps = recipe.get("score_stage1_steps") or 0, recipe.get("max_steps") or 0
    return stage1 / steps if stage1 and steps > 0 else 0.0


def stage_switch_callback(trainer, seconds: float, share: float, label: str):
    from transformers import TrainerCallback

    class ScoreStageByTime(TrainerCallback):
        """SCoRe stage II from the step boundary nearest to `share` of the budget, judged by the last step's duration
        (the recipe's step split would leave a short run in stage I throughout: 5 of its 10 steps is more than a
        3-minute run takes)."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = self.last = time.monotonic()
            trainer.episode.stage1_steps = 10**9  # switched below, by time

        def on_step_end(self, args, state, control, **kwargs):
            now = time.monotonic()
            elapsed, step_seconds, self.last = now - self.start, now - self.last, now
            episode = trainer.episode
            # Switch here when this boundary is nearer the target than the next one (about one step later).
            if episode.stage1_steps > state.global_step and elapsed + step_seconds / 2 >= share * seconds:
                episode.stage1_steps = state.global_step  # the next rollout is sampled in stage II
                print(f"[race] {label}: SCoRe stage II from step {state.global_step + 1}", flush=True)

    return ScoreStageByTime()


def evaluate_model(model, tokenizer, protocol_args, limit, records_path: Path):
    """Greedy episodes of a protocol on the held-out split (same evaluator and split for every run: the recipes'
    data values are checked equal)."""
    from mtgrpo.episodes import build_episode
    from mtgrpo.evaluation.evaluate import evaluate
    from mtgrpo.registry import get_reward_func
    from mtgrpo.tasks.data import load_recipe_split

    script_args, training_args, _ = protocol_args
    test_set = load_recipe_split(script_args, "test", seed=training_args.seed, limit=limit)
    result = evaluate(
        model, tokenizer, build_episode(training_args, for_evaluation=True), test_set, get_reward_func(training_args.correctness_reward),
        training_args.max_completion_length, desc="eval", chat_template_kwargs=training_args.chat_template_kwargs,
    )  # fmt: skip
    # One transcript per problem, to read WHY a run fixes or breaks answers (turn texts, token counts, correctness).
    records_path.parent.mkdir(parents=True, exist_ok=True)
    records_path.write_text("".join(json.dumps(r) + "\n" for r in result.records))
    return result.metrics


def eval_protocol(variant: str) -> str:
    """The variant whose protocol evaluates `variant`: plain is evaluated with the template refine protocol."""
    return "template" if VARIANTS[variant][2] else variant


def train_variant(variant: str, parsed: dict, budget_s: float, limit):
    from trl import GRPOTrainer

    from mtgrpo.trainer import build_trainer

    script_args, training_args, model_args = parsed[variant]
    trainer_cls = GRPOTrainer if VARIANTS[variant][2] else None
    trainer = build_trainer(script_args, training_args, model_args, trainer_cls=trainer_cls)
    trainer.add_callback(budget_callback(budget_s, variant))
    if score_stage_share(variant):
        trainer.add_callback(stage_switch_callback(trainer, budget_s, score_stage_share(variant), variant))
    started = time.monotonic()
    trainer.train()
    minutes = (time.monotonic() - started) / 60
    print(f"[race] {variant}: evaluating", flush=True)
    records = Path(training_args.output_dir) / "eval_records.jsonl"
    metrics = evaluate_model(
        trainer.model, trainer.processing_class, parsed[eval_protocol(variant)], limit, records
    )
    result = {"variant": variant, "steps": trainer.state.global_step, "train_minutes": minutes, **metrics}
    return result


def evaluate_untrained(protocol: str, parsed: dict, limit):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtgrpo.models import resolve_model_path

    path = resolve_model_path(parsed[protocol][2].model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path)
    records = Path(parsed[protocol][1].output_dir).parent / "untrained" / f"{protocol}_records.jsonl"
    metrics = evaluate_model(model, AutoTokenizer.from_pretrained(path), parsed[protocol], limit, records)
    return {"variant": f"untrained ({protocol} protocol)", "steps": 0, "train_minutes": 0.0, **metrics}


def stored(path: Path, budget: float | None, limit, rerun: bool) -> dict | None:
    """A result stored by an earlier call with the same budget and eval limit (None with --rerun)."""
    if path.exists() and not rerun:
        result = json.loads(path.read_text())
        if result.get("budget_minutes") == budget and result.get("eval_limit") == limit:
            print(f"[race] reusing {path}", flush=True)
            return result
    return None


def store(path: Path, budget: float | None, limit, result: dict) -> dict:
    """Write a result as soon as it is measured, so a later failure loses nothing."""
    result = {**result, "budget_minutes": budget, "eval_limit": limit}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def format_table(rows: list[dict]) -> str:
    lines = ["| run | " + " | ".join(c for c, _ in TABLE_COLUMNS) + " |", "|---|" + "---:|" * len(TABLE_COLUMNS)]
    for row in rows:
        cells = []
        for _, key in TABLE_COLUMNS:
            value = row.get(key)
            cells.append("–" if value is None else str(value) if key == "steps" else f"{value:.{1 if key == 'train_minutes' else 3}f}")
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    """The race's two questions, answered from the measured rows."""
    trained = [r for r in rows if r["steps"] and not r["variant"].startswith("untrained")]
    multi = [r for r in trained if r["variant"] != "plain"]
    if not multi:
        return ""
    best = max(multi, key=lambda r: (r.get("self_correction/delta", float("-inf")), r["turns/final/accuracy"]))
    lines = [
        f"Best at teaching correction (largest final - turn 1): {best['variant']} "
        f"(Δ {best.get('self_correction/delta', float('nan')):+.3f}, Δ^{{i→c}} "
        f"{best.get('self_correction/incorrect_to_correct', float('nan')):.3f}, Δ^{{c→i}} "
        f"{best.get('self_correction/correct_to_incorrect', float('nan')):.3f})"
    ]
    plain = next((r for r in trained if r["variant"] == "plain"), None)
    if plain:
        top = max(multi, key=lambda r: r["turns/final/accuracy"])
        gap = top["turns/final/accuracy"] - plain["turns/1/accuracy"]
        lines.append(
            f"Best multi-turn final accuracy {top['turns/final/accuracy']:.3f} ({top['variant']}) vs plain GRPO "
            f"{plain['turns/1/accuracy']:.3f}: {'target met' if gap >= 0 else 'target missed'} ({gap:+.3f})"
        )
    return "\n".join(lines)


def run_in_subprocess(variant: str, args) -> dict | None:
    """Train and evaluate one variant in a fresh Python process (nothing left over from the previous run can slow
    it or change it); its result file, or None when it failed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--run-one", variant,
               "--budget-minutes", str(args.budget_minutes), "--output-dir", str(args.output_dir)]  # fmt: skip
    if args.eval_limit:
        command += ["--eval-limit", str(args.eval_limit)]
    code = subprocess.run(command).returncode
    path = Path(args.output_dir) / variant / RESULT_FILE
    if code != 0 or not path.exists():
        print(f"[race] {variant} failed (exit status {code}); its output is above. The other runs go on.", flush=True)
        return None
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.chdir(ROOT)  # recipes and the default output dir are relative to the checkout
    try:
        args = parse_args(argv)
        output_dir = Path(args.output_dir)
        protocols = sorted({eval_protocol(v) for v in args.variants}, key=list(VARIANTS).index)
        parsed = {v: recipe_args(v, output_dir) for v in dict.fromkeys([*args.variants, *protocols])}
        check_shared_values(parsed)
    except (UsageError, ValueError, FileNotFoundError) as err:
        print(f"learning_race: {err}", file=sys.stderr)
        return 2
    if args.run_one:  # the child process of one run: train, evaluate, write its result file
        store(output_dir / args.run_one / RESULT_FILE, args.budget_minutes, args.eval_limit,
              train_variant(args.run_one, parsed, args.budget_minutes * 60, args.eval_limit))  # fmt: skip
        return 0
    print(f"[race] {len(args.variants)} runs x {args.budget_minutes:g} min training each; held-out evaluation "
          f"with protocols {protocols}", flush=True)  # fmt: skip
    rows, failed = [], []
    for protocol in protocols:
        path = output_dir / "untrained" / f"{protocol}.json"
        rows.append(stored(path, None, args.eval_limit, args.rerun) or store(
            path, None, args.eval_limit, evaluate_untrained(protocol, parsed, args.eval_limit)))  # fmt: skip
    for variant in args.variants:
        row = stored(output_dir / variant / RESULT_FILE, args.budget_minutes, args.eval_limit, args.rerun)
        row = row or run_in_subprocess(variant, args)
        if row:
            rows.append(row)
        else:
            failed.append(variant)
    import torch

    header = (
        f"Learning race: {args.budget_minutes:g} min of training per run, {os.cpu_count()} CPU cores "
        f"(torch threads {torch.get_num_threads()}), held-out arithmetic ({args.eval_limit or 'all'} "
        "problems), greedy"
    )
    notes = [verdict(rows)] + ([f"FAILED runs (not in the table): {failed}"] if failed else [])
    table = "\n".join([header, "", format_table(rows), "", *notes])
    print("\n" + table)
    (output_dir / "race_table.md").write_text(table + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
