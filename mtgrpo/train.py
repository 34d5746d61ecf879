"""Train with a recipe: the one entry point for every place the trainer runs.

    python -m mtgrpo.train --config recipes/smollm2-135m-instruct/arithmetic-refine.yaml [--field value ...]
    mtgrpo train --config RECIPE [--field value ...]
    accelerate launch --config_file local_training/zero3.yaml -m mtgrpo.train --config RECIPE

The recipe's YAML gives the defaults, CLI flags override them (TRL's TrlParser). A run whose output_dir already
holds complete checkpoints resumes from the newest one.
"""

from __future__ import annotations

import difflib
import logging
import sys
from dataclasses import fields
from pathlib import Path

from .config import MTGRPOConfig, ScriptArguments
from .recipe_file import read_recipe

logger = logging.getLogger(__name__)


def _recipe_dataclasses():
    from trl import ModelConfig

    return (ScriptArguments, MTGRPOConfig, ModelConfig)


def check_recipe_keys(path: str | Path) -> dict:
    """Load a recipe and reject keys no dataclass knows, suggesting the closest field name."""
    recipe = read_recipe(path)
    known = {f.name for cls in _recipe_dataclasses() for f in fields(cls)} | {"env"}
    for key in recipe:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Unknown recipe key {key!r} in {path}.{hint} Fix the spelling or remove it; valid keys are the "
                "fields of mtgrpo.ScriptArguments, mtgrpo.MTGRPOConfig and trl.ModelConfig."
            )
    return recipe


def parse_recipe(argv: list[str] | None = None):
    """(script_args, training_args, model_args) from `--config RECIPE` plus CLI overrides."""
    from trl import TrlParser

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        check_recipe_keys(argv[argv.index("--config") + 1])
    parser = TrlParser(_recipe_dataclasses())
    return parser.parse_args_and_config(args=argv)


def build_trainer(script_args, training_args, model_args, trainer_cls=None):
    """Everything `main` does before `train()`: resolve the model, load data and rewards, build the trainer.

    `trainer_cls` (default MultiTurnGRPOTrainer) lets a benchmark build TRL's plain GRPOTrainer from the same recipe.
    """
    from transformers import AutoTokenizer
    from trl import get_peft_config

    from .data import load_recipe_split
    from .models import resolve_model_path
    from .registry import get_reward_funcs
    from .trainer import MultiTurnGRPOTrainer

    # Cheap checks first, so a bad recipe fails before any model is loaded or file is written.
    reward_funcs = get_reward_funcs(script_args.reward_funcs)
    train_dataset = load_recipe_split(script_args, "train", seed=training_args.seed)
    model_path = resolve_model_path(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=model_args.model_revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    return (trainer_cls or MultiTurnGRPOTrainer)(
        model=model_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .checkpoints import agreed_checkpoint
    from .signals import SaveOnSigterm

    try:  # bad input (recipe, data, rewards, prompt lengths, checkpoints): one clear line, exit status 2
        script_args, training_args, model_args = parse_recipe(argv)
        trainer = build_trainer(script_args, training_args, model_args)
        # An explicit --resume_from_checkpoint wins; otherwise the newest complete checkpoint, chosen once by rank 0
        # and broadcast, so every node resumes from the same step (every process calls this).
        checkpoint = agreed_checkpoint(training_args.output_dir, training_args.resume_from_checkpoint)
    except (ValueError, FileNotFoundError) as err:
        print(f"mtgrpo train: {err}", file=sys.stderr)
        return 2
    # SageMaker stop / spot reclaim sends SIGTERM 120 s before SIGKILL: save a complete checkpoint at the step's end.
    trainer.add_callback(SaveOnSigterm())
    if checkpoint:
        logger.info("Resuming from %s", checkpoint)
    from .feedback_model import FeedbackServerError

    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except FeedbackServerError as err:  # the feedback server is down or answers nothing: not a bug, say how to fix it
        print(f"mtgrpo train: {err}", file=sys.stderr)
        return 2
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(training_args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
