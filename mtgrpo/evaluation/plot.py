"""`mtgrpo plot`: a run's training curves and eval results as PNG files.

    mtgrpo plot runs/smollm2-135m-instruct/arithmetic-refine [--output DIR]

Training curves (per-turn accuracy, self-correction, reward, KL and tool rates, whichever were logged) come from
RUN_DIR/log_history.jsonl (written during training by mtgrpo.history.LogHistoryCallback), else from
trainer_state.json in RUN_DIR or its newest checkpoint. Eval results (RUN_DIR/results.json from `mtgrpo eval`,
RUN_DIR/demo_results.json from `mtgrpo demo`) become a bar chart of turn-1 vs final-turn accuracy.
Files go to RUN_DIR/plots unless --output says otherwise. The functions also serve notebooks comparing runs.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..history import HISTORY_FILE

logger = logging.getLogger(__name__)

# Panels of the training figure: title, metric name patterns (fnmatch). A panel is drawn when any name matched.
TRAINING_PANELS = [
    ("per-turn accuracy", ["turns/1/accuracy", "turns/final/accuracy"]),
    ("self-correction", ["self_correction/*"]),
    ("reward", ["reward", "rewards/*/mean"]),
    ("KL", ["kl"]),
    ("tool use", ["tools/*"]),
]
EVAL_SERIES = [("turn 1", "turns/1/accuracy"), ("final turn", "turns/final/accuracy")]


@dataclass
class Plot:
    """path: the PNG written; series: names of the series drawn (`label: metric` when comparing runs)."""

    path: Path
    series: list[str]


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("Plotting needs matplotlib: pip install -e '.[plot]'.") from err
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def load_history(run_dir: str | Path) -> list[dict]:
    """A run's logged entries (each with `step`), oldest first. Raises FileNotFoundError when it has none."""
    run_dir = Path(run_dir)
    jsonl = run_dir / HISTORY_FILE
    if jsonl.is_file():
        return _drop_replayed(_read_log_lines(jsonl))
    checkpoints = sorted(
        (int(m.group(1)), p)
        for p in run_dir.glob("checkpoint-*")
        if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
    )
    # The final trainer_state.json covers the whole run; a checkpoint's covers the run up to that checkpoint.
    for state in [
        run_dir / "trainer_state.json",
        *(p / "trainer_state.json" for _, p in reversed(checkpoints)),
    ]:
        if state.is_file():
            return json.loads(state.read_text())["log_history"]
    raise FileNotFoundError(
        f"{run_dir} has no training history: no {HISTORY_FILE}, trainer_state.json or checkpoint-*/trainer_state.json."
    )


def _read_log_lines(path: Path) -> list[dict]:
    """The entries of a log_history.jsonl. A run killed while it wrote leaves a cut-off line (and a resumed run
    appends after it): such lines are skipped with a warning, so the steps around them still plot."""
    entries, unreadable = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            unreadable.append(str(number))
    if unreadable:
        lines = ", ".join(unreadable)
        logger.warning("Skipped %s line %s: not valid JSON (cut off when the run was killed?).", path, lines)
    return entries


def _drop_replayed(entries: list[dict]) -> list[dict]:
    # A resumed run logs again from its checkpoint's step and appends: a step going backwards marks a resume,
    # and the entries it replays replace the ones logged before the interruption.
    kept: list[dict] = []
    for entry in entries:
        if kept and entry["step"] < kept[-1]["step"]:
            kept = [k for k in kept if k["step"] < entry["step"]]
        kept.append(entry)
    return kept


def load_eval_columns(run_dir: str | Path) -> dict[str, dict[str, float]]:
    """{label: metrics} of a run's eval results: before/after training from demo_results.json, and results.json."""
    run_dir = Path(run_dir)
    columns = {}
    demo = run_dir / "demo_results.json"
    if demo.is_file():
        results = json.loads(demo.read_text())
        columns.update({"demo: before": results["before"], "demo: after": results["after"]})
    results_file = run_dir / "results.json"
    if results_file.is_file():
        results = json.loads(results_file.read_text())
        columns[f"eval: {results['num_problems']} problems"] = results["metrics"]
    return columns


def plot_training(histories: dict[str, list[dict]], path: str | Path) -> Plot:
    """One panel per TRAINING_PANELS entry with data; several runs share each panel. No file when nothing matched."""
    panels = []
    for title, patterns in TRAINING_PANELS:
        curves = []
        for run, history in histories.items():
            names = sorted(
                {k for e in history for k in e if any(fnmatch.fnmatchcase(k, p) for p in patterns)}
            )
            for name in names:
                points = [(e["step"], e[name]) for e in history if e.get(name) is not None]
                if points:
                    curves.append((f"{run}: {name}" if len(histories) > 1 else name, points))
        if curves:
            panels.append((title, curves))
    path = Path(path)
    if not panels:
        return Plot(path=path, series=[])
    plt = _pyplot()
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.3 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.remove()
    for ax, (title, curves) in zip(axes.flat, panels, strict=False):  # the grid may have spare axes
        for label, points in curves:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o", markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, plt, path, [label for _, curves in panels for label, _ in curves])


def plot_eval(columns: dict[str, dict[str, float]], path: str | Path, title: str = "eval accuracy") -> Plot:
    """Grouped bars: turn-1 and final-turn accuracy for each column (run, or before/after)."""
    series = [(label, name) for label, name in EVAL_SERIES if any(name in m for m in columns.values())]
    path = Path(path)
    if not series:
        return Plot(path=path, series=[])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(3.5, 1.6 * len(columns) + 1.5), 3.4))
    width = 0.8 / len(series)
    for i, (label, name) in enumerate(series):
        xs = [c + (i - (len(series) - 1) / 2) * width for c in range(len(columns))]
        values = [metrics.get(name, 0.0) for metrics in columns.values()]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(columns)), list(columns))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", ncols=2)
    return _save(fig, plt, path, [name for _, name in series])


def _save(fig, plt, path: Path, series: list[str]) -> Plot:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        plt.close(fig)
        raise ValueError(f"--output {path.parent} cannot be created ({err.strerror or err}). Pass a folder you can "
                         "write to.") from None
    fig.tight_layout()
    fig.savefig(path, dpi=90)  # small enough to commit (docs/)
    plt.close(fig)
    return Plot(path=path, series=series)


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> list[Plot]:
    """Every plot a run directory supports; raises FileNotFoundError when it has neither history nor eval results."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise FileNotFoundError(f"{run_dir} is a file. Pass the folder of a run (its output_dir).")
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"Run directory {run_dir} does not exist. Pass the output_dir of a training run."
        )
    output = Path(output) if output else run_dir / "plots"
    try:
        history = load_history(run_dir)
    except FileNotFoundError:
        history = []  # an eval-only directory: the eval chart below is all there is
    plots = [plot_training({run_dir.name: history}, output / "training_curves.png")]
    columns = load_eval_columns(run_dir)
    if columns:
        plots.append(plot_eval(columns, output / "eval_accuracy.png", title=f"{run_dir.name}: eval accuracy"))
    plots = [p for p in plots if p.series]
    if not plots:
        raise FileNotFoundError(
            f"Nothing to plot in {run_dir}: no logged training metrics ({HISTORY_FILE}, trainer_state.json) and no "
            "eval results (results.json, demo_results.json). Train with `mtgrpo train --config RECIPE`, or write "
            f"eval results there with `mtgrpo eval --config RECIPE --model_name_or_path {run_dir}`."
        )
    return plots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtgrpo plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a training run's output_dir (or an eval output_dir)")
    parser.add_argument("--output", help="directory for the PNG files (default: RUN_DIR/plots)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        plots = plot_run(args.run_dir, args.output)
    except (FileNotFoundError, ImportError, ValueError) as err:
        print(f"mtgrpo plot: {err}", file=sys.stderr)
        return 2
    for plot in plots:
        print(f"wrote {plot.path} ({', '.join(plot.series)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
