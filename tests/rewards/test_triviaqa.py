"""TriviaQA data (bundled sample, hub schema) and rewards; a few real training steps of the CPU recipe."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtgrpo.registry import _load_rewards_package, get_reward_func
from mtgrpo.tasks.data import load_task_dataset

ROOT = Path(__file__).resolve().parents[2]
RECIPE = "recipes/smollm2-135m-instruct/triviaqa-search.yaml"
rewards = _load_rewards_package()
tq = rewards.triviaqa


def _hub_row(question, value, aliases):
    # The shape of a mandarjoshi/trivia_qa rc.nocontext row (trimmed of the unused fields).
    return {
        "question": question,
        "question_id": "tc_1",
        "question_source": "http://www.example.com/",
        "entity_pages": {"doc_source": [], "filename": [], "title": [], "wiki_context": []},
        "search_results": {
            "description": [],
            "filename": [],
            "rank": [],
            "title": [],
            "url": [],
            "search_context": [],
        },
        "answer": {
            "aliases": aliases,
            "normalized_aliases": [tq.normalize_answer(a) for a in aliases],
            "matched_wiki_entity_name": "",
            "normalized_matched_wiki_entity_name": "",
            "normalized_value": tq.normalize_answer(value),
            "type": "WikipediaEntity",
            "value": value,
        },
    }


def test_bundled_sample_loads_in_the_triviaqa_schema():
    ds = load_task_dataset("triviaqa-sample", "triviaqa", system_prompt="Search first.")
    assert len(ds) == 40
    assert ds.column_names == ["prompt", "answer", "problem", "aliases"]
    first = ds[0]
    assert first["prompt"] == [
        {"role": "system", "content": "Search first."},
        {"role": "user", "content": "Which planet is known as the Red Planet?"},
    ]
    assert first["answer"] == "Mars" and first["aliases"] == ["mars", "planet mars"]
    assert all(row["aliases"] and row["answer"] for row in ds)


def test_hub_schema_file_loads_value_and_normalized_aliases(tmp_path):
    path = tmp_path / "trivia.jsonl"
    rows = [_hub_row("Which city hosts the Louvre?", "Paris", ["Paris", "Paris, France", "City of Light"])]
    path.write_text("\n".join(map(json.dumps, rows)) + "\n")
    ds = load_task_dataset(str(path), "triviaqa")
    assert ds[0]["answer"] == "Paris"
    assert ds[0]["aliases"] == ["paris", "paris france", "city of light"]
    # GSM8K rows have a plain-string answer: no TriviaQA gold, and the error says to pick the right schema.
    with pytest.raises(ValueError, match="no row has a gold answer.*dataset_schema"):
        load_task_dataset(str(ROOT / "tests" / "fixtures" / "gsm8k_sample.jsonl"), "triviaqa")


def test_normalization_like_squad():
    assert tq.normalize_answer("The  Beatles!") == "beatles"
    assert tq.normalize_answer("Leonardo_da_Vinci") == "leonardo da vinci"
    assert tq.normalize_answer("“Paris”, France.") == "paris france"


def test_outcome_rewards():
    completions = [
        "<reasoning>Found it.</reasoning>\n<answer>The River Nile</answer>",  # exact after normalisation
        "<answer>It is the Nile in Egypt</answer>",  # contains an alias
        "<answer>Amazon</answer>",
        "The Nile, I think.",  # no tag: only the lenient reward counts it
    ]
    aliases = [["nile", "river nile"]] * 4
    assert tq.triviaqa_exact_match(completions, aliases=aliases) == [1.0, 0.0, 0.0, 0.0]
    assert tq.triviaqa_answer_contains(completions, aliases=aliases) == [0.5, 0.5, 0.0, 0.0]
    assert tq.triviaqa_answer_mentioned(completions, aliases=aliases) == [0.5, 0.5, 0.0, 0.5]
    f1 = tq.triviaqa_f1(completions, aliases=aliases)
    assert f1[0] == 1.0 and f1[1] == pytest.approx(2 * (1 / 5) / (1 / 5 + 1)) and f1[2:] == [0.0, 0.0]
    # Whole words only, and the `answer` column stands in when there are no aliases.
    assert tq.triviaqa_answer_contains(["<answer>a bus</answer>"], aliases=[["US"]]) == [0.0]
    assert tq.triviaqa_exact_match(
        [[{"role": "assistant", "content": "<answer>7</answer>"}]], answer=["7"]
    ) == [1.0]


def test_outcome_metrics_are_logged():
    logged = {}
    completions = ["<answer>Nile</answer>", "<answer>Blue Nile river</answer>"]
    tq.triviaqa_exact_match(completions, aliases=[["nile"]] * 2, log_metric=logged.__setitem__)
    assert logged == {"outcome/exact_match": 0.5, "outcome/f1": pytest.approx((1 + 0.5) / 2)}


def test_turn_rewards_read_the_episode_columns():
    kwargs = {
        "tool_calls": [2, 1, 0],
        "tool_successes": [1, 1, 0],
        "first_result": ["The Nile flows", "Amazon", None],
    }
    assert tq.triviaqa_tool_success(["", "", ""], **kwargs) == pytest.approx([0.1, 0.2, 0.0])
    logged = {}
    got = tq.triviaqa_result_has_answer(
        ["", "", ""], aliases=[["nile"]] * 3, log_metric=logged.__setitem__, **kwargs
    )
    assert got == [0.5, 0.0, 0.0]
    assert logged == {"tools/answer_in_result": 0.5}  # among the episodes that got a result
    with pytest.raises(ValueError, match="episode: tool"):
        tq.triviaqa_tool_success(["x"])


def test_format_rewards_average_over_turns():
    turns = [
        '<reasoning>r</reasoning>\n<tool>{"name": "wiki_search", "args": {}}</tool>',
        "<reasoning>r</reasoning>\n<answer>x</answer>",
    ]
    assert tq.triviaqa_xml_format(["ignored"], assistant_turns=[turns]) == [pytest.approx(0.2)]
    assert tq.triviaqa_tag_count(["ignored"], assistant_turns=[turns]) == [pytest.approx(0.2)]
    sloppy = [
        "<answer>x</answer> and <answer>y"
    ]  # one answer field, not opened with <reasoning>, not closed last
    assert tq.triviaqa_xml_format(sloppy) == [pytest.approx(0.2 * 0.2)]
    assert tq.triviaqa_tag_count(sloppy) == [pytest.approx(0.2 * 0.5)]
    assert tq.triviaqa_tag_count(["no tags at all"]) == [0.0]


def test_registry_names_and_reward_levels():
    levels = {
        "triviaqa_tool_success": "turn",
        "triviaqa_result_has_answer": "turn",
        "triviaqa_exact_match": "outcome",
        "triviaqa_answer_contains": "outcome",
        "triviaqa_answer_mentioned": "outcome",
        "triviaqa_f1": "outcome",
        "triviaqa_xml_format": "outcome",
        "triviaqa_tag_count": "outcome",
    }
    for name, level in levels.items():
        func = get_reward_func(name)
        assert func.__name__ == name and func.reward_level == level


@pytest.mark.slow
def test_cpu_recipe_trains_two_steps_through_the_cli(tmp_path):
    out = tmp_path / "run"
    # One OpenMP thread unless the caller says otherwise: on a shared 2-core machine, threads spinning against other
    # jobs made these two steps 5x slower (158 s vs 31 s).
    env = {"OMP_NUM_THREADS": "1", **os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    start = time.monotonic()
    overrides = (
        f"--max_steps 2 --per_device_train_batch_size 2 --num_generations 2 --max_completion_length 12 "
        f"--episode_log_steps 1 --output_dir {out}"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mtgrpo.cli", "train", "--config", RECIPE, *overrides.split()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"2 steps of {RECIPE} in {time.monotonic() - start:.0f} s")
    assert (out / "model.safetensors").exists()
    record = json.loads((out / "episodes" / "step_000000.jsonl").read_text().splitlines()[0])
    assert record["turns"][0]["role"] == "solver" and {t["role"] for t in record["turns"]} <= {
        "solver",
        "tool",
    }
    assert "tools/calls_per_episode" in result.stdout + result.stderr
