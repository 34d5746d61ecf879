"""`mtgrpo eval`: a recipe's episode protocol on an evaluation split, scored turn by turn.

    mtgrpo eval --config recipes/smollm2-135m-instruct/arithmetic-refine.yaml --limit 20
    mtgrpo eval --config RECIPE --model_name_or_path runs/smollm2-135m-instruct/arithmetic-refine
    mtgrpo eval --config recipes/llama-3.2-1b-instruct/math-refine.yaml \
        --dataset_name HuggingFaceH4/MATH-500 --dataset_schema math --split test --num_samples 8

Greedy decoding gives accuracy after turn 1 and after the final turn, SCoRe's Δ(t1, final), Δ^{i→c}, Δ^{c→i},
mean tokens per turn and, for tool episodes, tool-call and success rates; `--num_samples k` adds pass@k from k
sampled episodes per problem. Writes OUTPUT_DIR/results.json, results.md (the table) and records.jsonl (one
transcript per problem). Any other `--field value` overrides the recipe (e.g. --dataset_name,
--dataset_schema, --dataset_config, --max_completion_length).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "transformers", "vllm")


@dataclass
class EvalReport:
    """results: what results.json holds (metrics, model, dataset, decoding); files: the paths written."""

    results: dict
    files: list[Path]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtgrpo eval",
        description="Evaluate a model with a recipe's episode protocol. Other --field value flags override the recipe.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config", required=True, help="recipe YAML (episode protocol, dataset, prompts, rewards)"
    )
    parser.add_argument("--split", help="evaluation split (default: the recipe's dataset_test_split)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N problems")
    parser.add_argument(
        "--output_dir",
        help="where results go (default: the model directory when it is a local one, else outputs/eval/<model>)",
    )
    parser.add_argument(
        "--num_samples", type=int, default=0, help="k sampled episodes per problem for pass@k"
    )
    parser.add_argument("--temperature", type=float, help="sampling temperature (default: the recipe's)")
    parser.add_argument("--batch_size", type=int, default=32, help="problems per generation call")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="auto = vLLM when installed and a GPU is visible"
    )
    return parser


def default_output_dir(model_name_or_path: str) -> Path:
    """Results sit next to a trained model (so `mtgrpo plot RUN_DIR` finds them); hub models get their own folder."""
    if Path(model_name_or_path).expanduser().is_dir():
        return Path(model_name_or_path).expanduser()
    return Path("outputs") / "eval" / re.sub(r"[^A-Za-z0-9._-]+", "_", model_name_or_path)


def _check_args(args) -> None:
    for flag, value, minimum in (("--limit", args.limit, 1), ("--num_samples", args.num_samples, 0),
                                 ("--batch_size", args.batch_size, 1)):  # fmt: skip
        if value is not None and value < minimum:
            raise ValueError(f"{flag} must be at least {minimum}, got {value}.")
    if args.temperature is not None and args.temperature <= 0:
        raise ValueError(
            f"--temperature must be positive, got {args.temperature}: it only applies to the --num_samples "
            "episodes; the headline metrics always use greedy decoding."
        )


def _choose_backend(requested: str) -> str:
    from .backends import vllm_available

    if requested == "auto":
        return "vllm" if vllm_available() else "transformers"
    if requested == "vllm" and not vllm_available():
        raise ValueError(
            "--backend vllm needs the vllm package and a CUDA GPU. Install the GPU extra (pip install -e '.[vllm]') "
            "on a GPU machine, or use --backend transformers."
        )
    return requested


def _check_model(name_or_path: str | None) -> str:
    from ..models import check_model_path, resolve_model_path

    if not name_or_path:
        raise ValueError(
            "No model: the recipe has no model_name_or_path. Pass --model_name_or_path PATH_OR_HUB_ID."
        )
    check_model_path(name_or_path)  # missing, a file, or a folder with no model in it: one line naming it
    return resolve_model_path(name_or_path)


def use_trained_feedback_model(training_args, model_dir: str | None, greedy: bool) -> None:
    """A bi-level run (train_feedback_model) trained its feedback writer too, and saved it next to the solver: the
    evaluation uses that one, frozen and in process (greedy unless sampling), never silently the untrained model
    the recipe names. `--train_feedback_model false` keeps the recipe's feedback model instead."""
    if not training_args.train_feedback_model:
        return
    from ..feedback.training import FEEDBACK_DIR
    from ..feedback.weights import FEEDBACK_ADAPTER

    root = Path(model_dir or "").expanduser()
    # feedback_lora: PEFT's own save of the solver writes the feedback adapter as a loadable folder next to it.
    saved, marker = (root / FEEDBACK_ADAPTER, "adapter_config.json") if training_args.feedback_lora else (
        root / FEEDBACK_DIR, "config.json")  # fmt: skip
    if not (saved / marker).is_file():
        raise FileNotFoundError(
            f"The recipe trains its feedback model (train_feedback_model: true), but {root} holds no trained one "
            f"({saved / marker} is missing). Evaluate a bi-level run's output_dir, or keep the recipe's feedback "
            "model with --train_feedback_model false."
        )
    training_args.feedback_model_name_or_path = str(saved)
    training_args.train_feedback_model = training_args.feedback_lora = False
    training_args.feedback_server_url = None
    if greedy:
        training_args.feedback_temperature = 0.0
    print(f"Feedback model: the trained one in {saved} (frozen, in process)", file=sys.stderr)


def run_eval(argv: list[str]) -> EvalReport:
    """Parse `mtgrpo eval` arguments, evaluate, write the result files. Raises on bad input, before writing."""
    parser = build_parser()
    args, recipe_argv = parser.parse_known_args(argv)
    _check_args(args)
    from ..recipe import parse_recipe

    if args.split:
        recipe_argv += ["--dataset_test_split", args.split]
    own_flags = [flag for action in parser._actions for flag in action.option_strings]
    script_args, training_args, model_args = parse_recipe(["--config", args.config, *recipe_argv], own_flags)
    backend_name = _choose_backend(args.backend)

    from ..episodes import build_episode
    from ..registry import get_reward_func
    from ..tasks.data import load_recipe_split
    from ..trainer import make_output_dir

    # Cheap checks first: a bad dataset or reward name fails before any model is loaded.
    correctness = get_reward_func(training_args.correctness_reward)
    dataset = load_recipe_split(script_args, "test", seed=training_args.seed, limit=args.limit)
    if len(dataset) == 0:
        raise ValueError(
            f"Split {script_args.dataset_test_split!r} of {script_args.dataset_name!r} is empty."
        )
    use_trained_feedback_model(training_args, model_args.model_name_or_path, greedy=not args.num_samples)
    episode = build_episode(training_args, for_evaluation=True)
    model_path = _check_model(model_args.model_name_or_path)
    output_dir = (
        Path(args.output_dir) if args.output_dir else default_output_dir(model_args.model_name_or_path)
    )
    make_output_dir(output_dir, "--output_dir")  # now, not after the whole evaluation ran and had nowhere to go
    temperature = args.temperature or training_args.temperature
    max_new_tokens = training_args.max_completion_length

    model, backend, tokenizer = _load(
        backend_name, model_path, model_args, max_new_tokens, training_args.seed
    )
    from .evaluate import evaluate

    started = time.time()
    result = evaluate(
        model, tokenizer, episode, dataset, correctness, max_new_tokens, batch_size=args.batch_size,
        desc=f"eval {Path(model_args.model_name_or_path).name}", backend=backend, num_samples=args.num_samples,
        temperature=temperature, seed=training_args.seed, chat_template_kwargs=training_args.chat_template_kwargs,
    )  # fmt: skip
    results = {
        "model": model_args.model_name_or_path,
        "recipe": args.config,
        "dataset": {
            "name": script_args.dataset_name,
            "config": script_args.dataset_config,
            "schema": script_args.dataset_schema,
            "split": script_args.dataset_test_split,
        },
        "num_problems": len(dataset),
        "episode": training_args.episode,
        "decoding": {
            "backend": backend_name,
            "max_new_tokens": max_new_tokens,
            "num_samples": args.num_samples,
            "temperature": temperature if args.num_samples else 0.0,
        },
        "seconds": round(time.time() - started, 1),
        "metrics": result.metrics,
    }
    return EvalReport(results=results, files=write_results(output_dir, results, result.records))


def _load(backend_name: str, model_path: str, model_args, max_new_tokens: int, seed: int):
    """(model or None, backend, tokenizer) for the chosen backend."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .backends import TransformersBackend, VLLMBackend

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model_args.model_revision)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if backend_name == "vllm":
            return None, VLLMBackend(model_path, tokenizer, max_new_tokens, seed=seed), tokenizer
        model = AutoModelForCausalLM.from_pretrained(
            model_path, revision=model_args.model_revision, dtype=model_args.dtype or "auto"
        )
    except OSError as err:
        raise FileNotFoundError(
            f"Could not load model {model_path!r}: {err}. Pass a directory with config.json and weights (a run's "
            "output_dir), or a hub id that is downloaded or reachable."
        ) from err
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    return model, TransformersBackend(model, tokenizer, max_new_tokens), tokenizer


def write_results(output_dir: Path, results: dict, records: list[dict]) -> list[Path]:
    """results.json, results.md and records.jsonl under `output_dir`; returns their paths."""
    from .evaluate import markdown_table

    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / "results.json", output_dir / "results.md", output_dir / "records.jsonl"]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(f"{describe(results)}\n\n{markdown_table({results['model']: results['metrics']})}\n")
    paths[2].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return paths


def describe(results: dict) -> str:
    """One line: what was evaluated on what, and how."""
    data, decoding = results["dataset"], results["decoding"]
    sampled = (
        f", pass@{decoding['num_samples']} at T={decoding['temperature']}" if decoding["num_samples"] else ""
    )
    return (
        f"**{results['model']}** on {data['name']} ({data['split']}, {results['num_problems']} problems), "
        f"{results['episode']} episodes, greedy{sampled}, {decoding['backend']} backend"
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        report = run_eval(argv)
    except (ValueError, OSError) as err:  # bad input: one clear line, no traceback
        print(f"mtgrpo eval: {err}", file=sys.stderr)
        return 2
    print((report.files[1]).read_text())
    for path in report.files:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
