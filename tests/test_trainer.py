"""MultiTurnGRPOTrainer end to end on a tiny random Llama with the real SmolLM2 tokenizer."""

import json

import pytest
import torch
from datasets import Dataset

from mtgrpo import MTGRPOConfig, MultiTurnGRPOTrainer


def letter_e_reward(completions, **kwargs):
    """Varies across a random model's samples, so advantages are non-zero and parameters must move."""
    return [min(c[0]["content"].count("e"), 5) / 5 for c in completions]


def math_answer_correct(completions, answer, **kwargs):
    # Stand-in correctness signal for the metrics (the real one is tested in test_rewards.py).
    return [float(a in c[0]["content"]) for c, a in zip(completions, answer, strict=False)]


def _dataset(n=8):
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i)} for i in range(n)]
    )


def _trainer(tiny_model_dir, tmp_path, batch_size=4, **overrides):
    args = MTGRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch_size,
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
        **overrides,
    )
    return MultiTurnGRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=[letter_e_reward, math_answer_correct],
        args=args,
        train_dataset=_dataset(),
    )


@pytest.mark.parametrize("batch_size", [2, 6])
def test_generation_calls_per_batch_equal_number_of_turns(tiny_model_dir, tmp_path, batch_size):
    trainer = _trainer(tiny_model_dir, tmp_path, batch_size=batch_size)
    trainer.model.train()
    rows = [trainer.train_dataset[i % 8] for i in range(batch_size)]
    trainer._generate_and_score_completions(rows)
    assert trainer.generation_calls == 3


def test_masks_and_per_token_advantages_in_trainer_output(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, train_feedback=False)
    trainer.model.train()
    rows = [trainer.train_dataset[i // 2] for i in range(4)]  # 2 prompts x 2 generations, as TRL's sampler
    rollouts_seen = {}
    original = trainer._rollout

    def spy(prompts, trainer_=None):
        out = original(prompts, trainer_)
        rollouts_seen["r"] = trainer._rollouts
        return out

    trainer.rollout_func = spy
    out = trainer._generate_and_score_completions(rows)
    assert out["advantages"].shape == out["completion_ids"].shape  # (B, T)
    assert "tool_mask" in out
    for b, rollout in enumerate(rollouts_seen["r"]):
        pos = 0
        for seg in rollout.segments:
            span = slice(pos, pos + len(seg.ids))
            expected = 1 if seg.role == "solver" else 0
            assert out["tool_mask"][b, span].tolist() == [expected] * len(seg.ids), seg.role
            assert out["completion_mask"][b, span].tolist() == [1] * len(seg.ids)  # attention keeps every token
            pos += len(seg.ids)
    # num_items_in_batch counts only trained tokens.
    assert out["num_items_in_batch"].item() == (out["completion_mask"] * out["tool_mask"]).sum().item()


def test_one_step_changes_parameters_logs_metrics_and_writes_transcripts(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, episode_log_steps=1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed, "no parameter moved after one optimizer step"
    logs = trainer.state.log_history[0]
    for name in ["turns/1/accuracy", "turns/final/accuracy", "self_correction/delta",
                 "self_correction/incorrect_to_correct", "self_correction/correct_to_incorrect",
                 "feedback/mean_tokens"]:
        assert name in logs, name
    path = tmp_path / "episodes" / "step_000000.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 4
    for rec in records:
        assert {"group", "prompt", "turns", "final_reward"} <= rec.keys()
        assert [t["role"] for t in rec["turns"]] == ["solver", "feedback", "solver"]
        for turn in rec["turns"]:
            assert {"role", "text", "trained", "reward", "advantage"} <= turn.keys()
        feedback = rec["turns"][1]
        assert feedback["trained"] is False and feedback["advantage"] is None and feedback["reward"] is None
        assert rec["final_reward"] == rec["turns"][-1]["reward"]
        assert isinstance(rec["turns"][0]["advantage"], float)
    assert sorted({r["group"] for r in records}) == [0, 1]


def test_prompt_longer_than_max_prompt_length_is_a_clear_error(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, max_prompt_length=5)
    trainer.model.train()
    with pytest.raises(ValueError, match="max_prompt_length=5.*Raise max_prompt_length"):
        trainer._generate_and_score_completions([trainer.train_dataset[0]] * 2)
