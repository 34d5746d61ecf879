#!/usr/bin/env bash
# bash requirements/refresh.sh          (run on purpose, then review `git diff requirements/` and run tests/run.sh)
# Regenerates the two lock files that CI and the README's commands install from:
#   requirements/main.lock    the newest versions pyproject.toml allows for the `cpu` and `dev` extras (constraints
#                             for local_training/install_cpu.sh: the CPU demo and the main test suite);
#   requirements/lowest.lock  every direct dependency at its declared lower bound, resolved together
#                             (tests/run_lowest_versions.sh installs exactly this set).
# pyproject.toml keeps the ranges users install from; the locks only make CI and the demo reproducible, so an
# upstream release cannot break them overnight. `bash tests/run.sh --latest` shows what the next refresh would break.
set -euo pipefail
cd "$(dirname "$0")/.."
uv_bin="${UV:-$(command -v uv || echo .venv/bin/uv)}"
if [ ! -x "${uv_bin}" ]; then
  echo "ERROR: uv not found; install the dev extras first (bash tests/run.sh) or 'pip install uv'." >&2
  exit 2
fi
# The CPU torch wheel lies in the machine's find-links folder (PIP_FIND_LINKS on these machines); uv does not read
# pip's configuration.
find_links=()
for dir in ${UV_FIND_LINKS:-${PIP_FIND_LINKS:-/opt/wheels}}; do
  [ -d "${dir}" ] && find_links+=(--find-links "${dir}")
done
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet "${find_links[@]}")
stamp="# Refreshed $(date -u +%Y-%m-%d) by requirements/refresh.sh with $("${uv_bin}" --version)."

compile() {  # compile OUTPUT [uv pip compile args...]
  local out="$1"; shift
  local tmp; tmp="$(mktemp)"
  "${uv_bin}" pip compile "$@" "${common[@]}" --no-header -o "${tmp}"
  {
    echo "${stamp}"
    echo "# Command: uv pip compile $* --python-version 3.11 --python-platform x86_64-manylinux_2_28 [--find-links DIR]"
    echo "# Do not edit by hand: run bash requirements/refresh.sh."
    # torch's local label (+cpu) names the CPU wheel of these machines; without it the same line also installs on
    # a machine that gets torch 2.13.0 from PyPI, while pip still prefers 2.13.0+cpu where that wheel is present.
    sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/' "${tmp}"
  } > "${out}"
  rm -f "${tmp}"
  echo "wrote ${out} ($(grep -c '^[a-zA-Z]' "${out}") packages)"
}

compile requirements/main.lock pyproject.toml requirements/main.in --extra cpu --extra dev
compile requirements/lowest.lock pyproject.toml requirements/lowest.in --extra cpu --resolution lowest-direct
