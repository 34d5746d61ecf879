"""`python -m mtgrpo.train` with TRL's vLLM client able to reach the CPU stand-in server (tests/vllm_standin.py).

    accelerate launch --cpu --num_processes 2 tests/vllm_server/train_with_standin.py --config RECIPE [--field value ...]

The only change to the run: TRL's client gets the TCP stand-in for its CUDA-bound communicator
(`install_tcp_weight_transfer`). With STANDIN_TRACE_DIR set, each process also writes what it observed to
`rank<k>.jsonl`: the number of contexts of every generation call, and every rollout's prompt ids and segments
(observation only: the calls and rollouts are passed through unchanged).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for vllm_standin

from vllm_standin import install_tcp_weight_transfer  # noqa: E402


def trace(directory: str) -> None:
    from mtgrpo.trainer import MultiTurnGRPOTrainer

    def write(trainer, entry):
        path = Path(directory) / f"rank{trainer.accelerator.process_index}.jsonl"
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    generate_turn, rollout = MultiTurnGRPOTrainer._generate_turn, MultiTurnGRPOTrainer._rollout

    def traced_generate_turn(self, prompt_ids, num_generations):
        write(self, {"call": len(prompt_ids), "n": num_generations})
        return generate_turn(self, prompt_ids, num_generations)

    def traced_rollout(self, prompts, trainer=None):
        out = rollout(self, prompts, trainer)
        segments = [
            [{"role": s.role, "ids": s.ids, "text": s.text} for s in r.segments] for r in self._rollouts
        ]
        write(
            self,
            {
                "rollouts": [
                    {"prompt_ids": r.prompt_ids, "segments": s}
                    for r, s in zip(self._rollouts, segments, strict=True)
                ]
            },
        )
        return out

    MultiTurnGRPOTrainer._generate_turn = traced_generate_turn
    MultiTurnGRPOTrainer._rollout = traced_rollout


if __name__ == "__main__":
    install_tcp_weight_transfer()
    if os.environ.get("STANDIN_TRACE_DIR"):
        trace(os.environ["STANDIN_TRACE_DIR"])
    from mtgrpo.train import main

    sys.exit(main(sys.argv[1:]))
