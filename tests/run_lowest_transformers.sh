#!/usr/bin/env bash
# bash tests/run_lowest_transformers.sh     (run by tests/run.sh after the main suite, so by .ci/run too)
# Runs the tokenizer, chat-turn and episode tests against the LOWEST transformers the package declares (the GPU
# stack's `vllm` extra pins an older transformers than the CPU path). Kept fast: a second venv holds only that
# transformers and its own dependencies; everything else (torch, trl, mtgrpo itself) is read from .venv, which
# tests/run.sh has installed. The bundled model is converted again under this version, in its own cache.
set -euo pipefail
cd "$(dirname "$0")/.."
main_site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
lowest=$(.venv/bin/python - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
spec = next(d for d in deps if re.match(r"transformers\b", d))
print(re.search(r">=\s*([0-9][0-9.]*)", spec).group(1))
PY
)
venv=.venv-transformers-lowest
if [ ! -x "${venv}/bin/python" ]; then
  python3 -m venv "${venv}"
fi
lowest_site=$("${venv}/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -f "${lowest_site}/mtgrpo_main_venv.pth"  # pip must not see (and try to replace) the main venv's packages
PIP_DISABLE_PIP_VERSION_CHECK=1 "${venv}/bin/python" -m pip install -q "transformers==${lowest}" "packaging"
# Appended after this venv's own site-packages: its transformers (and tokenizers, huggingface-hub) win.
echo "import site; site.addsitedir('${main_site}')" > "${lowest_site}/mtgrpo_main_venv.pth"
version=$("${venv}/bin/python" -c "import transformers; print(transformers.__version__)")
if ! "${venv}/bin/python" -c "from packaging.version import Version as V; assert V('${version}') == V('${lowest}')"; then
  echo "ERROR: expected transformers ${lowest} in ${venv}, found ${version}." >&2
  exit 1
fi
echo "Tokenizer, chat-turn and episode tests against transformers ${version} (the lowest declared)"
export MTGRPO_CACHE="${PWD}/${venv}/mtgrpo-cache" HF_HUB_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
"${venv}/bin/python" -m pytest -q -ra -p no:cacheprovider \
  tests/test_chat.py tests/test_episodes.py tests/test_tool_episode.py tests/test_episodes_multiprocess.py \
  tests/test_code_refine.py tests/test_bundled_model.py "$@"
