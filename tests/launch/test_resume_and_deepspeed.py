"""Real kill-and-resume of a training run, and DeepSpeed ZeRO-3 in one CPU process (tiny model, slow)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtgrpo.launch.checkpoints import latest_checkpoint, missing_parts

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _tiny_recipe(tmp_path, model_dir, **extra) -> Path:
    fields = {
        "model_name_or_path": str(model_dir),
        "dataset_name": "arithmetic",
        "dataset_schema": "arithmetic",
        "num_train_examples": 64,
        "feedback_source": "template",
        "num_generations": 2,
        "per_device_train_batch_size": 2,
        "max_completion_length": 4,
        "learning_rate": 1.0e-2,
        "max_steps": 4,
        "save_strategy": "steps",
        "save_steps": 1,
        "logging_steps": 1,
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "report_to": "none",
        "seed": 0,
        **extra,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in fields.items()) + "\n")
    return path


def _train(recipe, out, *, background=False):
    cmd = [sys.executable, "-m", "mtgrpo.train", "--config", str(recipe), "--output_dir", str(out)]
    if background:
        return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_killed_run_resumes_from_newest_complete_checkpoint(tmp_path, tiny_model_dir):
    recipe = _tiny_recipe(tmp_path, tiny_model_dir)
    reference = _train(recipe, tmp_path / "uninterrupted")
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "killed"
    proc = _train(recipe, out, background=True)
    deadline = time.time() + 300
    while not ((out / "checkpoint-2").is_dir() and not missing_parts(out / "checkpoint-2")):
        assert time.time() < deadline, "no complete checkpoint-2 within 5 minutes"
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # a spot interruption: no chance to clean up
    proc.wait()
    # A half-written checkpoint from a later step must never be picked.
    (out / "checkpoint-9").mkdir()
    (out / "checkpoint-9" / "model.safetensors").write_bytes(b"partial")
    resumed_from = latest_checkpoint(out)
    assert resumed_from and Path(resumed_from).name in {"checkpoint-2", "checkpoint-3"}

    resumed = _train(recipe, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {resumed_from}" in resumed.stderr
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # Same seed, same data order, restored optimizer and RNG state: the resumed run ends where the
    # uninterrupted one does. A fresh optimizer (Adam moments reset) would land elsewhere.
    a = load_file(tmp_path / "uninterrupted" / "model.safetensors")
    b = load_file(out / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


@pytest.mark.slow
def test_deepspeed_zero3_in_one_cpu_process(tmp_path, tiny_model_dir):
    pytest.importorskip("deepspeed")
    recipe = _tiny_recipe(tmp_path, tiny_model_dir, max_steps=2, save_steps=2)
    out = tmp_path / "zero3"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "local_training/zero3.yaml"),
        "--num_processes", "1", "--mixed_precision", "no",
        "-m", "mtgrpo.train", "--config", str(recipe), "--output_dir", str(out),
    ]
    env = {**ENV, "ACCELERATE_USE_CPU": "false", "MASTER_PORT": "29533"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    checkpoint = out / "checkpoint-2"
    assert list(checkpoint.glob("global_step2/*model_states.pt")), sorted(p.name for p in checkpoint.rglob("*"))
    assert latest_checkpoint(out) == str(checkpoint)
