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


# A new user's mistakes (the mistakes sweep): each ends in one line naming the file, field or flag and the fix.


@pytest.mark.parametrize("broken", ["tab", "unclosed_bracket", "folder"])
def test_recipe_that_cannot_be_read(tmp_path, broken):
    lines = (ROOT / DEMO).read_text().splitlines()
    recipe = tmp_path / "recipe.yaml"
    if broken == "tab":
        recipe.write_text("\n".join(line.replace("dtype:", "\tdtype:") for line in lines))
        result = run("mtgrpo.cli", "train", "--config", str(recipe), "--output_dir", str(tmp_path / "run"))
        assert_clean(result, str(recipe), "line 5", "tabs")
    elif broken == "unclosed_bracket":
        recipe.write_text("\n".join(line.replace("format_reward]", "format_reward") for line in lines))
        result = run("mtgrpo.cli", "doctor", "--config", str(recipe))
        assert_clean(result, str(recipe), "opened on line 11", "not valid YAML")
    else:
        result = run("mtgrpo.cli", "train", "--config", "recipes/smollm2-135m-instruct")
        assert_clean(result, "recipes/smollm2-135m-instruct", "is a folder")


def test_config_flag_without_a_recipe():
    assert_clean(run("mtgrpo.cli", "train", "--config"), "--config", "recipes/")
    assert_clean(run("mtgrpo.cli", "train", DEMO), repr(DEMO), f"--config {DEMO}")  # the recipe without --config


def test_train_flag_of_the_wrong_type_or_spelling(tmp_path):
    out = str(tmp_path / "run")
    wrong_type = run("mtgrpo.cli", "train", "--config", DEMO, "--max_steps", "many", "--output_dir", out)
    assert_clean(wrong_type, "--max_steps many", "an integer")
    assert len(wrong_type.stderr.strip().splitlines()) <= 3, wrong_type.stderr  # not argparse's 250-line usage
    misspelled = run("mtgrpo.cli", "eval", "--config", DEMO, "--max_stepz", "1", "--output_dir", out)
    assert_clean(misspelled, "--max_stepz", "Did you mean --max_steps?")
    in_the_recipe = tmp_path / "recipe.yaml"
    in_the_recipe.write_text((ROOT / DEMO).read_text().replace("max_steps: 10", "max_steps: many"))
    assert_clean(run("mtgrpo.cli", "train", "--config", str(in_the_recipe), "--output_dir", out),
                 "max_steps: 'many' is not an integer")  # fmt: skip


def test_reward_import_path_that_does_not_import(tmp_path):
    result = run("mtgrpo.cli", "train", "--config", DEMO, "--reward_funcs", "my_rewards.math:exact",
                 "--output_dir", str(tmp_path / "run"))  # fmt: skip
    assert_clean(result, "reward_funcs", "my_rewards.math:exact", "No module named 'my_rewards'")
    unknown = run("mtgrpo.cli", "train", "--config", DEMO, "--correctness_reward", "math_answer_corect",
                  "--max_steps", "1", "--output_dir", str(tmp_path / "run"))  # fmt: skip
    assert_clean(unknown, "correctness_reward", "math_answer_corect")  # not a warning, then a whole run
    assert not (tmp_path / "run").exists()


def test_a_misspelled_tool_fails_before_the_model_is_loaded(tmp_path):
    result = run("mtgrpo.cli", "train", "--config", "recipes/smollm2-135m-instruct/arithmetic-calculator.yaml",
                 "--tools", "calculater", "--output_dir", str(tmp_path / "run"))  # fmt: skip
    assert_clean(result, "calculater", "Did you mean 'calculator'?")
    assert "Loading weights" not in result.stderr


@pytest.mark.parametrize(
    "flag, value, needles",
    [
        ("--max_steps", "-3", ["max_steps=-3", "-1"]),  # HF trains a whole epoch (3000 steps) on max_steps <= 0
        ("--per_device_train_batch_size", "0", ["per_device_train_batch_size=0", ">= 1"]),
        ("--num_train_examples", "0", ["num_train_examples=0", ">= 1"]),  # said "no 'problem' column"
    ],
)
def test_sizes_that_cannot_train(tmp_path, flag, value, needles):
    result = run("mtgrpo.cli", "train", "--config", DEMO, flag, value, "--output_dir", str(tmp_path / "run"))
    assert_clean(result, *needles)
    assert not (tmp_path / "run").exists()


def test_output_dir_that_cannot_be_created(tmp_path):
    blocked = tmp_path / "a_file" / "run"  # below a file: no folder can be made there
    (tmp_path / "a_file").write_text("x")
    train = run("mtgrpo.cli", "train", "--config", DEMO, "--output_dir", str(blocked))
    assert_clean(train, "output_dir", str(blocked), "cannot be created")
    assert "Loading weights" not in train.stderr
    evaluation = run("mtgrpo.cli", "eval", "--config", DEMO, "--limit", "1", "--output_dir", str(blocked))
    assert_clean(evaluation, "--output_dir", str(blocked), "cannot be created")
    assert "eval smollm2" not in evaluation.stderr  # failed before evaluating, not after (losing the results)


def test_demo_mistakes_end_before_the_first_evaluation(tmp_path):
    out = ["--output_dir", str(tmp_path / "demo")]
    bad_reward = run("mtgrpo.cli", "demo", "--reward_funcs", "math_answer_corect", *out)
    assert_clean(bad_reward, "Unknown reward 'math_answer_corect'")
    gpu_recipe = run("mtgrpo.cli", "demo", "--config", "recipes/qwen2.5-1.5b-instruct/gsm8k-refine.yaml", *out)
    assert_clean(gpu_recipe, "use_vllm: true")
    missing = run("mtgrpo.cli", "demo", "--config", "recipes/no-such.yaml", *out)
    assert_clean(missing, "recipes/no-such.yaml", "does not exist")
    for result in (bad_reward, gpu_recipe, missing):
        assert "[2/4]" not in result.stdout
    assert not (tmp_path / "demo").exists()


def test_plot_mistakes(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # A run killed while it wrote its log leaves a cut-off last line: the steps before it still plot.
    log = '{"step": 1, "reward": 0.1}\n{"step": 2, "reward": 0.4}\n{"step": 3, "rew'
    (run_dir / "log_history.jsonl").write_text(log)
    cut_off = run("mtgrpo.cli", "plot", str(run_dir))
    assert cut_off.returncode == 0 and "Traceback" not in cut_off.stderr, cut_off.stderr[-3000:]
    assert "line 3" in cut_off.stderr and (run_dir / "plots" / "training_curves.png").is_file()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert_clean(run("mtgrpo.cli", "plot", str(run_dir), "--output", str(a_file)), "--output", str(a_file))
    assert_clean(run("mtgrpo.cli", "plot", str(a_file)), str(a_file), "is a file")


@pytest.mark.skipif(importlib.util.find_spec("sagemaker") is None, reason="the SDK checks run after the SDK import")
def test_sagemaker_instance_count_below_one():
    launch = [sys.executable, "sagemaker_training/launch.py", "--recipe", "tests/fixtures/recipes/gpu-server.yaml"]
    result = subprocess.run([*launch, "--instance-count", "0", "--dry-run"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "--instance-count 0" in result.stderr and ">= 1" in result.stderr


@pytest.mark.slow
def test_ctrl_c_during_training_keeps_what_was_logged(tmp_path, tiny_model_dir):
    import signal
    import time

    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = ["--config", DEMO, "--model_name_or_path", str(tiny_model_dir), "--max_steps", "200",
            "--num_train_examples", "64", "--episode_log_steps", "1", "--output_dir", str(out)]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "mtgrpo.cli", "train", *args], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    history = out / "log_history.jsonl"
    deadline = time.monotonic() + 240
    while not (history.is_file() and history.read_text().count("\n") >= 1):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    err = process.communicate(timeout=120)[1]
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("mtgrpo ")]
    assert len(ours) == 1 and "interrupted" in ours[0] and str(history) in ours[0], err[-3000:]
    assert history.read_text().count("\n") >= 1 and list((out / "episodes").glob("step_*.jsonl"))
