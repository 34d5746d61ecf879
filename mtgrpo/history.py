"""Persist a run's logged metrics as OUTPUT_DIR/log_history.jsonl, for `mtgrpo plot` and notebooks.

The Trainer keeps its log history in memory and writes it only inside checkpoints (trainer_state.json), so a
run with `save_strategy: "no"` (the CPU demo) would leave nothing to plot. This callback appends every log
entry as one JSON line as soon as it is logged, so an interrupted run keeps what it logged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

HISTORY_FILE = "log_history.jsonl"


class LogHistoryCallback(TrainerCallback):
    """Appends `{"step": global_step, **logs}` to OUTPUT_DIR/log_history.jsonl on the main process."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        entry = {"step": state.global_step, **{k: _jsonable(v) for k, v in logs.items()}}
        path = Path(args.output_dir) / HISTORY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(entry) + "\n")


def _jsonable(value):
    # Logs hold floats, ints and strings, but a tensor or numpy scalar must not break training, and NaN/inf are
    # not valid JSON.
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None
