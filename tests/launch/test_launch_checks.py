"""The launchers check the whole recipe and every flag before they start anything (issue 21, item 5):
local_training/train.sh (the node launcher) and sagemaker_training/launch.py, driven as a user runs them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GPU_RECIPE = "tests/fixtures/recipes/gpu-server.yaml"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1",
       "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}  # fmt: skip


def _run(args, env=ENV):
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _assert_clean(result, *needles):
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for needle in needles:
        assert needle in result.stderr, result.stderr[-3000:]


def _recipe(tmp_path, extra: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text((REPO / GPU_RECIPE).read_text() + "\n" + extra + "\n")
    return str(path)


def test_train_sh_rejects_a_misspelled_launcher_flag_before_starting_anything(tmp_path):
    logs = tmp_path / "logs"
    result = _run(["local_training/train.sh", GPU_RECIPE, "--num-gpus", "8", "--num-node", "2", "--log-dir", str(logs)])
    _assert_clean(result, "Unknown flag --num-node", "Did you mean --num-nodes?")
    assert not logs.exists()  # no vLLM server was started (it would log there)


@pytest.mark.parametrize(
    "extra, overrides, needles",
    [
        ("learning_rat: 1.0e-06", [], ["Unknown recipe key 'learning_rat'", "Did you mean 'learning_rate'?"]),
        ("max_steps: many", [], ["max_steps", "'many'", "an integer"]),
        ("", ["--learning_rate", "fast"], ["--learning_rate fast", "a number"]),
        ("", ["--bf16", "maybe"], ["--bf16 maybe", "true or false"]),
    ],
)
def test_node_launcher_checks_the_whole_recipe(tmp_path, extra, overrides, needles):
    recipe = _recipe(tmp_path, extra)
    result = _run([sys.executable, "-m", "mtgrpo.launch.cli", recipe, "--num-gpus", "8", "--dry-run", *overrides])
    _assert_clean(result, *needles)
    assert result.stdout == ""  # not even the plan is printed


def test_node_launcher_still_passes_recipe_overrides():
    result = _run([sys.executable, "-m", "mtgrpo.launch.cli", GPU_RECIPE, "--num-gpus", "8", "--dry-run",
                   "--learning_rate", "1.0e-06", "--report_to", "none", "--bf16"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--learning_rate 1.0e-06 --report_to none --bf16" in result.stdout


def _fake_missing_sdk(tmp_path) -> dict:
    """An environment in which `import sagemaker` fails as it does where the extra is not installed."""
    fake = tmp_path / "no_sdk" / "sagemaker"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'sagemaker'\", name='sagemaker')\n")
    return {**ENV, "PYTHONPATH": f"{fake.parent}{os.pathsep}{REPO}"}


def test_sagemaker_launch_checks_recipe_and_flags_before_the_sdk(tmp_path):
    env = _fake_missing_sdk(tmp_path)
    launch = [sys.executable, "sagemaker_training/launch.py", "--dry-run"]
    bad_key = _run([*launch, "--recipe", _recipe(tmp_path, "feedback_sorce: self")], env)
    _assert_clean(bad_key, "Did you mean 'feedback_source'?")
    bad_flag = _run([*launch, "--recipe", GPU_RECIPE, "--instance-cont", "2"], env)
    _assert_clean(bad_flag, "Unknown flag --instance-cont", "Did you mean --instance-count?")
    no_sdk = _run([*launch, "--recipe", GPU_RECIPE], env)
    _assert_clean(no_sdk, "mtgrpo[sagemaker]")
    assert len(no_sdk.stderr.strip().splitlines()) == 1, no_sdk.stderr
