"""`mtgrpo plot`: training curves and eval bars are valid PNGs with the expected series; history sources."""

import json
import struct
from types import SimpleNamespace

import pytest

pytest.importorskip("matplotlib")

from mtgrpo.evaluation import plot  # noqa: E402
from mtgrpo.history import HISTORY_FILE, LogHistoryCallback  # noqa: E402


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _history(steps=3, tools=False):
    entries = []
    for step in range(1, steps + 1):
        entry = {"step": step, "loss": 0.1, "reward": 0.2 * step, "rewards/math_answer_correct/mean": 0.1 * step,
                 "rewards/math_answer_correct/std": 0.3, "turns/1/accuracy": 0.3, "turns/final/accuracy": 0.4,
                 "self_correction/delta": 0.1, "self_correction/incorrect_to_correct": 0.2,
                 "self_correction/correct_to_incorrect": 0.1, "kl": 0.01 * step}  # fmt: skip
        if tools:
            entry.update({"tools/success_rate": 0.5, "tools/calls_per_episode": 1.0})
        entries.append(entry)
    entries.append({"step": steps, "train_runtime": 12.0, "train_loss": 0.1})  # the Trainer's closing summary
    return entries


def _write_history(run_dir, entries):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / HISTORY_FILE).write_text("".join(json.dumps(e) + "\n" for e in entries))


def test_plot_run_draws_every_logged_series(tmp_path, capsys):
    run = tmp_path / "run"
    _write_history(run, _history(tools=True))
    (run / "demo_results.json").write_text(json.dumps({
        "before": {"turns/1/accuracy": 0.3, "turns/final/accuracy": 0.25},
        "after": {"turns/1/accuracy": 0.5, "turns/final/accuracy": 0.55}}))  # fmt: skip
    (run / "results.json").write_text(
        json.dumps({"num_problems": 20, "metrics": {"turns/1/accuracy": 0.5, "turns/final/accuracy": 0.6}})
    )

    assert plot.main([str(run)]) == 0
    out = capsys.readouterr().out
    curves, bars = run / "plots" / "training_curves.png", run / "plots" / "eval_accuracy.png"
    assert f"wrote {curves}" in out and f"wrote {bars}" in out
    for path in (curves, bars):
        width, height = _png_size(path)
        assert width > 200 and height > 200 and path.stat().st_size > 5000

    training, evaluation = plot.plot_run(run, tmp_path / "again")
    assert training.series == [
        "turns/1/accuracy", "turns/final/accuracy",
        "self_correction/correct_to_incorrect", "self_correction/delta", "self_correction/incorrect_to_correct",
        "reward", "rewards/math_answer_correct/mean",
        "kl",
        "tools/calls_per_episode", "tools/success_rate",
    ]  # fmt: skip
    assert evaluation.series == ["turns/1/accuracy", "turns/final/accuracy"]
    assert list(plot.load_eval_columns(run)) == ["demo: before", "demo: after", "eval: 20 problems"]


def test_panels_without_data_are_left_out(tmp_path):
    history = [{"step": 1, "reward": 0.5, "turns/final/accuracy": 0.5}]
    drawn = plot.plot_training({"run": history}, tmp_path / "curves.png")
    assert drawn.series == ["turns/final/accuracy", "reward"]
    assert plot.plot_training({"run": [{"step": 1, "loss": 0.2}]}, tmp_path / "none.png").series == []
    assert not (tmp_path / "none.png").exists()


def test_comparing_runs_labels_each_series(tmp_path):
    drawn = plot.plot_training({"a": _history(), "b": _history()}, tmp_path / "compare.png")
    assert "a: turns/1/accuracy" in drawn.series and "b: kl" in drawn.series
    bars = plot.plot_eval({"a": {"turns/1/accuracy": 0.2, "turns/final/accuracy": 0.3},
                           "b": {"turns/1/accuracy": 0.4, "turns/final/accuracy": 0.5}}, tmp_path / "bars.png")  # fmt: skip
    assert bars.series == ["turns/1/accuracy", "turns/final/accuracy"]
    _png_size(bars.path)


def test_history_falls_back_to_trainer_state(tmp_path):
    run = tmp_path / "run"
    for step in (5, 10):
        checkpoint = run / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": _history(steps=step)}))
    assert plot.load_history(run)[-2]["step"] == 10  # the newest checkpoint
    (run / "trainer_state.json").write_text(json.dumps({"log_history": _history(steps=12)}))
    assert plot.load_history(run)[-2]["step"] == 12  # the final state wins over checkpoints


def test_a_resumed_run_replaces_the_replayed_steps(tmp_path):
    run = tmp_path / "run"
    # Logged steps 1-4, interrupted, resumed from the checkpoint at step 2: steps 3-4 are logged again.
    steps = [1, 2, 3, 4, 3, 4, 5]
    _write_history(run, [{"step": s, "reward": float(i)} for i, s in enumerate(steps)])
    history = plot.load_history(run)
    assert [(e["step"], e["reward"]) for e in history] == [(1, 0.0), (2, 1.0), (3, 4.0), (4, 5.0), (5, 6.0)]


def test_nothing_to_plot_names_the_fix(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert plot.main([str(tmp_path / "empty")]) == 2
    assert "mtgrpo eval --config RECIPE" in capsys.readouterr().err
    assert plot.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_log_history_callback_appends_on_the_main_process(tmp_path):
    callback = LogHistoryCallback()
    args = SimpleNamespace(output_dir=str(tmp_path))
    main = SimpleNamespace(is_world_process_zero=True, global_step=3)
    callback.on_log(args, main, None, logs={"reward": 0.5, "kl": float("nan")})
    callback.on_log(
        args, SimpleNamespace(is_world_process_zero=False, global_step=3), None, logs={"reward": 9.0}
    )
    callback.on_log(
        args, SimpleNamespace(is_world_process_zero=True, global_step=4), None, logs={"reward": 0.75}
    )
    lines = [json.loads(line) for line in (tmp_path / HISTORY_FILE).read_text().splitlines()]
    assert lines == [{"step": 3, "reward": 0.5, "kl": None}, {"step": 4, "reward": 0.75}]
