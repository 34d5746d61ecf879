"""The CPU demo: evaluate the bundled model, train it with the demo recipe, evaluate again.

    mtgrpo demo [--config recipes/smollm2-135m-instruct/arithmetic-calculator.yaml] [--field value ...]

The default recipe is tool use where the tool carries what the model lacks: two-digit products with the `calculator`
tool and MT-GRPO turn credit (the model learns to call the calculator by itself; evaluation gives it no help). The
SCoRe, checker and refine demos run with --config recipes/smollm2-135m-instruct/arithmetic-{score,checker,refine}.yaml.

Prints per-turn accuracy (and tool-call / checker figures) on the recipe's held-out split before and after
training, and writes them to OUTPUT_DIR/demo_results.json.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

DEFAULT_RECIPE = "recipes/smollm2-135m-instruct/arithmetic-calculator.yaml"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", DEFAULT_RECIPE, *argv]

    from transformers import AutoModelForCausalLM

    from .episodes import build_episode
    from .evaluation.evaluate import evaluate
    from .models import resolve_model_path
    from .recipe import parse_recipe
    from .registry import get_reward_func
    from .tasks.data import load_recipe_split
    from .trainer import build_trainer, check_training_inputs, load_tokenizer, make_output_dir

    try:  # bad input: one clear line, exit status 2, before the first evaluation (minutes) rather than after it
        script_args, training_args, model_args = parse_recipe(argv)
        started = time.time()
        check_training_inputs(script_args, training_args, model_args)
        test_set = load_recipe_split(script_args, "test", seed=training_args.seed)
        episode = build_episode(training_args, for_evaluation=True)
        correctness = get_reward_func(training_args.correctness_reward, "correctness_reward")
        make_output_dir(training_args.output_dir)
        print("[1/4] Preparing the model", flush=True)
        model_path = resolve_model_path(model_args.model_name_or_path)
        tokenizer = load_tokenizer(model_path, model_args)
    except (ValueError, FileNotFoundError) as err:
        print(f"mtgrpo demo: {err}", file=sys.stderr)
        return 2

    def held_out(model, desc):
        return evaluate(
            model, tokenizer, episode, test_set, correctness, training_args.max_completion_length, desc=desc,
            chat_template_kwargs=training_args.chat_template_kwargs,
        )  # fmt: skip

    print(f"[2/4] Evaluating the untrained model on {len(test_set)} held-out problems", flush=True)
    before = held_out(AutoModelForCausalLM.from_pretrained(model_path), "eval before").metrics
    print(f"[3/4] Training ({training_args.max_steps} steps)", flush=True)
    trainer = build_trainer(script_args, training_args, model_args)
    trainer.train()
    trainer.save_model(training_args.output_dir)
    tokenizer.save_pretrained(training_args.output_dir)
    print("[4/4] Evaluating the trained model", flush=True)
    after = held_out(trainer.model, "eval after").metrics

    results = {"before": before, "after": after, "minutes": (time.time() - started) / 60, "recipe": argv}
    Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(training_args.output_dir) / "demo_results.json").write_text(json.dumps(results, indent=2))
    print(format_table(before, after, len(test_set)))
    print(f"Done in {results['minutes']:.1f} min; model and results in {training_args.output_dir}")
    return 0


def format_table(before: dict, after: dict, n: int) -> str:
    rows = [("turn-1 accuracy", "turns/1/accuracy"), ("final accuracy", "turns/final/accuracy"),
            ("delta (final - turn 1)", "self_correction/delta"),
            ("wrong -> right (i->c)", "self_correction/incorrect_to_correct"),
            ("right -> wrong (c->i)", "self_correction/correct_to_incorrect")]
    # What the turns carried: tool calls made and how many ran, the checker's counts.
    rows += [(key.split("/", 1)[1].replace("_", " "), key) for key in ("tools/calls_per_episode", "tools/success_rate",
             "feedback_checker/claims_checked", "feedback_checker/claims_wrong") if key in before or key in after]
    lines = [f"\nHeld-out problems ({n}, greedy)", f"{'':24}{'before':>10}{'after':>10}"]
    for label, key in rows:
        if key in before or key in after:
            lines.append(f"{label:24}{before.get(key, float('nan')):>10.3f}{after.get(key, float('nan')):>10.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
