"""benchmarks/learning_race.py: its command line, its recipe checks, its wall-clock stop rule and its table.

The race itself trains for ~30 minutes and is run by hand (its measured table is in the README); these tests run
its pieces that decide what it measures, without training.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "learning_race.py"


@pytest.fixture(scope="module")
def race():
    spec = importlib.util.spec_from_file_location("learning_race", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_race(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variants", "plain,nope"], "unknown or no variants ['nope']"),
        (["--budget-minutes", "0"], "--budget-minutes must be > 0"),
        (["--eval-limit", "0"], "--eval-limit must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = run_race(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_every_variant_recipe_shares_the_race_values(race, tmp_path):
    parsed = {v: race.recipe_args(v, tmp_path) for v in race.VARIANTS}
    race.check_shared_values(parsed)  # the shipped recipes agree
    assert parsed["self"][1].feedback_source == "self" and parsed["self"][1].train_feedback
    assert parsed["score"][1].episode == "self_correct" and parsed["mutis"][1].episode == "mutis"
    assert {v: parsed[v][1].output_dir for v in parsed} == {v: str(tmp_path / v) for v in parsed}


def test_a_recipe_that_differs_in_a_shared_value_is_refused(race, tmp_path):
    parsed = {v: race.recipe_args(v, tmp_path) for v in ("plain", "score")}
    parsed["score"][1].learning_rate *= 10
    with pytest.raises(race.UsageError, match=r"'plain' and 'score' differ in shared recipe values \['learning_rate'\]"):
        race.check_shared_values(parsed)


def test_budget_stops_after_the_last_step_that_fits(race, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(race.time, "monotonic", lambda: clock[0])
    budget = race.budget_callback(100.0, "test")
    state, control = SimpleNamespace(global_step=0), SimpleNamespace(should_training_stop=False)
    budget.on_train_begin(None, state, control)
    stopped_at = None
    for step in range(1, 20):
        clock[0] += 30.0  # every step takes 30 s: steps end at 30, 60, 90 s; a 4th would end at 120 s > 100 s
        state.global_step = step
        budget.on_step_end(None, state, control)
        if control.should_training_stop:
            stopped_at = step
            break
    assert stopped_at == 3


def test_score_switches_to_stage_two_at_the_step_boundary_nearest_its_share_of_the_budget(race, monkeypatch):
    assert race.score_stage_share("score") == 0.5  # arithmetic-score.yaml: 5 of 10 steps in stage I
    assert race.score_stage_share("plain") == race.score_stage_share("mutis") == 0.0
    clock = [0.0]
    monkeypatch.setattr(race.time, "monotonic", lambda: clock[0])
    trainer = SimpleNamespace(episode=SimpleNamespace(stage1_steps=5))
    switch = race.stage_switch_callback(trainer, 300.0, 0.5, "score")
    state = SimpleNamespace(global_step=0)
    switch.on_train_begin(None, state, None)
    assert trainer.episode.stage1_steps > 100  # not the recipe's step count: by time
    for step in range(1, 8):
        clock[0] += 40.0  # boundaries at 40, 80, ..., 280 s; the nearest to 150 s is 160 s, after step 4
        state.global_step = step
        switch.on_step_end(None, state, None)
    assert trainer.episode.stage1_steps == 4  # steps 1-4 in stage I, stage II from step 5


def test_table_and_verdict_come_from_the_rows(race):
    def row(name, steps, t1, final, i2c, c2i):
        return {"variant": name, "steps": steps, "train_minutes": 5.0, "turns/1/accuracy": t1,
                "turns/final/accuracy": final, "self_correction/delta": final - t1,
                "self_correction/incorrect_to_correct": i2c, "self_correction/correct_to_incorrect": c2i}  # fmt: skip

    rows = [row("plain", 20, 0.6, 0.5, 0.0, 0.1), row("template", 10, 0.5, 0.55, 0.1, 0.05),
            row("score", 10, 0.55, 0.5, 0.0, 0.05)]  # fmt: skip
    table = race.format_table(rows)
    assert "| template | 10 | 5.0 | 0.500 | 0.550 | 0.050 | 0.100 | 0.050 |" in table
    verdict = race.verdict(rows)
    assert "Best at teaching correction (largest final - turn 1): template" in verdict
    assert "Best multi-turn final accuracy 0.550 (template) vs plain GRPO 0.600: target missed (-0.050)" in verdict


def test_calculator_task_variants_share_the_race_values(race, tmp_path):
    parsed = {v: race.recipe_args(v, tmp_path, "calculator") for v in race.CALCULATOR_VARIANTS}
    race.check_shared_values(parsed, race.TASK_FREE_FIELDS["calculator"])
    assert parsed["tool-outcome"][1].advantage_mode == "grpo_or" and parsed["tool-mtgrpo"][1].advantage_mode == "mt_grpo"
    assert parsed["plain"][0].reward_funcs == ["math_answer_correct"]  # TRL's trainer has no tool counters
    assert race.eval_protocol("plain", "calculator") == race.eval_protocol("trl-tools", "calculator") == "tool-mtgrpo"
    seed1 = race.recipe_args("tool-mtgrpo", tmp_path, "calculator", seed_index=1)[1]
    assert seed1.seed == parsed["tool-mtgrpo"][1].seed + 1 and seed1.output_dir.endswith("tool-mtgrpo/seed-1")


def test_seeds_are_aggregated_as_mean_and_half_range(race):
    rows = [{"variant": "tool-mtgrpo", "steps": 10, "train_minutes": 3.0, "turns/final/accuracy": 1.0},
            {"variant": "tool-mtgrpo", "steps": 8, "train_minutes": 2.8, "turns/final/accuracy": 0.8}]
    row = race.aggregate(rows)
    assert row["turns/final/accuracy"] == pytest.approx(0.9) and row["turns/final/accuracy/spread"] == pytest.approx(0.1)
    assert row["seeds"] == 2 and "0.900 ± 0.100" in race.format_table([row])


def test_calculator_verdict_states_each_target_and_its_margin(race):
    rows = {"plain": {"turns/final/accuracy": 0.01}, "tool-outcome": {"turns/final/accuracy": 0.9},
            "tool-mtgrpo": {"turns/final/accuracy": 0.85}}
    verdict = race.calculator_verdict(rows)
    assert "vs plain + 0.20: met (0.850 vs 0.210, +0.640)" in verdict
    assert "vs tool-outcome: missed (0.850 vs 0.900, -0.050)" in verdict
    assert "vs trl-tools: not run (or failed)" in verdict


def test_seeds_must_be_positive():
    result = run_race("--seeds", "0")
    assert result.returncode == 2 and "--seeds must be >= 1" in result.stderr
