"""Two training processes (accelerate, CPU, gloo) against one stand-in vLLM server, episodes ending at different turns.

TRL's server path gathers every process's contexts into one request and hands process k the slice
[k * n, (k + 1) * n) of the answers: both processes must send the same number of contexts in every call, or answers
land on other episodes. The stand-in runs scripted (`--script`): every reply starts with a fingerprint of the exact
context it was generated for (`ctx<crc32 of the ids> s<sample>`), and the episode's length is set by its prompt and
sample, so episodes end after 1, 2 or 3 turns, unevenly across the processes. The run is the real CLI
(`python -m mtgrpo.train --config RECIPE`) under `accelerate launch`; tests/vllm_server/train_with_standin.py adds only
the TCP stand-in for TRL's CUDA-bound communicator and a per-process trace of calls and rollouts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from vllm_standin import fingerprint, free_port

ROOT = Path(__file__).resolve().parents[2]
ASSISTANT = "<|im_start|>assistant"

EPISODES = {
    "mutis": (
        {
            "episode": "mutis",
            "intervention_text": "Give your final answer.",
            "max_turns": 3,
            "reward_funcs": ["math_answer_correct"],
            "correctness_reward": "math_answer_correct",
        },
        {"header": ASSISTANT, "turns": 3, "continue": "Let me think.", "final": "The answer is 4."},
    ),
}


def _recipe(tmp_path, model_dir, server_url, fields) -> Path:
    recipe = {
        "model_name_or_path": str(model_dir),
        "dataset_name": "arithmetic",
        "dataset_schema": "arithmetic",
        "num_train_examples": 64,
        "num_generations": 2,
        "per_device_train_batch_size": 4,
        "max_completion_length": 32,
        "learning_rate": 1.0e-2,
        "max_steps": 2,
        "logging_steps": 1,
        "save_strategy": "no",
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "report_to": "none",
        "seed": 0,
        "use_vllm": True,
        "vllm_mode": "server",
        "vllm_server_base_url": server_url,
        "vllm_group_port": free_port(),
        "vllm_server_timeout": 60,
        **fields,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in recipe.items()) + "\n")
    return path


def test_two_processes_send_equal_calls_and_every_answer_returns_to_its_context(
    tmp_path, tiny_model_dir, tokenizer, standins
):
    fields, script = EPISODES["mutis"]
    server = standins(tiny_model_dir, script=script)
    recipe = _recipe(tmp_path, tiny_model_dir, server.url, fields)
    traces = tmp_path / "traces"
    traces.mkdir()
    env = {
        **os.environ,
        "STANDIN_TRACE_DIR": str(traces),
        "HF_HUB_OFFLINE": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "true",
    }
    cmd = [
        # torchrun's launcher (--multi_gpu) with ACCELERATE_USE_CPU: two CPU processes on gloo (`--cpu` alone starts one).
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(ROOT / "tests/vllm_server/train_with_standin.py"),
        "--config",
        str(recipe),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]

    ranks = [
        [json.loads(line) for line in (traces / f"rank{k}.jsonl").read_text().splitlines()] for k in range(2)
    ]
    calls = [[(e["call"], e["n"]) for e in rank if "call" in e] for rank in ranks]
    batches = [[e["rollouts"] for e in rank if "rollouts" in e] for rank in ranks]
    # Both processes made the same calls with the same number of contexts.
    assert calls[0] == calls[1], calls
    # ... although their episodes ended at different turns: at some turn one process had more unfinished episodes.
    lengths = [
        [[sum(s["role"] == "solver" for s in r["segments"]) for r in batch] for batch in b] for b in batches
    ]
    uneven = any(
        sum(x > t for x in lengths[0][step]) != sum(x > t for x in lengths[1][step])
        for step in range(2)
        for t in range(3)
    )
    assert uneven, lengths
    assert {x for rank in lengths for batch in rank for x in batch} == {1, 2, 3}
    # Every solver turn is the server's answer to exactly the context that preceded it.
    for rank in range(2):
        for batch in batches[rank]:
            for rollout in batch:
                context = list(rollout["prompt_ids"])
                for seg in rollout["segments"]:
                    if seg["role"] == "solver":
                        assert seg["text"].startswith(fingerprint(context) + " "), (rank, seg["text"][:40])
                    context += seg["ids"]
    # The server saw one request per call holding both processes' contexts, and a weight push before each step.
    requests = server.requests("/v1/completions")
    assert len(requests) == len(calls[0])
    for request, (count, n) in zip(requests, calls[0], strict=True):
        assert request["body"]["n"] == n and len(request["body"]["prompt"]) * n == 2 * count
    updates = server.requests("/update_weights")
    assert len(updates) == 2 and all(u["status"] == 200 for u in updates)
