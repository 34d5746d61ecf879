#!/usr/bin/env bash
# bash tests/run.sh [pytest args]            the README's test command, and what .ci/run runs
# bash tests/run.sh --latest [pytest args]   the drift check: newest allowed versions instead of the locks
#
# Installs the CPU stack with the dev extras into .venv at the versions requirements/main.lock pins, runs the whole
# default suite (slow tests included), then the tokenizer / chat-turn / episode tests in the lowest-version
# environment (tests/run_lowest_versions.sh, requirements/lowest.lock). Prints how long each part took.
#
# --latest installs the newest versions pyproject.toml allows (into .venv-latest, leaving .venv alone), resolves the
# lowest-version environment afresh, runs both suites to the end even if the first fails, and lists every package
# whose version differs from the locks: what the next `bash requirements/refresh.sh` would change, and what broke.
set -euo pipefail
cd "$(dirname "$0")/.."
latest=0
if [ "${1:-}" = "--latest" ]; then
  shift
  latest=1
  export MTGRPO_UNLOCKED=1 MTGRPO_VENV=.venv-latest
fi
t0=${SECONDS}
source local_training/install_cpu.sh cpu,dev
t_install=$((SECONDS - t0))
echo "Installed in ${t_install} s"
collected=$(python -m pytest --collect-only -q "$@" | grep -c "::" || true)
if [ "${collected}" -eq 0 ]; then
  echo "ERROR: pytest collected no tests; refusing to report success." >&2
  exit 1
fi
echo "Running ${collected} tests"
t1=${SECONDS}
main_status=0
python -m pytest -q -ra "$@" || main_status=$?
t_main=$((SECONDS - t1))
if [ "${latest}" = 0 ] && [ "${main_status}" != 0 ]; then
  exit "${main_status}"
fi
t2=${SECONDS}
lowest_status=0
if [ "${latest}" = 1 ]; then
  UV="${VIRTUAL_ENV}/bin/uv" bash tests/run_lowest_versions.sh --latest || lowest_status=$?
else
  UV="${VIRTUAL_ENV}/bin/uv" bash tests/run_lowest_versions.sh || lowest_status=$?
fi
t_lowest=$((SECONDS - t2))
echo "Timing: install ${t_install} s, main suite ${t_main} s, lowest-version suite (install + tests) ${t_lowest} s"
if [ "${latest}" = 1 ]; then
  echo "Drift from requirements/main.lock (installed in ${MTGRPO_VENV} -> locked):"
  python - <<'PY'
import importlib.metadata as md, re
locked = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", open("requirements/main.lock").read(), re.M))
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {norm(k): v for k, v in locked.items()}
changed = sorted(
    f"  {norm(d.metadata['Name'])} {d.version} (lock {locked[norm(d.metadata['Name'])]})"
    for d in md.distributions()
    if norm(d.metadata["Name"]) in locked and d.version.split("+")[0] != locked[norm(d.metadata["Name"])].split("+")[0]
)
print("\n".join(changed) or "  none")
PY
  echo "Main suite: $([ "${main_status}" = 0 ] && echo passed || echo "FAILED (exit ${main_status})");" \
    "lowest-version suite: $([ "${lowest_status}" = 0 ] && echo passed || echo "FAILED (exit ${lowest_status})")."
  if [ "${main_status}" = 0 ] && [ "${lowest_status}" = 0 ]; then
    echo "Newest versions pass: bash requirements/refresh.sh, review the diff, commit."
  fi
fi
[ "${main_status}" = 0 ] && exit "${lowest_status}"
exit "${main_status}"
