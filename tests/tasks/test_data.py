import json
from pathlib import Path

import pytest

from mtgrpo.tasks.data import SCHEMAS, load_task_dataset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_gsm8k_schema():
    ds = load_task_dataset(str(FIXTURES / "gsm8k_sample.jsonl"), "gsm8k")
    assert ds.column_names == ["prompt", "answer", "problem"]
    assert ds["answer"] == ["27", "3750", "11200", "17", "7"]  # after "####", thousands commas removed
    assert ds[0]["prompt"] == [{"role": "user", "content": ds[0]["problem"]}]
    assert ds[0]["problem"].startswith("Mara has 3 boxes")


def test_math_schema_reads_last_boxed_of_solution():
    ds = load_task_dataset(str(FIXTURES / "math_sample.jsonl"), "math")
    assert ds["answer"] == ["\\frac{7}{8}", "6", "9\\pi", "2\\sqrt{3}", "2"]


def test_math_schema_prefers_answer_column():
    ds = load_task_dataset(str(FIXTURES / "math500_sample.jsonl"), "math")
    assert ds["answer"] == ["15", "-\\frac{3}{4}", "-2, 2"]


def test_prompt_answer_schema_with_system_prompt_and_template(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(
        "\n".join(json.dumps({"question": f"What is {i} + 1?", "answer": i + 1}) for i in range(3))
    )
    ds = load_task_dataset(
        str(path), "prompt_answer", system_prompt="Be brief.", prompt_template="Q: {problem}\nA:"
    )
    assert ds[2]["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q: What is 2 + 1?\nA:"},
    ]
    assert ds["answer"] == ["1", "2", "3"]  # integer cells become strings


def test_parquet_file_and_limit(tmp_path):
    source = load_task_dataset(str(FIXTURES / "gsm8k_sample.jsonl"), "gsm8k")
    source.rename_column("problem", "question").remove_columns("prompt").to_parquet(tmp_path / "d.parquet")
    ds = load_task_dataset(str(tmp_path / "d.parquet"), "prompt_answer", limit=2)
    assert ds["answer"] == ["27", "3750"]


def test_limit_larger_than_dataset_keeps_everything():
    assert len(load_task_dataset(str(FIXTURES / "math_sample.jsonl"), "math", limit=100)) == 5


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="does_not_exist.jsonl"):
        load_task_dataset("data/does_not_exist.jsonl", "gsm8k")


def test_hub_id_unavailable_offline():
    with pytest.raises(FileNotFoundError) as err:
        load_task_dataset("mtgrpo-test/no-such-dataset", "gsm8k")
    assert "'mtgrpo-test/no-such-dataset'" in str(err.value)
    assert "local" in str(err.value)


def test_missing_column_names_dataset_column_and_fix():
    path = str(FIXTURES / "math_sample.jsonl")
    with pytest.raises(ValueError) as err:
        load_task_dataset(path, "gsm8k")
    message = str(err.value)
    assert path in message
    assert "'question'" in message
    assert "'solution'" in message  # the columns it has
    assert "dataset_schema" in message and "rename" in message


def test_unknown_schema_lists_valid_ones():
    with pytest.raises(ValueError, match="gsm8k, math, prompt_answer, arithmetic"):
        load_task_dataset("arithmetic", "nope")
    assert set(SCHEMAS) == {"gsm8k", "math", "prompt_answer", "arithmetic", "triviaqa"}


def test_template_with_stray_braces_is_rejected_early():
    with pytest.raises(ValueError, match="doubled"):
        load_task_dataset("arithmetic", "arithmetic", prompt_template="Put it in \\boxed{}: {problem}")
    ds = load_task_dataset(
        "arithmetic", "arithmetic", prompt_template="{problem} Put it in \\boxed{{}}.", num_examples=1
    )
    assert ds[0]["prompt"][0]["content"].endswith("Put it in \\boxed{}.")


def test_arithmetic_is_deterministic_sized_and_correct():
    train = load_task_dataset("arithmetic", "arithmetic", seed=3)
    assert len(train) == 2000
    assert train["answer"] == load_task_dataset("arithmetic", "arithmetic", seed=3)["answer"]
    assert train["problem"] != load_task_dataset("arithmetic", "arithmetic", seed=4)["problem"]
    for row in train.select(range(50)):
        assert row["prompt"] == [{"role": "user", "content": row["problem"]}]
        assert str(eval(row["problem"].removeprefix("What is ").removesuffix("?"))) == row["answer"]


def test_arithmetic_test_split_is_disjoint_from_train():
    test = load_task_dataset("arithmetic", "arithmetic", split="test", seed=1)
    assert len(test) == 100 and len(set(test["problem"])) == 100  # held-out problems do not repeat
    train = load_task_dataset("arithmetic", "arithmetic", split="train", seed=0, num_examples=5000)
    assert not set(test["problem"]) & set(train["problem"])
    with pytest.raises(ValueError, match="train, test"):
        load_task_dataset("arithmetic", "arithmetic", split="validation")


def test_num_examples_sizes_arithmetic_and_caps_fixed_datasets():
    assert len(load_task_dataset("arithmetic", "arithmetic", split="test", num_examples=7, limit=5)) == 5
    assert len(load_task_dataset(str(FIXTURES / "gsm8k_sample.jsonl"), "gsm8k", num_examples=3)) == 3


def test_rows_without_gold_are_skipped_and_all_missing_is_an_error(tmp_path):
    path = tmp_path / "g.jsonl"
    rows = [{"question": "q1", "answer": "work\n#### 1,000"}, {"question": "q2", "answer": "no marker"}]
    path.write_text("\n".join(map(json.dumps, rows)))
    assert load_task_dataset(str(path), "gsm8k")["answer"] == ["1000"]
    path.write_text(json.dumps(rows[1]))  # bare answers: the gsm8k schema is the wrong choice
    with pytest.raises(ValueError, match="no row has a gold answer"):
        load_task_dataset(str(path), "gsm8k")
