"""Test helpers shared by the episode and trainer tests: scripted generation and a rollout spy (no model needed)."""


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
