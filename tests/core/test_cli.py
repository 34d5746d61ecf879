"""The `mtgrpo` command as a user runs it: bad input gives a clear error; one real step on the bundled model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = "recipes/smollm2-135m-instruct/arithmetic-refine.yaml"


def mtgrpo(*args, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mtgrpo.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--reward_funcs", "not_a_reward"], "Unknown reward 'not_a_reward'"),
        (["--dataset_name", "data/missing.jsonl", "--dataset_schema", "gsm8k"], "data/missing.jsonl"),
        (["--dataset_name", "tests/fixtures/math_sample.jsonl", "--dataset_schema", "gsm8k"], "question"),
        (["--feedback_source", "critic"], "Unknown feedback_source 'critic'"),
        (["--num_generations", "3"], "divisible by num_generations"),
    ],
)
def test_bad_input_fails_before_anything_is_written(tmp_path, overrides, message):
    out = tmp_path / "run"
    result = mtgrpo("train", "--config", DEMO, "--output_dir", str(out), *overrides)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not out.exists()


def test_unknown_recipe_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text((ROOT / DEMO).read_text() + "\nfeedback_sorce: self\n")
    result = mtgrpo("train", "--config", str(recipe))
    assert result.returncode == 2 and "Did you mean 'feedback_source'" in result.stderr


def test_unknown_command_lists_commands():
    result = mtgrpo("trian")
    assert result.returncode == 2 and "train" in result.stderr and "Unknown command" in result.stderr


@pytest.mark.slow
def test_train_one_step_on_the_bundled_model(tmp_path):
    out = tmp_path / "run"
    result = mtgrpo(
        "train", "--config", DEMO, "--max_steps", "1", "--output_dir", str(out),
        "--per_device_train_batch_size", "4", "--num_generations", "2", "--max_completion_length", "8",
        "--episode_log_steps", "1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    record = json.loads((out / "episodes" / "step_000000.jsonl").read_text().splitlines()[0])
    assert [t["role"] for t in record["turns"]] == ["solver", "feedback", "solver"]


@pytest.mark.slow
def test_demo_runs_the_calculator_recipe_end_to_end(tmp_path):
    # The default demo (no --config): eval without help, one training step with the call prefix, eval again.
    out = tmp_path / "demo"
    result = mtgrpo(
        "demo", "--max_steps", "1", "--output_dir", str(out), "--num_test_examples", "4",
        "--per_device_train_batch_size", "4", "--num_generations", "4", "--episode_log_steps", "1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "demo_results.json").read_text())
    assert "arithmetic-calculator.yaml" in " ".join(results["recipe"])
    assert {"turns/final/accuracy", "tools/calls_per_episode"} <= set(results["after"])
    assert "calls per episode" in result.stdout
    record = json.loads((out / "episodes" / "step_000000.jsonl").read_text().splitlines()[0])
    roles = [t["role"] for t in record["turns"]]
    assert roles[0] in ("prefix", "solver") and "solver" in roles
