#!/usr/bin/env bash
# Train a recipe on this GPU instance (EC2 P5 / P4d: 8 GPUs, 1 for vLLM rollouts and 7 for training):
#   local_training/train.sh recipes/qwen2.5-1.5b-instruct/gsm8k-refine.yaml [--dry-run] [--field value ...]
# Two instances: run on each, --node-rank 0 on the main one, whose private IP is --main-address:
#   local_training/train.sh RECIPE --num-nodes 2 --node-rank 0 --main-address 10.0.0.1
# Everything else (GPU split, vLLM server, accelerate config, stopping the server) is the node launcher's job;
# see `python -m mtgrpo.launch.cli --help`. Recipe fields as flags (--learning_rate 1.0e-06) override the recipe; the recipe
# and every flag are checked (unknown ones named with the closest valid one) before anything starts.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: $0 RECIPE [--dry-run] [launcher options] [--field value ...]" >&2
    exit 2
fi

# Importable from a plain checkout too, without changing the directory the recipe path is relative to.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
# exec: the launcher receives Ctrl-C/SIGTERM itself and stops training and the vLLM server.
exec "${PYTHON:-python}" -m mtgrpo.launch.cli "$@"
