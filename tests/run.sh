#!/usr/bin/env bash
# bash tests/run.sh [pytest args]
# Installs the CPU stack with the dev extras and runs the whole default suite (slow tests included), then the
# tokenizer / chat-turn / episode tests against the lowest declared transformers (tests/run_lowest_transformers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source local_training/install_cpu.sh cpu,dev
collected=$(python -m pytest --collect-only -q "$@" | grep -c "::" || true)
if [ "${collected}" -eq 0 ]; then
  echo "ERROR: pytest collected no tests; refusing to report success." >&2
  exit 1
fi
echo "Running ${collected} tests"
python -m pytest -q -ra "$@"
# The tokenizer, chat-turn and episode tests again, against the lowest transformers the package declares.
bash tests/run_lowest_transformers.sh
