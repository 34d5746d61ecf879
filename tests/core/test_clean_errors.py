"""Every mistake a user can make in a dataset, a model path, a checkpoint, a reward or a size ends in one clear line
with exit status 2, before anything is loaded or written (issue 21, items 1-4 and 6). Driven through the real CLI."""

import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
DEMO = "recipes/smollm2-135m-instruct/arithmetic-refine.yaml"
CODE = "recipes/smollm2-135m-instruct/humaneval-refine.yaml"


def run(module, *args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_clean(result, *needles):
    err = result.stderr
    assert result.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    for needle in needles:
        assert needle in err, err[-3000:]
    # One or two lines of our own (log lines from libraries start with a level name or are progress bars).
    ours = [line for line in err.splitlines() if line.startswith("mtgrpo ")]
    assert len(ours) == 1 and len(ours[0]) < 600, err[-3000:]


def _mbpp_rows():
    return [json.loads(line) for line in (FIXTURES / "mbpp_full_sample.jsonl").read_text().splitlines() if line]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _dataset_case(tmp_path, kind):
    """(train flags, expected words) for one broken dataset file."""
    if kind == "empty":
        path = tmp_path / "empty.jsonl"
        path.write_text("")
        return ["--dataset_name", str(path), "--dataset_schema", "gsm8k"], [str(path), "empty"]
    if kind == "malformed":
        path = tmp_path / "bad.jsonl"
        lines = (FIXTURES / "gsm8k_sample.jsonl").read_text().splitlines()
        path.write_text("\n".join([lines[0], lines[1], '{"question": "x", "answer"', *lines[2:]]) + "\n")
        return ["--dataset_name", str(path), "--dataset_schema", "gsm8k"], [str(path), "line 3"]
    if kind == "truncated_gz":
        path = tmp_path / "HumanEval.jsonl.gz"
        path.write_bytes((FIXTURES / "HumanEval_sample.jsonl.gz").read_bytes()[:400])
        return ["--config", CODE, "--dataset_name", str(path)], [str(path), "truncated"]
    if kind == "no_tests":
        rows = [{**r, "test_list": []} for r in _mbpp_rows()]
        path = _write_jsonl(tmp_path / "mbpp.jsonl", rows)
        return ["--config", CODE, "--dataset_name", str(path), "--dataset_schema", "mbpp"], ["mbpp.jsonl", "test"]
    if kind == "bad_test":
        rows = _mbpp_rows()
        rows[1]["test_list"][0] = "assert similar_elements((3, 4) == (4,"
        path = _write_jsonl(tmp_path / "mbpp.jsonl", rows)
        return ["--config", CODE, "--dataset_name", str(path), "--dataset_schema", "mbpp"], ["row 2", "not valid Python"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["empty", "malformed", "truncated_gz", "no_tests", "bad_test"])
def test_broken_dataset_files(tmp_path, kind):
    flags, needles = _dataset_case(tmp_path, kind)
    if "--config" not in flags:
        flags = ["--config", DEMO, *flags]
    out = tmp_path / "run"
    result = run("mtgrpo.cli", "train", *flags, "--output_dir", str(out))
    assert_clean(result, *needles)
    assert not out.exists()


def test_model_paths(tmp_path):
    a_file = tmp_path / "model.bin"
    a_file.write_text("x")
    empty = tmp_path / "empty_model"
    empty.mkdir()
    for path, words in [
        (tmp_path / "no" / "such" / "model", ["does not exist"]),
        (a_file, ["is a file"]),
        (empty, ["no model in it"]),
    ]:
        result = run("mtgrpo.cli", "train", "--config", DEMO, "--model_name_or_path", str(path),
                     "--output_dir", str(tmp_path / "run"))  # fmt: skip
        assert_clean(result, "model_name_or_path", str(path), *words)
    feedback = run("mtgrpo.train", "--config", "recipes/smollm2-135m-instruct/arithmetic-model-feedback.yaml",
                   "--feedback_model_name_or_path", "./no/such/feedback", "--output_dir", str(tmp_path / "run"))  # fmt: skip
    assert_clean(feedback, "feedback_model_name_or_path", "./no/such/feedback", "does not exist")
    evaluation = run("mtgrpo.cli", "eval", "--config", DEMO, "--model_name_or_path", str(empty), "--limit", "1",
                     "--output_dir", str(tmp_path / "eval"))  # fmt: skip
    assert_clean(evaluation, str(empty), "no model in it")
    assert "sentencepiece" not in evaluation.stderr.lower()


def test_output_dir_that_is_a_file_and_zero_completion_length(tmp_path):
    a_file = tmp_path / "out.txt"
    a_file.write_text("x")
    result = run("mtgrpo.cli", "train", "--config", DEMO, "--output_dir", str(a_file))
    assert_clean(result, "output_dir", str(a_file), "is a file")
    zero = run("mtgrpo.cli", "train", "--config", DEMO, "--max_completion_length", "0", "--output_dir",
               str(tmp_path / "run"))  # fmt: skip
    assert_clean(zero, "max_completion_length")
    assert "max_new_tokens" not in zero.stderr


@pytest.mark.parametrize("broken", ["empty", "partial", "bad_state"])
def test_explicit_resume_from_a_broken_checkpoint(tmp_path, broken):
    checkpoint = tmp_path / "checkpoint-5"
    checkpoint.mkdir()
    if broken != "empty":
        (checkpoint / "model.safetensors").write_bytes(b"x")
    if broken == "bad_state":
        (checkpoint / "optimizer.pt").write_bytes(b"x")
        (checkpoint / "trainer_state.json").write_text("{not json")
    result = run("mtgrpo.cli", "train", "--config", DEMO, "--resume_from_checkpoint", str(checkpoint),
                 "--output_dir", str(tmp_path / "run"))  # fmt: skip
    words = {"empty": ["model weights", "trainer_state.json"], "partial": ["optimizer state"],
             "bad_state": ["trainer_state.json (not valid JSON)"]}[broken]  # fmt: skip
    assert_clean(result, str(checkpoint), *words)


def test_reward_whose_column_the_data_lacks(tmp_path):
    out = tmp_path / "run"
    result = run("mtgrpo.cli", "train", "--config", DEMO, "--reward_funcs", "code_tests_passed",
                 "--correctness_reward", "code_tests_passed", "--output_dir", str(out))  # fmt: skip
    assert_clean(result, "code_tests_passed", "'tests'", "arithmetic")
    assert not out.exists()


def test_a_good_gz_file_still_loads():
    from mtgrpo.tasks.data import load_task_dataset

    with gzip.open(FIXTURES / "HumanEval_sample.jsonl.gz", "rt") as f:
        count = sum(1 for line in f if line.strip())
    assert len(load_task_dataset(str(FIXTURES / "HumanEval_sample.jsonl.gz"), "humaneval")) == count


def test_dead_feedback_server_while_the_trainer_is_built(tmp_path):
    # Issue 21, item 15: a trainable feedback model's server is contacted when the trainer is built (weight pushes).
    url = "http://127.0.0.1:9"  # nothing listens on the discard port
    result = run("mtgrpo.train", "--config", "recipes/smollm2-135m-instruct/arithmetic-bilevel.yaml",
                 "--feedback_server_url", url, "--feedback_timeout", "1", "--output_dir", str(tmp_path / "run"))  # fmt: skip
    assert_clean(result, url)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="about a machine without vLLM")
def test_use_vllm_without_vllm_installed(tmp_path):
    # A GPU recipe run on a CPU machine: TRL would raise ImportError only after loading the model.
    result = run("mtgrpo.train", "--config", DEMO, "--use_vllm", "true", "--output_dir", str(tmp_path / "run"))
    assert_clean(result, "use_vllm: true", "not installed", "mtgrpo[vllm]", "--use_vllm false")
    assert not (tmp_path / "run").exists()
