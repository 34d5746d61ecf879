"""Find the newest checkpoint a run can safely resume from.

    from mtgrpo.launch.checkpoints import latest_checkpoint
    trainer.train(resume_from_checkpoint=latest_checkpoint(args.output_dir))

transformers' `Trainer._save_checkpoint` writes straight into `checkpoint-N/` (no temp dir, no rename), in
this order: model weights, optimizer + scheduler (or DeepSpeed's `global_stepN/` shards), scaler, RNG states,
and `trainer_state.json` last. A job killed mid-save (spot interruption, OOM, Ctrl-C) therefore leaves a
directory that `transformers.trainer_utils.get_last_checkpoint` would still pick, and resuming from it
crashes or silently restarts the optimizer. We accept a directory only when all three parts are present, and a
DeepSpeed checkpoint only when it holds one optimizer shard per training process (a partly copied multi-node
checkpoint, e.g. a SageMaker spot restart that downloaded some ranks' shards, is skipped).

Multi-node runs must not let every process pick on its own: only global rank 0 writes `trainer_state.json`, the
weights and DeepSpeed's `latest`, and prunes old checkpoints, so nodes disagree. `agreed_checkpoint` lets rank 0
decide and broadcasts its choice; every process then checks it can read its own part of it:

    checkpoint = training_args.resume_from_checkpoint or agreed_checkpoint(training_args.output_dir)
"""

from __future__ import annotations

import json
import logging
import re
import socket
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
# DeepSpeed names each data-parallel rank's optimizer shard `[bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt`.
_SHARD_RE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed in this run (wrong world size, not visible on every node)."""


def _has_any(directory: Path, patterns: tuple[str, ...]) -> bool:
    return any(next(directory.glob(pattern), None) is not None for pattern in patterns)


def _deepspeed_dir(checkpoint: Path) -> Path | None:
    # DeepSpeed writes its own `global_stepN/` (model + optimizer shards) and, last, a `latest` file naming it.
    latest = checkpoint / "latest"
    if not latest.is_file():
        return None
    tag_dir = checkpoint / latest.read_text().strip()
    return tag_dir if tag_dir.is_dir() else None


def shard_ranks(checkpoint: str | Path) -> set[int]:
    """Ranks that have a DeepSpeed optimizer shard in the checkpoint's `latest` tag directory (empty without one)."""
    deepspeed = _deepspeed_dir(Path(checkpoint))
    if deepspeed is None:
        return set()
    return {int(m.group(1)) for p in deepspeed.iterdir() if (m := _SHARD_RE.search(p.name))}


def _describe(ranks: set[int]) -> str:
    ordered = sorted(ranks)
    if ordered == list(range(len(ordered))):
        return f"ranks 0-{len(ordered) - 1}" if len(ordered) > 1 else "rank 0"
    return "ranks " + ", ".join(map(str, ordered))


def missing_parts(
    checkpoint: str | Path, world_size: int | None = None, rank: int | None = None
) -> list[str]:
    """What a checkpoint directory lacks to be resumable; empty when it is complete.

    Args:
        world_size: training processes of the run that will resume; a DeepSpeed checkpoint must then hold
            exactly one optimizer shard per rank 0..world_size-1.
        rank: check only the shard this rank loads (what one process of a multi-node run can verify).
    """
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
    elif has_deepspeed_optim:
        ranks = shard_ranks(checkpoint)
        if rank is not None and rank not in ranks:
            missing.append(f"the DeepSpeed optimizer shard of rank {rank}")
        if world_size is not None and not set(range(world_size)) <= ranks:
            missing.append(
                f"DeepSpeed optimizer shards for {world_size} ranks (found {_describe(ranks)}: partly copied, or "
                "saved by a run with fewer processes)"
            )
    return missing


def _check_world_size(checkpoint: Path, world_size: int | None) -> None:
    ranks = shard_ranks(checkpoint)
    if world_size is not None and ranks and max(ranks) >= world_size:
        raise CheckpointError(
            f"{checkpoint} holds DeepSpeed shards of {len(ranks)} processes but this run has {world_size}; ZeRO "
            "cannot reload shards into another world size. Resume with the same number of nodes and training GPUs, "
            "or start in a new output_dir."
        )


def check_checkpoint(checkpoint: str | Path) -> None:
    """An explicit `resume_from_checkpoint` gets the check the automatic resume applies: a missing, empty or partial
    checkpoint, or one whose trainer_state.json is not JSON, is an error naming it and what is missing."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise CheckpointError(
            f"resume_from_checkpoint {checkpoint!r} is not a checkpoint folder (it does not exist or is a file). Pass "
            "a checkpoint-N folder of an earlier run, or leave it unset to resume from output_dir's newest one."
        )
    missing = missing_parts(path)
    if missing:
        broken = "trainer_state.json" in missing and (path / "trainer_state.json").is_file()
        what = ", ".join("trainer_state.json (not valid JSON)" if m == "trainer_state.json" and broken else m
                         for m in missing)  # fmt: skip
        raise CheckpointError(
            f"resume_from_checkpoint {checkpoint!r} is incomplete: missing {what} (a save that was interrupted?). "
            "Pass a complete checkpoint-N folder, or leave resume_from_checkpoint unset to resume from the newest "
            "complete one."
        )


def latest_checkpoint(output_dir: str | Path, world_size: int | None = None) -> str | None:
    """The newest complete `checkpoint-N` directory under `output_dir`, or None to start from scratch.

    Incomplete directories (a save that was interrupted) are skipped with a warning naming what is missing.
    With `world_size`, a DeepSpeed checkpoint needs a shard per rank, and one saved by more processes than
    `world_size` raises CheckpointError instead of silently restarting from an older step.
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
        _check_world_size(path, world_size)
        missing = missing_parts(path, world_size=world_size)
        if not missing:
            return str(path)
        logger.warning(
            "Skipping incomplete checkpoint %s (missing %s): it was probably interrupted while saving. "
            "Delete it once a newer checkpoint exists.",
            path,
            ", ".join(missing),
        )
    return None


def agreed_checkpoint(output_dir: str | Path, explicit: str | None = None) -> str | None:
    """The checkpoint every process of the run resumes from, decided once by global rank 0.

    Without torch.distributed initialised this is `explicit or latest_checkpoint(output_dir)`. Otherwise rank 0
    picks (an explicit path, or its newest checkpoint complete for the whole world size) and broadcasts the
    choice; each process then checks it can read its part of that checkpoint on its own disk, and every process
    raises the same CheckpointError when any cannot (output_dir must be storage all nodes see, see
    docs/production_gpu.md). Call it after the Trainer exists (the process group is up), on every process.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        if explicit:
            check_checkpoint(explicit)
        return explicit or latest_checkpoint(output_dir)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    decision: list = [None, None]  # [path, error message]
    if rank == 0:
        try:
            decision = [explicit or latest_checkpoint(output_dir, world_size=world_size), None]
        except CheckpointError as error:
            decision = [None, str(error)]
    dist.broadcast_object_list(decision, src=0)
    chosen, error = decision
    if error:
        raise CheckpointError(error)
    problem = None
    if chosen is not None:
        if not Path(chosen).is_dir():
            problem = "the directory does not exist here"
        elif missing := missing_parts(chosen, rank=rank):
            problem = "missing " + ", ".join(missing)
    problems: list = [None] * world_size
    dist.all_gather_object(problems, (socket.gethostname(), problem))
    bad = [(r, host, why) for r, (host, why) in enumerate(problems) if why]
    if bad:
        listing = "; ".join(f"rank {r} on {host}: {why}" for r, host, why in bad[:4])
        raise CheckpointError(
            f"Rank 0 resumes from {chosen}, but other processes cannot read it ({listing}). A multi-node run needs "
            "output_dir on storage every node sees (FSx for Lustre, EFS, NFS; on SageMaker /opt/ml/checkpoints "
            "synced to S3). Fix the storage, or start in a new output_dir."
        )
    return chosen
