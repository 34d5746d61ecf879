"""Evaluation: metrics on hand-built records, the eval loop on scripted generations, the CLI as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from mtgrpo.episodes import RefineEpisode
from mtgrpo.evaluation import cli as eval_cli
from mtgrpo.evaluation.evaluate import evaluate, markdown_table, summarize
from mtgrpo.registry import get_reward_func

ROOT = Path(__file__).resolve().parents[2]
DEMO = "recipes/smollm2-135m-instruct/arithmetic-refine.yaml"


def _record(turn1: bool, final: bool, **extra) -> dict:
    turns = [{"role": "solver", "text": "", "tokens": 10}, {"role": "feedback", "text": "", "tokens": 4},
             {"role": "solver", "text": "", "tokens": 6}]  # fmt: skip
    return {
        "problem": "p",
        "answer": "1",
        "turns": turns,
        "correct": {"turn1": turn1, "final": final},
        **extra,
    }


def test_self_correction_metrics_of_four_problems():
    # c->c, i->c, c->i, i->i: both accuracies 1/2, no net change, one flip each way.
    metrics = summarize(
        [_record(True, True), _record(False, True), _record(True, False), _record(False, False)]
    )
    assert metrics["turns/1/accuracy"] == 0.5 and metrics["turns/final/accuracy"] == 0.5
    assert metrics["self_correction/delta"] == 0.0
    assert metrics["self_correction/incorrect_to_correct"] == 0.25
    assert metrics["self_correction/correct_to_incorrect"] == 0.25
    assert metrics["tokens/solver/mean"] == 8.0 and metrics["tokens/feedback/mean"] == 4.0

    # c->c, i->c, i->c, i->i: 1/4 -> 3/4.
    metrics = summarize(
        [_record(True, True), _record(False, True), _record(False, True), _record(False, False)]
    )
    assert metrics["self_correction/delta"] == 0.5
    assert (
        metrics["self_correction/incorrect_to_correct"],
        metrics["self_correction/correct_to_incorrect"],
    ) == (0.5, 0.0)


def test_episode_metrics_are_pooled_and_pass_at_k():
    records = [
        _record(False, False, episode_metrics={"tools/success_rate": [1.0, 0.0]}, samples=[
            {"turn1": False, "final": True}, {"turn1": False, "final": False}]),
        _record(True, True, episode_metrics={"tools/success_rate": [1.0]}, samples=[
            {"turn1": False, "final": False}, {"turn1": False, "final": False}]),
    ]  # fmt: skip
    metrics = summarize(records)
    assert metrics["tools/success_rate"] == pytest.approx(2 / 3)  # pooled over calls, as the trainer logs it
    assert metrics["pass@2/final"] == 0.5 and metrics["pass@2/turn1"] == 0.0


def test_final_only_episodes_have_no_turn1_metrics():
    records = [{"turns": [], "correct": {"final": True}}, {"turns": [], "correct": {"final": False}}]
    assert summarize(records) == {"turns/final/accuracy": 0.5}


def test_markdown_table_rows_and_columns():
    table = markdown_table(
        {"before": {"turns/1/accuracy": 0.25, "tokens/solver/mean": 12.5},
         "after": {"turns/1/accuracy": 0.5, "tools/calls_per_episode": 1.25}}
    )  # fmt: skip
    lines = table.splitlines()
    assert lines[0] == "| metric | before | after |"
    assert "| accuracy after turn 1 (`turns/1/accuracy`) | 0.250 | 0.500 |" in lines
    assert "| tool calls per episode (`tools/calls_per_episode`) | – | 1.2 |" in lines
    assert "| mean tokens per solver turn (`tokens/solver/mean`) | 12.5 | – |" in lines


class _ScriptedBackend:
    """Answers by problem: '5 + 5' right then wrong (c->i), '1 + 1' wrong then right (i->c); samples always right."""

    def __init__(self, tokenizer):
        self.tokenizer, self.stop_ids = tokenizer, {tokenizer.eos_token_id}

    def generate_fn(self, temperature):
        def generate(prompt_ids, num_generations):
            out = []
            for ids in prompt_ids:
                text = self.tokenizer.decode(ids)
                first = "The answer is 10." if "5 + 5" in text else "The answer is 3."
                refined = "The answer is 11." if "5 + 5" in text else "The answer is 2."
                answer = "The answer is 10." if "5 + 5" in text else "The answer is 2."
                reply = (
                    answer
                    if temperature > 0
                    else refined
                    if text.count("<|im_start|>assistant") > 1
                    else first
                )
                out.append(
                    self.tokenizer(reply, add_special_tokens=False)["input_ids"]
                    + [self.tokenizer.eos_token_id]
                )
            return out, None

        return generate


def test_evaluate_runs_the_episode_protocol(tokenizer):
    dataset = datasets.Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"What is {q}?"}], "answer": a, "problem": q}
         for q, a in (("5 + 5", "10"), ("1 + 1", "2"))]
    )  # fmt: skip
    episode = RefineEpisode(feedback_source="template", feedback_template="Check it.", refine_prompt="Again.")
    result = evaluate(
        None, tokenizer, episode, dataset, get_reward_func("math_answer_correct"), 16,
        backend=_ScriptedBackend(tokenizer), num_samples=3,
    )  # fmt: skip
    assert [r["correct"] for r in result.records] == [
        {"turn1": True, "final": False},
        {"turn1": False, "final": True},
    ]
    assert [t["role"] for t in result.records[0]["turns"]] == ["solver", "feedback", "solver"]
    assert result.records[0]["turns"][2]["text"] == "The answer is 11."
    assert len(result.records[1]["samples"]) == 3
    m = result.metrics
    assert (m["self_correction/incorrect_to_correct"], m["self_correction/correct_to_incorrect"]) == (
        0.5,
        0.5,
    )
    assert m["pass@3/final"] == 1.0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--limit", "0"], "--limit must be at least 1"),
        (["--model_name_or_path", "runs/does/not-exist"], "does not exist"),
        (["--dataset_name", "data/missing.jsonl", "--dataset_schema", "gsm8k"], "data/missing.jsonl"),
        (["--dataset_schema", "nope"], "Unknown dataset_schema 'nope'"),
        (["--backend", "vllm"], "--backend transformers"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, flags, message):
    if "vllm" in flags and eval_cli._choose_backend("auto") == "vllm":
        pytest.skip("vLLM and a GPU are available here")
    out = tmp_path / "eval"
    assert eval_cli.main(["--config", DEMO, "--output_dir", str(out), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_default_output_dir_sits_next_to_a_local_model(tmp_path):
    assert eval_cli.default_output_dir(str(tmp_path)) == tmp_path
    assert eval_cli.default_output_dir("Qwen/Qwen2.5-1.5B-Instruct") == Path(
        "outputs/eval/Qwen_Qwen2.5-1.5B-Instruct"
    )


@pytest.mark.slow
def test_eval_cli_on_the_bundled_model(tmp_path):
    out = tmp_path / "eval"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mtgrpo.cli", "eval", "--config", DEMO, "--limit", "4", "--output_dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "problem/s" in run.stderr or "problem]" in run.stderr  # the progress bar over problems
    results = json.loads((out / "results.json").read_text())
    assert results["num_problems"] == 4 and results["dataset"]["split"] == "test"
    for name in ("turns/1/accuracy", "turns/final/accuracy", "self_correction/delta",
                 "self_correction/incorrect_to_correct", "self_correction/correct_to_incorrect", "tokens/solver/mean"):  # fmt: skip
        assert name in results["metrics"]
    assert "| accuracy after the final turn (`turns/final/accuracy`) |" in (out / "results.md").read_text()
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["problem"].startswith("What is") for r in records)


def test_a_metric_with_no_events_is_left_out_not_divided_by_zero():
    from mtgrpo.evaluation.evaluate import summarize

    # A tool protocol where no problem led to a call: the per-call success rate has nothing to average.
    records = [{"correct": {"final": False}, "turns": [], "episode_metrics": {"tools/success_rate": [],
                                                                              "tools/calls_per_episode": [0]}}]
    metrics = summarize(records)
    assert metrics["tools/calls_per_episode"] == 0 and "tools/success_rate" not in metrics
