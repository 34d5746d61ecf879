"""Train with a recipe: the one entry point for every place the trainer runs.

    python -m mtgrpo.train --config recipes/smollm2-135m-instruct/arithmetic-refine.yaml [--field value ...]
    mtgrpo train --config RECIPE [--field value ...]
    accelerate launch --config_file local_training/zero3.yaml -m mtgrpo.train --config RECIPE

The recipe's YAML gives the defaults, CLI flags override them (TRL's TrlParser). A run whose output_dir already
holds complete checkpoints resumes from the newest one.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .recipe import parse_recipe

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .feedback.model import FeedbackServerError
    from .launch.checkpoints import agreed_checkpoint, check_checkpoint
    from .launch.signals import SaveOnSigterm
    from .trainer import RolloutServerError, build_trainer

    try:  # bad input (recipe, data, rewards, prompt lengths, checkpoints): one clear line, exit status 2
        script_args, training_args, model_args = parse_recipe(argv)
        if training_args.resume_from_checkpoint:  # checked before any model is loaded
            check_checkpoint(training_args.resume_from_checkpoint)
        trainer = build_trainer(script_args, training_args, model_args)
        # An explicit --resume_from_checkpoint wins; otherwise the newest complete checkpoint, chosen once by rank 0
        # and broadcast, so every node resumes from the same step (every process calls this).
        checkpoint = agreed_checkpoint(training_args.output_dir, training_args.resume_from_checkpoint)
    # A rollout or feedback server that is down or cannot take weight updates fails while the trainer is built.
    except (ValueError, FileNotFoundError, FeedbackServerError, RolloutServerError) as err:
        print(f"mtgrpo train: {err}", file=sys.stderr)
        return 2
    # SageMaker stop / spot reclaim sends SIGTERM 120 s before SIGKILL: save a complete checkpoint at the step's end.
    trainer.add_callback(SaveOnSigterm())
    if checkpoint:
        logger.info("Resuming from %s", checkpoint)
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except FeedbackServerError as err:  # the feedback server is down or answers nothing: not a bug, say how to fix it
        print(f"mtgrpo train: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what matters is what the run kept on disk, not where Python was
        _close_progress_bar(trainer)  # so the message is a line of its own, not the tail of the bar's
        print(f"mtgrpo train: {_interrupted(trainer)}", file=sys.stderr)
        return 130
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(training_args.output_dir)
    return 0


def _close_progress_bar(trainer) -> None:
    from transformers.trainer_callback import ProgressCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ProgressCallback) and getattr(callback, "training_bar", None) is not None:
            callback.training_bar.close()
            callback.training_bar = None


def _interrupted(trainer) -> str:
    """What an interrupted run kept (logged metrics and transcripts are written as they come) and how to go on."""
    from .history import HISTORY_FILE
    from .launch.checkpoints import latest_checkpoint

    out = Path(trainer.args.output_dir)
    kept = [str(path) for path in (out / HISTORY_FILE, out / "episodes") if path.exists()]
    newest = latest_checkpoint(out)
    resume = f"the same command resumes from {newest}" if newest else "no checkpoint was saved, so a rerun starts over"
    step, steps = trainer.state.global_step, trainer.state.max_steps
    return f"interrupted (Ctrl-C) after step {step} of {steps}; kept {', '.join(kept) or 'nothing'}; {resume}."


if __name__ == "__main__":
    sys.exit(main())
