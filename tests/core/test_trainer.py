"""MultiTurnGRPOTrainer end to end on a tiny random Llama with the real SmolLM2 tokenizer."""

import json

import pytest
import torch
from datasets import Dataset
from scripted import TINY_RUN, spy_rollouts

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
        output_dir=str(tmp_path), **{**TINY_RUN, "per_device_train_batch_size": batch_size, **overrides}
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
    seen = spy_rollouts(trainer)
    out = trainer._generate_and_score_completions(rows)
    assert out["advantages"].shape == out["completion_ids"].shape  # (B, T)
    assert "tool_mask" in out
    for b, rollout in enumerate(seen["rollouts"]):
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


def test_prompt_longer_than_max_prompt_length_fails_before_training(tiny_model_dir, tmp_path):
    # Checked once when the trainer is built, on every process alike, not mid-run on the process that drew the row.
    with pytest.raises(ValueError, match="Row 0 of the training set.*max_prompt_length=5.*Raise max_prompt_length"):
        _trainer(tiny_model_dir, tmp_path, max_prompt_length=5)


def lookup(query: str) -> str:
    """Look something up in the encyclopedia.

    Args:
        query: what to look up
    """
    return f"{query} is a city."


@pytest.fixture
def qwen3_tokenizer(tokenizer):
    """Qwen3's chat template (tool calls, `enable_thinking`) on the SmolLM2 vocabulary: the same ChatML tokens."""
    import copy

    from trl.chat_template_utils import qwen3_chat_template

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = qwen3_chat_template
    return tok


def _native_tool_trainer(tiny_model_dir, tmp_path, tokenizer, **overrides):
    from mtgrpo.episodes import ToolEpisode

    args = MTGRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, max_completion_length=4,
        max_steps=1, report_to=[], gradient_checkpointing=False, use_cpu=True, save_strategy="no", episode="tool",
        chat_template_kwargs={"enable_thinking": False}, **overrides,
    )  # fmt: skip
    return MultiTurnGRPOTrainer(
        model=str(tiny_model_dir), reward_funcs=[letter_e_reward], args=args, train_dataset=_dataset(),
        processing_class=tokenizer, episode=ToolEpisode(tools={"lookup": lookup}, protocol="native"),
    )  # fmt: skip


def test_length_check_tokenises_like_the_rollout(tiny_model_dir, tmp_path, qwen3_tokenizer):
    # The plain chat template gives a short prompt; the rollout's (tool schemas, enable_thinking: false) a long one.
    row = _dataset()[0]["prompt"]
    plain = len(qwen3_tokenizer.apply_chat_template(row, add_generation_prompt=True, tokenize=True, return_dict=False))
    assert plain < 64
    with pytest.raises(ValueError, match=r"Row 0 of the training set has a \d+-token prompt"):
        _native_tool_trainer(tiny_model_dir, tmp_path, qwen3_tokenizer, max_prompt_length=64)


def test_eval_and_training_feed_the_model_the_same_token_ids(tiny_model_dir, tmp_path, qwen3_tokenizer):
    from mtgrpo.evaluation.evaluate import evaluate

    trainer = _native_tool_trainer(tiny_model_dir, tmp_path, qwen3_tokenizer, max_prompt_length=1024)
    answer = qwen3_tokenizer("<answer>4</answer>", add_special_tokens=False)["input_ids"] + [qwen3_tokenizer.eos_token_id]
    seen = {"train": [], "eval": []}

    def train_generate(prompt_ids, images, multimodal_fields, num_generations):
        seen["train"].extend(list(p) for p in prompt_ids)
        return [list(answer) for _ in prompt_ids], None

    trainer._generate_single_turn = train_generate
    row = trainer.train_dataset[1]
    trainer._rollout([row["prompt"]] * 2)

    class RecordingBackend:
        stop_ids = {qwen3_tokenizer.eos_token_id}

        def generate_fn(self, temperature):
            def generate(prompt_ids, num_generations):
                seen["eval"].extend(list(p) for p in prompt_ids)
                return [list(answer) for _ in prompt_ids], None

            return generate

    evaluate(
        None, qwen3_tokenizer, trainer.episode, trainer.train_dataset.select([1]), letter_e_reward, 4,
        backend=RecordingBackend(), chat_template_kwargs=trainer.args.chat_template_kwargs,
    )  # fmt: skip
    assert seen["train"][0] == seen["eval"][0]
    text = qwen3_tokenizer.decode(seen["eval"][0])
    assert "<think>\n\n</think>" in text and '"name": "lookup"' in text  # template kwargs and tool schemas


def logging_reward(completions, log_metric, log_extra, **kwargs):
    """Logs through TRL's hooks: a scalar and one extra column value per completion."""
    lengths = [len(c[0]["content"]) for c in completions]
    log_metric("answer_chars", sum(lengths) / len(lengths))
    log_extra("answer_chars", lengths)
    return [float(n % 2) for n in lengths]


def test_reward_logs_of_turn1_and_final_stay_apart_and_table_shows_turn_advantages(tiny_model_dir, tmp_path):
    args = MTGRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=6,
        max_steps=1, report_to=[], gradient_checkpointing=False, use_cpu=True, save_strategy="no",
        feedback_source="template", seed=0,
    )  # fmt: skip
    trainer = MultiTurnGRPOTrainer(
        model=str(tiny_model_dir), reward_funcs=[logging_reward], args=args, train_dataset=_dataset()
    )
    trainer.model.train()
    seen = spy_rollouts(trainer)
    trainer._generate_and_score_completions([trainer.train_dataset[i // 2] for i in range(4)])
    finals = [len(r.turns("solver")[-1].text) for r in seen["rollouts"]]
    firsts = [len(r.turns("solver")[0].text) for r in seen["rollouts"]]
    metrics = trainer._metrics["train"]
    assert metrics["answer_chars"] == [pytest.approx(sum(finals) / 4)]
    assert metrics["turn1/answer_chars"] == [pytest.approx(sum(firsts) / 4)]
    extra = trainer._logs["extra"]
    assert list(extra["answer_chars"]) == finals and list(extra["turn1/answer_chars"]) == firsts
    # The table's advantage column holds the per-turn advantages that are trained, not TRL's single value.
    table = list(trainer._logs["advantages"])
    assert len(table) == 4 and all(a.startswith("solve=") and " refine=" in a for a in table)
