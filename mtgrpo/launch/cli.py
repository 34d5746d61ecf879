"""`mtgrpo launch`: the node launcher's command line (plan with mtgrpo.launch.plan, run with .processes).

    mtgrpo launch RECIPE [--dry-run] [--field value ...]
    python -m mtgrpo.launch.cli RECIPE --num-nodes 2 --node-rank 1 --main-address 10.0.0.1   # second node
    python -m mtgrpo.launch.cli RECIPE --num-nodes 3 --node-rank R --main-address 10.0.0.1 --generation-node 10.0.0.3

Other flags (`--learning_rate 1.0e-06`, ...) are recipe overrides for mtgrpo.train; a flag that is neither a launcher option
nor a recipe field (`--num-node 2`) is an error before anything starts. Local EC2
(local_training/train.sh) and SageMaker (sagemaker_training/entrypoint.py) both call this module.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..recipe import check_recipe
from .plan import (
    DEFAULT_SERVER_TIMEOUT,
    TRAIN_STOP_GRACE_SECONDS,
    LaunchPlan,
    detect_gpus,
    format_plan,
    plan_launch,
)
from .processes import (
    DEFAULT_PEER_TIMEOUT,
    ServerError,
    execute,
    is_healthy,
    stop_process_group,
    wait_for_server,
)

__all__ = [
    "LaunchPlan", "ServerError", "build_parser", "execute", "format_plan", "is_healthy", "main", "plan_launch",
    "stop_process_group", "wait_for_server",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtgrpo launch",
        usage="mtgrpo launch RECIPE [options] [--field value ...]",
        description="Start the vLLM rollout server and accelerate on this node for a recipe. "
        "Unknown --field value flags are recipe overrides passed to mtgrpo.train.",
        allow_abbrev=False,  # `--num` must not silently match `--num-gpus` instead of reaching mtgrpo.train
    )
    parser.add_argument("--config", help="the recipe (alternative to the positional RECIPE)")
    parser.add_argument("--num-gpus", type=int, help="GPUs on this node (default: detected)")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--main-address", help="address of the rank-0 node (multi-node)")
    parser.add_argument("--main-port", type=int, default=29500, help="rendezvous port on the rank-0 node")
    parser.add_argument("--accelerate-config", help="accelerate YAML (default: picked from local_training/)")
    parser.add_argument("--log-dir", help="vLLM server log directory (default: <output_dir>/logs)")
    parser.add_argument(
        "--server-timeout", type=float, default=DEFAULT_SERVER_TIMEOUT, help="seconds to wait for /health"
    )
    parser.add_argument(
        "--generation-node",
        metavar="ADDRESS",
        help="dedicated vLLM node: the node with the last rank serves vLLM on all its GPUs at ADDRESS, the "
        "others train on all theirs (needs --num-nodes >= 2 and a vllm_mode: server recipe)",
    )
    parser.add_argument(
        "--peer-timeout",
        type=float,
        default=DEFAULT_PEER_TIMEOUT,
        help="seconds the main node may stay unreachable before this node stops (nodes other than rank 0)",
    )
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=TRAIN_STOP_GRACE_SECONDS,
        help="seconds training gets to save a checkpoint after SIGTERM/Ctrl-C before it is killed",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands and variables, start nothing"
    )
    return parser


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The recipe comes first so that values of unknown override flags are never taken for it.
    recipe = argv.pop(0) if argv and not argv[0].startswith("-") else None
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    recipe = recipe or args.config
    if not recipe:
        parser.error("give the recipe: mtgrpo launch RECIPE [options]")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        # Before any server or training process starts: the whole recipe, its overrides and their types, and no
        # misspelled launcher flag (`--num-node 2`) passed on to training as a recipe setting.
        check_recipe(recipe, overrides, launcher_flags=_flags(parser))
        plan = plan_launch(
            recipe,
            num_gpus=detect_gpus() if args.num_gpus is None else args.num_gpus,
            num_nodes=args.num_nodes,
            node_rank=args.node_rank,
            main_address=args.main_address,
            main_port=args.main_port,
            accelerate_config=args.accelerate_config,
            train_overrides=overrides,
            visible_devices=visible or None,
            log_dir=args.log_dir,
            generation_node=args.generation_node,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"mtgrpo launch: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(format_plan(plan, args.server_timeout))
        return 0
    return execute(plan, args.server_timeout, peer_timeout=args.peer_timeout, stop_grace=args.stop_grace)


if __name__ == "__main__":
    sys.exit(main())
