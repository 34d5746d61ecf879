"""Test helpers shared by the episode and trainer tests: scripted generation, a rollout spy and threads standing in
for processes (no model needed)."""

import threading

# A real training run on the tiny models (tests/conftest.py) that takes seconds: MTGRPOConfig(output_dir=...,
# **TINY_RUN, ...).
TINY_RUN = dict(
    per_device_train_batch_size=4,
    num_generations=2,
    max_completion_length=6,
    max_steps=1,
    learning_rate=1e-2,
    report_to=[],
    logging_steps=1,
    gradient_checkpointing=False,
    use_cpu=True,
    save_strategy="no",
    seed=0,
)


class ScriptedGenerate:
    """A GenerateFn that returns scripted texts turn by turn (`turns[k][i]` for context i of call k), each followed
    by EOS unless `eos=False` (an empty text gives an empty completion), and records every call as
    (number of contexts, num_generations, the contexts' ids)."""

    def __init__(self, tokenizer, turns: list[list[str]], eos: bool = True):
        self.tokenizer, self.turns, self.eos, self.calls = tokenizer, turns, eos, []

    def __call__(self, prompt_ids, num_generations):
        texts = self.turns[len(self.calls)]
        self.calls.append((len(prompt_ids), num_generations, [list(p) for p in prompt_ids]))
        out = []
        for text in texts[: len(prompt_ids)]:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            out.append(ids + ([self.tokenizer.eos_token_id] if self.eos and text else []))
        return out, None


def spy_rollouts(trainer) -> dict:
    """Make `trainer` keep the rollouts of its next batch: returns a dict whose "rollouts" key they land in."""
    seen = {}
    original = trainer._rollout

    def spy(prompts, trainer_=None):
        out = original(prompts, trainer_)
        seen["rollouts"] = trainer._rollouts
        return out

    trainer.rollout_func = spy
    return seen


class Collective:
    """all_gather over threads standing in for processes."""

    def __init__(self, world: int):
        self.world, self.barrier, self.values = world, threading.Barrier(world, timeout=60), [None] * world

    def all_gather(self, rank: int, value):
        self.values[rank] = value
        self.barrier.wait()
        out = list(self.values)
        self.barrier.wait()
        return out
