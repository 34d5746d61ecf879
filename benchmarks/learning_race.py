"""Learning race: plain one-turn GRPO against each multi-turn protocol, at the same wall-clock training budget.

    python benchmarks/learning_race.py [--task arithmetic|calculator] [--budget-minutes 5] [--seeds N]
                                       [--variants plain,template,...] [--output-dir runs/learning_race] [--rerun]

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
    checker   refine, the `arithmetic` checker writes the feedback (arithmetic-refine.yaml values)
Multi-turn variants are evaluated with their own protocol.

--task calculator races tool use on two-digit products (arithmetic-calculator.yaml values; 200 held-out problems,
evaluated with the calculator available and never the call prefix):
    plain         TRL's GRPOTrainer, one turn, no tool (outcome reward only)
    trl-tools     TRL's GRPOTrainer(tools=[calculator]): TRL's own tool loop, one advantage per episode
    tool-outcome  mtgrpo's tool episode, outcome credit only (advantage_mode grpo_or)
    tool-mtgrpo   mtgrpo's tool episode, MT-GRPO turn credit
--seeds N repeats every run with seeds seed, seed+1, ...; the table shows the mean ± half the range.

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
ERROR_FILE = "race_error.txt"

# name -> (recipe, CLI overrides, trainer: "trl" (TRL's GRPOTrainer), "trl-tools" (with tools=) or "" (mtgrpo's),
# what it is)
VARIANTS = {
    "plain": (REFINE, [], "trl", "TRL GRPOTrainer, one turn"),
    "template": (REFINE, [], False, "refine, template feedback, SCoRe II credit"),
    "self": (
        REFINE,
        ["--feedback_source", "self", "--train_feedback", "true", "--feedback_reward", "improvement"],
        "",
        "refine, trained self-feedback, improvement reward",
    ),
    "score": (RECIPES / "arithmetic-score.yaml", [], "", "SCoRe stage I -> II (self_correct)"),
    "mutis": (RECIPES / "arithmetic-mutis.yaml", [], "", "MuTIS interventions"),
    "checker": (
        REFINE,
        ["--feedback_source", "checker", "--feedback_checker", "arithmetic", "--feedback_template", ""],
        "",
        "refine, the arithmetic checker writes the feedback",
    ),
}
CALCULATOR = RECIPES / "arithmetic-calculator.yaml"
ONE_TURN_REWARD = ["--reward_funcs", "math_answer_correct"]  # TRL's trainers have no tool counters to reward
# The task where tools matter: two-digit products with the calculator (--task calculator).
CALCULATOR_VARIANTS = {
    "plain": (CALCULATOR, ONE_TURN_REWARD, "trl", "TRL GRPOTrainer, one turn, no tool"),
    "trl-tools": (CALCULATOR, ONE_TURN_REWARD, "trl-tools", "TRL GRPOTrainer(tools=[calculator]), its tool loop"),
    "tool-outcome": (CALCULATOR, ["--advantage_mode", "grpo_or"], "", "mtgrpo tool episode, outcome credit only"),
    "tool-mtgrpo": (CALCULATOR, [], "", "mtgrpo tool episode, MT-GRPO turn credit"),
}
TASKS = {"arithmetic": VARIANTS, "calculator": CALCULATOR_VARIANTS}
# Per task, the shared values a variant may change (the one-turn trainers cannot compute the tool reward).
TASK_FREE_FIELDS = {"arithmetic": (), "calculator": ("reward_funcs",)}
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
TOOL_COLUMNS = (("tool calls / episode", "tools/calls_per_episode"), ("call success", "tools/success_rate"))


class UsageError(ValueError):
    """Bad command-line input: printed as one line, exit status 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-minutes", type=float, default=3.0, help="training wall-clock budget of EVERY run")
    parser.add_argument("--task", default="arithmetic", choices=list(TASKS),
                        help="arithmetic: sums, the self-correction protocols; calculator: products, the tool protocols")
    parser.add_argument("--variants", default=None, help="comma-separated (default: every variant of the task)")
    parser.add_argument("--seeds", type=int, default=1, help="repeat every run with N seeds; the table shows mean ± half-range")
    parser.add_argument("--output-dir", default="runs/learning_race")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N held-out problems")
    parser.add_argument("--rerun", action="store_true", help="train again even where a result with this budget exists")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)  # one run, in a child process
    parser.add_argument("--seed-index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    variants = TASKS[args.task]
    args.variants = [v.strip() for v in (args.variants or ",".join(variants)).split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in variants]
    if unknown or not args.variants:
        raise UsageError(f"unknown or no variants {unknown} for --task {args.task}; choose from {list(variants)} "
                         "(e.g. --variants plain,score)")
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    if args.budget_minutes <= 0:
        raise UsageError(f"--budget-minutes must be > 0, got {args.budget_minutes}")
    if args.eval_limit is not None and args.eval_limit < 1:
        raise UsageError(f"--eval-limit must be >= 1, got {args.eval_limit}")
    return args


def recipe_args(variant: str, output_dir: Path, task: str = "arithmetic", seed_index: int = 0):
    """(script_args, training_args, model_args) of a variant: its recipe, its overrides, the race's run settings.
    Seed k > 0 adds k to the recipe's seed (sampling and initial data order; the held-out split never changes)."""
    from mtgrpo.recipe import parse_recipe

    recipe, overrides, _, _ = TASKS[task][variant]
    run_dir = output_dir / variant if seed_index == 0 else output_dir / variant / f"seed-{seed_index}"
    run = [
        "--output_dir", str(run_dir), "--max_steps", "100000",  # the wall-clock budget stops it
        "--save_strategy", "no", "--report_to", "none", "--episode_log_steps", "0",
        "--disable_tqdm", "true",  # a bar over 100000 steps says nothing; the "[race] step k, m/M min" lines do
    ]  # fmt: skip
    parsed = parse_recipe(["--config", str(recipe), *overrides, *run])
    parsed[1].seed += seed_index
    return parsed


def check_shared_values(parsed: dict[str, tuple], free: tuple[str, ...] = ()) -> None:
    """Refuse to race variants whose recipes differ in a value they share (SHARED_FIELDS, less `free`)."""
    def value(args, name):
        for part in args:
            if hasattr(part, name):
                return getattr(part, name)
        return None

    first, *rest = parsed
    for variant in rest:
        differ = [f for f in SHARED_FIELDS if f not in free and value(parsed[first], f) != value(parsed[variant], f)]
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


def score_stage_share(variant: str, task: str = "arithmetic") -> float:
    """The share of its training that the variant's recipe gives SCoRe stage I (score_stage1_steps / max_steps), 0
    for the others. A race run's step count is not known in advance, so the race keeps this share of the TIME."""
    import yaml

    recipe = yaml.safe_load(TASKS[task][variant][0].read_text())
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


EVAL_PROTOCOL = {"arithmetic": "template", "calculator": "tool-mtgrpo"}


def eval_protocol(variant: str, task: str = "arithmetic") -> str:
    """The variant whose protocol evaluates `variant`: TRL's trainers are evaluated with the task's multi-turn
    protocol (arithmetic: template refine, whose turn-1 accuracy is the one-turn accuracy; calculator: the tool
    episode with the calculator available and no call prefix)."""
    return EVAL_PROTOCOL[task] if TASKS[task][variant][2] else variant


def train_variant(variant: str, parsed: dict, budget_s: float, limit, task: str = "arithmetic"):
    import functools

    from trl import GRPOTrainer

    from mtgrpo.trainer import build_trainer

    script_args, training_args, model_args = parsed[variant]
    kind = TASKS[task][variant][2]
    trainer_cls = None
    if kind == "trl":
        trainer_cls = GRPOTrainer
    elif kind == "trl-tools":
        from mtgrpo.tasks.toolbox import resolve_tools

        trainer_cls = functools.partial(GRPOTrainer, tools=list(resolve_tools(training_args.tools).values()))
    trainer = build_trainer(script_args, training_args, model_args, trainer_cls=trainer_cls)
    trainer.add_callback(budget_callback(budget_s, variant))
    if score_stage_share(variant, task):
        trainer.add_callback(stage_switch_callback(trainer, budget_s, score_stage_share(variant, task), variant))
    started = time.monotonic()
    trainer.train()
    minutes = (time.monotonic() - started) / 60
    print(f"[race] {variant}: evaluating", flush=True)
    records = Path(training_args.output_dir) / "eval_records.jsonl"
    metrics = evaluate_model(
        trainer.model, trainer.processing_class, parsed[eval_protocol(variant, task)], limit, records
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
    columns = TABLE_COLUMNS + tuple(c for c in TOOL_COLUMNS if any(c[1] in r for r in rows))
    lines = ["| run | " + " | ".join(c for c, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    for row in rows:
        cells = []
        for _, key in columns:
            value, spread = row.get(key), row.get(f"{key}/spread")
            digits = 0 if key == "steps" else 1 if key == "train_minutes" else 3
            cell = "–" if value is None else f"{value:.{digits}f}"
            if value is not None and spread is not None and row.get("seeds", 1) > 1:
                cell += f" ± {spread:.{digits}f}"
            cells.append(cell)
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict], task: str = "arithmetic") -> str:
    """The race's questions, answered from the measured rows."""
    trained = [r for r in rows if r["steps"] and not r["variant"].startswith("untrained")]
    if task == "calculator":
        return calculator_verdict({r["variant"]: r for r in trained})
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


def calculator_verdict(by_name: dict[str, dict]) -> str:
    """MT-GRPO's ordering: tool-mtgrpo >= plain + 0.20, >= trl-tools, >= tool-outcome (final accuracy)."""
    final = {name: row["turns/final/accuracy"] for name, row in by_name.items()}
    if "tool-mtgrpo" not in final:
        return ""
    mt = final["tool-mtgrpo"]
    checks = [("plain + 0.20", final.get("plain"), 0.20), ("trl-tools", final.get("trl-tools"), 0.0),
              ("tool-outcome", final.get("tool-outcome"), 0.0)]
    parts = []
    for label, other, margin in checks:
        if other is None:
            parts.append(f"vs {label}: not run (or failed)")
        else:
            gap = mt - (other + margin)
            parts.append(f"vs {label}: {'met' if gap >= 0 else 'missed'} ({mt:.3f} vs {other + margin:.3f}, {gap:+.3f})")
    return "tool-mtgrpo final accuracy " + "; ".join(parts)


def run_dir(output_dir: Path, variant: str, seed_index: int) -> Path:
    return output_dir / variant if seed_index == 0 else output_dir / variant / f"seed-{seed_index}"


def run_in_subprocess(variant: str, args, seed_index: int = 0) -> dict | str:
    """Train and evaluate one variant in a fresh Python process (nothing left over from the previous run can slow
    it or change it); its result, or the error that stopped it."""
    command = [sys.executable, str(Path(__file__).resolve()), "--run-one", variant, "--task", args.task,
               "--seed-index", str(seed_index), "--budget-minutes", str(args.budget_minutes),
               "--output-dir", str(args.output_dir)]  # fmt: skip
    if args.eval_limit:
        command += ["--eval-limit", str(args.eval_limit)]
    code = subprocess.run(command).returncode
    folder = run_dir(Path(args.output_dir), variant, seed_index)
    if code != 0 or not (folder / RESULT_FILE).exists():
        error = folder / ERROR_FILE
        reason = error.read_text().strip() if error.exists() else f"exit status {code}"
        print(f"[race] {variant} failed ({reason}); its output is above. The other runs go on.", flush=True)
        return reason
    return json.loads((folder / RESULT_FILE).read_text())


def aggregate(rows: list[dict]) -> dict:
    """One row from the seeds of a variant: the mean of each number, and its half-range under `<key>/spread`."""
    out = dict(rows[0])
    for key, value in rows[0].items():
        values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        if isinstance(value, int | float) and key not in ("budget_minutes", "eval_limit") and len(values) == len(rows):
            out[key] = sum(values) / len(values)
            out[f"{key}/spread"] = (max(values) - min(values)) / 2
    out["seeds"] = len(rows)
    return out


def run_child(args, output_dir: Path) -> int:
    """--run-one: train one variant with one seed, evaluate it, write its result file (or its error)."""
    folder = run_dir(output_dir, args.run_one, args.seed_index)
    parsed = {args.run_one: recipe_args(args.run_one, output_dir, args.task, args.seed_index)}
    protocol = eval_protocol(args.run_one, args.task)
    parsed.setdefault(protocol, recipe_args(protocol, output_dir, args.task, args.seed_index))
    try:
        result = train_variant(args.run_one, parsed, args.budget_minutes * 60, args.eval_limit, args.task)
    except Exception as err:  # reported in the race's table (e.g. TRL's tool loop refusing this chat template)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ERROR_FILE).write_text(f"{type(err).__name__}: {err}".splitlines()[0][:400])
        raise
    store(folder / RESULT_FILE, args.budget_minutes, args.eval_limit, {**result, "seed": parsed[args.run_one][1].seed})
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.chdir(ROOT)  # recipes and the default output dir are relative to the checkout
    try:
        args = parse_args(argv)
        output_dir = Path(args.output_dir)
        if args.run_one:  # the child process of one run
            return run_child(args, output_dir)
        variants = TASKS[args.task]
        protocols = sorted({eval_protocol(v, args.task) for v in args.variants}, key=list(variants).index)
        parsed = {v: recipe_args(v, output_dir, args.task) for v in dict.fromkeys([*args.variants, *protocols])}
        check_shared_values(parsed, TASK_FREE_FIELDS[args.task])
    except (UsageError, ValueError, FileNotFoundError) as err:
        print(f"learning_race: {err}", file=sys.stderr)
        return 2
    print(f"[race] task {args.task}: {len(args.variants)} variants x {args.seeds} seed(s) x {args.budget_minutes:g} "
          f"min training each; held-out evaluation with protocols {protocols}", flush=True)  # fmt: skip
    rows, failed = [], {}
    for protocol in protocols:
        path = output_dir / "untrained" / f"{protocol}.json"
        rows.append(stored(path, None, args.eval_limit, args.rerun) or store(
            path, None, args.eval_limit, evaluate_untrained(protocol, parsed, args.eval_limit)))  # fmt: skip
    for variant in args.variants:
        seeds = []
        for k in range(args.seeds):
            path = run_dir(output_dir, variant, k) / RESULT_FILE
            row = stored(path, args.budget_minutes, args.eval_limit, args.rerun) or run_in_subprocess(variant, args, k)
            if isinstance(row, dict):
                seeds.append(row)
            else:
                failed[f"{variant} (seed {k})"] = row
        if seeds:
            rows.append(aggregate(seeds))
    import torch

    header = (
        f"Learning race ({args.task}): {args.budget_minutes:g} min of training per run, {args.seeds} seed(s) per "
        f"variant, {os.cpu_count()} CPU cores (torch threads {torch.get_num_threads()}), held-out problems "
        f"({args.eval_limit or 'all'}), greedy"
    )
    notes = [verdict(rows, args.task)] + [f"FAILED: {name}: {reason}" for name, reason in failed.items()]
    table = "\n".join([header, "", format_table(rows), "", *notes])
    print("\n" + table)
    (output_dir / "race_table.md").write_text(table + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
