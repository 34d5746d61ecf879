"""Find the newest checkpoint a run can safely resume from.

    from mtgrpo.checkpoints import latest_checkpoint
    trainer.train(resume_from_checkpoint=latest_checkpoint(args.output_dir))

transformers' `Trainer._save_checkpoint` writes straight into `checkpoint-N/` (no temp dir, no rename), in
this order: model weights, optimizer + scheduler (or DeepSpeed's `global_stepN/` shards), scaler, RNG states,
and `trainer_state.json` last. A job killed mid-save (spot interruption, OOM, Ctrl-C) therefore leaves a
directory that `transformers.trainer_utils.get_last_checkpoint` would still pick, and resuming from it
crashes or silently restarts the optimizer. We accept a directory only when all three parts are present.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Full model (sharded or not), PEFT adapter, or FSDP's sharded state.
_WEIGHT_GLOBS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "pytorch_model_fsdp*",
)
# Plain torch optimizer, accelerate's name for it, or FSDP's sharded optimizer.
_OPTIMIZER_GLOBS = ("optimizer.pt", "optimizer.bin", "optimizer_0")


def _has_any(directory: Path, patterns: tuple[str, ...]) -> bool:
    return any(next(directory.glob(pattern), None) is not None for pattern in patterns)


def _deepspeed_dir(checkpoint: Path) -> Path | None:
    # DeepSpeed writes its own `global_stepN/` (model + optimizer shards) and, last, a `latest` file naming it.
    latest = checkpoint / "latest"
    if not latest.is_file():
        return None
    tag_dir = checkpoint / latest.read_text().strip()
    return tag_dir if tag_dir.is_dir() else None


def missing_parts(checkpoint: str | Path) -> list[str]:
    """What a checkpoint directory lacks to be resumable; empty when it is complete."""
    checkpoint = Path(checkpoint)
    missing = []
    state = checkpoint / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        missing.append("trainer_state.json")
    deepspeed = _deepspeed_dir(checkpoint)
    # Under ZeRO-3 without gathered 16-bit weights the model exists only as DeepSpeed shards.
    has_deepspeed_model = deepspeed is not None and next(deepspeed.glob("*model_states.pt"), None) is not None
    if not (_has_any(checkpoint, _WEIGHT_GLOBS) or has_deepspeed_model):
        missing.append("model weights")
    has_deepspeed_optim = deepspeed is not None and next(deepspeed.glob("*optim_states.pt"), None) is not None
    if not (_has_any(checkpoint, _OPTIMIZER_GLOBS) or has_deepspeed_optim):
        missing.append("optimizer state")
    return missing


def latest_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete `checkpoint-N` directory under `output_dir`, or None to start from scratch.

    Incomplete directories (a save that was interrupted) are skipped with a warning naming what is missing.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    candidates = []
    for path in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            candidates.append((int(match.group(1)), path))
    for _, path in sorted(candidates, reverse=True):
        missing = missing_parts(path)
        if not missing:
            return str(path)
        logger.warning(
            "Skipping incomplete checkpoint %s (missing %s): it was probably interrupted while saving. "
            "Delete it once a newer checkpoint exists.",
            path,
            ", ".join(missing),
        )
    return None
