"""Issue 9: improvement credit for feedback, SCoRe's self_correct episode, MuTIS interventions, per-turn KL.

Episodes run with scripted generations (no model) on the real SmolLM2 tokenizer; the KL tests build a tiny trainer.
"""

import math

import pytest
import torch
from scripted import spy_rollouts

from mtgrpo.chat import ChatTurns
from mtgrpo.config import MTGRPOConfig
from mtgrpo.episodes import RefineEpisode, run_episodes


def _norm(values):
    x = torch.tensor(values)
    return (x - x.mean()) / (x.std() + 1e-4)


def _config(**overrides):
    return MTGRPOConfig(output_dir="/tmp/unused", use_cpu=True, report_to=[], **overrides)


class ScriptedGenerate:
    """Returns scripted texts turn by turn (the same text for every context of a call) and records every call."""

    def __init__(self, tokenizer, turns: list[str], eos: bool = True):
        self.tokenizer, self.turns, self.eos, self.calls = tokenizer, turns, eos, []

    def __call__(self, prompt_ids, num_generations):
        text = self.turns[min(len(self.calls), len(self.turns) - 1)]
        self.calls.append((len(prompt_ids), num_generations, [list(p) for p in prompt_ids]))
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        return [ids + ([self.tokenizer.eos_token_id] if self.eos and text else []) for _ in prompt_ids], None


def _prompts(tokenizer, n):
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"What is {i} + 1?"}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for i in range(n)
    ]


# ---- (a) improvement credit for the feedback writer --------------------------------------------------------------


def test_feedback_reward_improvement_hand_computed():
    episode = RefineEpisode(feedback_source="self", train_feedback=True, feedback_reward="improvement")
    r1 = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, float("nan"), 0.0, 0.0])
    rf = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0, float("nan"), 1.0])
    adv = episode.advantages({"turn1": r1, "final": rf}, num_generations=4, scale="group")
    # rf - r1, with 0 where only turn 1 is unscorable; an unscorable final answer (NaN) is left out of the group's
    # baseline with advantage 0, as outcome credit and TRL do (issue 21, item 9)
    assert torch.allclose(adv["feedback"][:4], _norm([0.0, 1.0, 0.0, -1.0]))
    assert adv["feedback"][6] == 0.0
    assert torch.allclose(adv["feedback"][[4, 5, 7]], _norm([0.0, 0.0, 1.0]))
    shown = episode.turn_rewards({"turn1": r1, "final": rf})["feedback"]
    assert torch.equal(torch.isnan(shown), torch.isnan(rf))
    assert shown[[0, 1, 2, 3, 4, 5, 7]].tolist() == [0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 1.0]
    # The solver turns keep their credit (defaults w = 0, alpha = 0: both on rf).
    assert torch.allclose(adv["refine"][:4], _norm([1.0, 1.0, 0.0, 0.0]))
    assert torch.equal(adv["solve"], adv["refine"])


def test_improvement_credit_leaves_unscorable_finals_out_of_the_baseline_like_outcome():
    r1 = torch.tensor([1.0, 0.0, 0.0, 1.0])
    rf = torch.tensor([1.0, 1.0, float("nan"), float("nan")])
    improvement = RefineEpisode(feedback_source="self", train_feedback=True, feedback_reward="improvement")
    outcome = RefineEpisode(feedback_source="self", train_feedback=True, feedback_reward="outcome")
    a_imp = improvement.advantages({"turn1": r1, "final": rf}, 4, "group")["feedback"]
    a_out = outcome.advantages({"turn1": r1, "final": rf}, 4, "group")["feedback"]
    assert a_imp[2:].tolist() == a_out[2:].tolist() == [0.0, 0.0]
    # The baseline is the two scorable episodes' improvements (0 and 1), not a mean pulled down by two zeros.
    assert torch.allclose(a_imp[:2], _norm([0.0, 1.0]))


def test_outcome_is_the_default_feedback_reward():
    assert _config().feedback_reward == "outcome"
    episode = RefineEpisode(feedback_source="self", train_feedback=True)
    r1, rf = torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    adv = episode.advantages({"turn1": r1, "final": rf}, num_generations=4, scale="group")
    assert torch.allclose(adv["feedback"], _norm([1.0, 1.0, 0.0, 0.0]))


def test_restating_a_right_first_answer_no_longer_scores_best_for_the_feedback_writer():
    # One group: the feedback (a) restates a right first answer, (b) fixes a wrong one, (c) leaves a wrong one
    # wrong, (d) talks a right one into a wrong one.
    r1 = torch.tensor([1.0, 0.0, 0.0, 1.0])
    rf = torch.tensor([1.0, 1.0, 0.0, 0.0])
    restate, fix, stay_wrong, breaks = range(4)
    outcome = RefineEpisode(feedback_source="self", train_feedback=True, feedback_reward="outcome")
    improvement = RefineEpisode(feedback_source="self", train_feedback=True, feedback_reward="improvement")
    a_out = outcome.advantages({"turn1": r1, "final": rf}, 4, "group")["feedback"]
    a_imp = improvement.advantages({"turn1": r1, "final": rf}, 4, "group")["feedback"]
    # Outcome credit: restating ties with fixing for the best advantage (the collapse seen in practice).
    assert a_out[restate] == a_out.max() and a_out[restate] == a_out[fix]
    # Improvement credit: fixing alone is best; restating earns what leaving a wrong answer wrong earns.
    assert a_imp[fix] == a_imp.max() and a_imp[restate] < a_imp[fix]
    assert torch.isclose(a_imp[restate], a_imp[stay_wrong]) and a_imp[breaks] == a_imp.min()


def test_improvement_credit_is_refused_for_plan_episodes():
    # Issue 21, item 11: a plan comes before any answer, so R(final) - R(turn 1) was silently ignored.
    with pytest.raises(ValueError, match=r"feedback_reward=improvement.*episode 'plan'.*feedback_reward: outcome"):
        _config(episode="plan", feedback_source="self", train_feedback=True, feedback_reward="improvement")
    with pytest.raises(ValueError, match=r"feedback_reward=improvement.*episode 'plan'"):
        _config(episode="plan", feedback_source="model", feedback_model_name_or_path="m", train_feedback_model=True,
                feedback_temperature=1.0, feedback_reward="improvement")  # fmt: skip
    assert _config(episode="plan", feedback_source="self", train_feedback=True).feedback_reward == "outcome"


def test_feedback_reward_config_errors():
    with pytest.raises(ValueError, match=r"Unknown feedback_reward 'gain'.*\['outcome', 'improvement'\]"):
        _config(feedback_reward="gain")
    with pytest.raises(ValueError, match="feedback_reward=improvement rewards the feedback writer.*train_feedback: true"):
        _config(feedback_reward="improvement", feedback_source="template")
    with pytest.raises(ValueError, match="feedback_reward=improvement.*train_feedback: true"):
        _config(feedback_reward="improvement", feedback_source="self", train_feedback=False)
    args = _config(feedback_reward="improvement", feedback_source="self", train_feedback=True)
    assert RefineEpisode.from_config(args).feedback_reward == "improvement"
    with pytest.raises(ValueError, match="Unknown feedback_reward"):
        RefineEpisode(feedback_reward="gain")


def test_trained_feedback_tokens_carry_the_improvement_advantage(tokenizer):
    from mtgrpo.advantages import token_advantages

    episode = RefineEpisode(
        feedback_source="self", train_feedback=True, feedback_reward="improvement",
        feedback_prompt="Review it.", refine_prompt="Answer again.",
    )  # fmt: skip
    gen = ScriptedGenerate(tokenizer, ["It is 1.", "Recheck.", "The answer is 2."])
    rollouts = run_episodes(episode, _prompts(tokenizer, 2), gen, ChatTurns(tokenizer), num_generations=2)
    adv = episode.advantages({"turn1": torch.tensor([0.0, 1.0]), "final": torch.tensor([1.0, 1.0])}, 2, "group")
    width = max(len(r.completion_ids()) for r in rollouts)
    tokens = token_advantages(rollouts, adv, width)
    for b, rollout in enumerate(rollouts):
        pos = 0
        for seg in rollout.segments:
            if seg.role == "feedback" and seg.trained:
                assert torch.allclose(tokens[b, pos : pos + len(seg.ids)], adv["feedback"][b].expand(len(seg.ids)))
            pos += len(seg.ids)
    assert adv["feedback"][0] > 0 > adv["feedback"][1]  # fixed a wrong answer vs restated a right one


# ---- (b) SCoRe: the self_correct episode and its two stages -------------------------------------------------------


def _score(stage1_steps=2, alpha=2.0, anchor=True):
    from mtgrpo.episodes.self_correct import SelfCorrectEpisode

    return SelfCorrectEpisode(prompt="There might be an error.", stage1_steps=stage1_steps, alpha=alpha,
                              anchor_turn1=anchor)  # fmt: skip


def test_self_correct_stream_masks_and_stage_credits(tokenizer):
    episode = _score()
    chat = ChatTurns(tokenizer)
    for step, credit in [(0, "solve_stage1"), (1, "solve_stage1"), (2, "solve"), (9, "solve")]:
        episode.set_step(step)
        gen = ScriptedGenerate(tokenizer, ["It is 3.", "The answer is 2."])
        rollouts = run_episodes(episode, _prompts(tokenizer, 2), gen, chat, num_generations=2)
        assert [(n, g) for n, g, _ in gen.calls] == [(2, 2), (2, 1)]  # two turns, one batched call each
        r = rollouts[0]
        assert [(s.role, s.trained, s.credit) for s in r.turns()] == [("solver", True, credit), ("solver", True, "refine")]
        instruction = [s for s in r.segments if s.role == "user" and s.text]
        assert [s.text for s in instruction] == ["There might be an error."] and not instruction[0].trained
        assert "There might be an error." in tokenizer.decode(gen.calls[1][2][0])  # the second call saw it
        assert episode.metrics(rollouts) == {"score/stage": [1.0 if step < 2 else 2.0] * 2}
    # Stage I without a turn-1 KL: turn 1 is masked out (only the second attempt is trained).
    masked = _score(anchor=False)
    r = run_episodes(masked, _prompts(tokenizer, 1), ScriptedGenerate(tokenizer, ["a", "b"]), chat, 1)[0]
    assert [s.trained for s in r.turns()] == [False, True]


def test_self_correct_advantages_per_stage_hand_computed():
    r1 = torch.tensor([1.0, 0.0, 0.0, 1.0])
    r2 = torch.tensor([1.0, 1.0, 0.0, 0.0])
    episode = _score(stage1_steps=3, alpha=2.0)
    episode.set_step(2)  # stage I: turn 2 on r2, turn 1 earns nothing
    adv = episode.advantages({"turn1": r1, "final": r2}, 4, "group")
    assert torch.allclose(adv["refine"], _norm([1.0, 1.0, 0.0, 0.0]))
    assert torch.equal(adv["solve_stage1"], torch.zeros(4))
    episode.set_step(3)  # stage II: turn 1 on r1, turn 2 on r2 + 2 (r2 - r1)
    adv = episode.advantages({"turn1": r1, "final": r2}, 4, "group")
    assert torch.allclose(adv["solve"], _norm([1.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(adv["refine"], _norm([1.0, 3.0, 0.0, -2.0]))
    # An unscorable turn gives no bonus.
    nan = float("nan")
    adv = episode.advantages({"turn1": torch.tensor([nan, 0.0, 0.0, 1.0]), "final": r2}, 4, "group")
    assert torch.allclose(adv["refine"], _norm([1.0, 3.0, 0.0, -2.0]))


def test_self_correct_config_errors_and_defaults(caplog):
    args = _config(episode="self_correct", score_stage1_steps=3, max_steps=10, refine_bonus_alpha=2.0,
                   turn_kl={"solve_stage1": 1.0})  # fmt: skip
    from mtgrpo.episodes import build_episode

    episode = build_episode(args)
    assert (episode.stage1_steps, episode.alpha, episode.anchor_turn1) == (3, 2.0, True)
    assert episode.prompt.startswith("There might be an error in the solution above.")
    with pytest.raises(ValueError, match=r"score_stage1_steps=20 > max_steps=10.*Lower score_stage1_steps"):
        _config(episode="self_correct", score_stage1_steps=20, max_steps=10, refine_bonus_alpha=1.0)
    with pytest.raises(ValueError, match="score_stage1_steps=-1 must be >= 0"):
        _config(episode="self_correct", score_stage1_steps=-1)
    with pytest.raises(ValueError, match="only applies to episode: self_correct"):
        _config(episode="refine", score_stage1_steps=2)
    with caplog.at_level("WARNING"):
        _config(episode="self_correct", score_stage1_steps=0, refine_bonus_alpha=0.0)
    assert "skips SCoRe's stage I" in caplog.text and "collapse" in caplog.text


def _tiny_trainer(tiny_model_dir, tmp_path, **overrides):
    from datasets import Dataset

    from mtgrpo import MultiTurnGRPOTrainer

    def letter_e_reward(completions, **kwargs):
        return [min(c[0]["content"].count("e"), 5) / 5 for c in completions]

    def math_answer_correct(completions, answer, **kwargs):
        return [float(a in c[0]["content"]) for c, a in zip(completions, answer, strict=False)]

    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i)} for i in range(8)]
    )
    settings = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=6,
        max_steps=4, learning_rate=1e-2, report_to=[], logging_steps=1, gradient_checkpointing=False, use_cpu=True,
        save_strategy="no", seed=0,
    )  # fmt: skip
    args = MTGRPOConfig(**{**settings, **overrides})
    return MultiTurnGRPOTrainer(
        model=str(tiny_model_dir), reward_funcs=[letter_e_reward, math_answer_correct], args=args, train_dataset=dataset
    )


def test_trainer_switches_score_stage_by_global_step(tiny_model_dir, tmp_path):
    trainer = _tiny_trainer(tiny_model_dir, tmp_path, episode="self_correct", score_stage1_steps=2,
                            refine_bonus_alpha=1.0)  # fmt: skip
    trainer.model.train()
    rows = [trainer.train_dataset[i // 2] for i in range(4)]
    seen = []
    original = trainer._rollout

    def spy(prompts, trainer_=None):
        out = original(prompts, trainer_)
        seen.append([[s.credit for s in r.turns() if s.trained] for r in trainer._rollouts])
        return out

    trainer.rollout_func = spy
    for step in (0, 2):
        trainer.state.global_step = step
        out = trainer._generate_and_score_completions(rows)
        assert trainer.generation_calls == 2 * (1 + step // 2)
        assert out["advantages"].shape == out["completion_ids"].shape
        # Trained at step 0 or 2 only (one micro-batch per generation): nothing of it is trained in another stage.
        assert not any(key.startswith("stage2_") for key in out)
    # Stage I without a turn-1 KL: only the second attempt is trained; stage II: both.
    assert seen[0] == [["refine"]] * 4 and seen[1] == [["solve", "refine"]] * 4
    assert trainer._metrics["train"]["score/stage"] == [1.0, 2.0]


def _trl_loss_inputs(monkeypatch) -> list[tuple[int, dict]]:
    """Record (optimizer step, inputs) of every call of TRL's own `_compute_loss`: what TRL's loss really trains on."""
    from trl import GRPOTrainer

    seen, original = [], GRPOTrainer._compute_loss

    def record(self, model, inputs):
        seen.append((self.state.global_step, {k: v for k, v in inputs.items()}))
        return original(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", record)
    return seen


def _turn1_mask(rollouts, width):
    out = torch.zeros(len(rollouts), width, dtype=torch.bool)
    for b, rollout in enumerate(rollouts):
        pos, first = 0, rollout.turns("solver")[0]
        for seg in rollout.segments:
            if seg is first:
                out[b, pos : pos + len(seg.ids)] = True
            pos += len(seg.ids)
    return out


def _group_normalized(rewards: torch.Tensor, n: int) -> torch.Tensor:
    grouped = rewards.view(-1, n)
    return ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)


def _rollout_of_each_row(inputs, rollouts) -> list[int]:
    """For each row of a (shuffled, split) micro-batch, the index of its rollout (same prompt, same completion)."""
    out = []
    for prompt, keep, ids in zip(inputs["prompt_ids"].tolist(), inputs["prompt_mask"].tolist(),
                                 inputs["completion_ids"].tolist(), strict=True):  # fmt: skip
        prompt = [t for t, k in zip(prompt, keep, strict=True) if k]
        matches = [b for b, r in enumerate(rollouts)
                   if r.prompt_ids == prompt and ids[: len(r.completion_ids())] == r.completion_ids()]  # fmt: skip
        assert matches, "a trained row that is no rollout of the batch"
        out.append(matches[0])  # identical episodes of one group have identical rewards and advantages
    return out


@pytest.mark.parametrize("reuse", [{"num_iterations": 2}, {"steps_per_generation": 2}])
def test_score_stage_of_a_reused_batch_is_the_stage_of_the_step_that_trains_it(tiny_model_dir, tmp_path, monkeypatch,
                                                                               reuse):  # fmt: skip
    """ONE generation, sampled at step 0 (stage I, score_stage1_steps=1), trained at steps 0 and 1: at step 1 TRL's
    loss sees stage II's mask (turn 1 trained), credit (turn 1 on r1, turn 2 on r2 + alpha (r2 - r1)) and token
    count. Before the stage was decided per optimizer step, step 1 trained the batch with stage I's."""
    seen_loss = _trl_loss_inputs(monkeypatch)
    trainer = _tiny_trainer(tiny_model_dir, tmp_path, episode="self_correct", score_stage1_steps=1, max_steps=2,
                            refine_bonus_alpha=2.0, **reuse)  # fmt: skip
    seen = spy_rollouts(trainer)
    rewards = []
    weighted = trainer._weighted_rewards
    trainer._weighted_rewards = lambda device: rewards.append(weighted(device)) or rewards[-1]
    trainer.train()
    assert trainer.generation_calls == 2 and len(rewards) == 1  # one generation of two turns
    assert [step for step, _ in seen_loss] == [0, 1]
    (r,), rollouts, n = rewards, seen["rollouts"], trainer.args.num_generations
    solve = _group_normalized(r["turn1"], n)
    refine = _group_normalized(r["final"] + 2.0 * (r["final"] - r["turn1"]), n)
    for step, inputs in seen_loss:
        assert not any(k.startswith("stage2_") for k in inputs)
        width = inputs["completion_ids"].size(1)
        for i, b in enumerate(_rollout_of_each_row(inputs, rollouts)):
            turn1 = _turn1_mask([rollouts[b]], width)[0]
            trained = inputs["tool_mask"][i].bool() & inputs["completion_mask"][i].bool()
            if step == 0:  # stage I without a turn-1 KL: turn 1 is out of the loss
                assert not trained[turn1].any()
                continue
            assert trained[turn1].all()  # stage II: turn 1 trained with r1's advantage, turn 2 with the shaped one
            assert torch.allclose(inputs["advantages"][i][turn1], solve[b].expand(int(turn1.sum())))
            second = trained & ~turn1
            assert second.any()
            assert torch.allclose(inputs["advantages"][i][second], refine[b].expand(int(second.sum())), atol=1e-5)
        if "num_iterations" in reuse:  # the micro-batch is the whole generation: TRL's token count is its own
            assert inputs["num_items_in_batch"] == (inputs["completion_mask"] * inputs["tool_mask"]).sum()
    logged = [e for e in trainer.state.log_history if "score/trained_stage" in e]
    assert [e["score/trained_stage"] for e in logged] == [1.0, 2.0]
    assert [e["score/stage"] for e in trainer.state.log_history if "score/stage" in e] == [1.0]  # sampled in stage I


def test_score_turn1_kl_of_a_reused_batch_follows_the_training_stage(tiny_model_dir, tmp_path, monkeypatch):
    """SCoRe's stage-I turn-1 KL (turn_kl solve_stage1) holds at step 0; the same batch trained at step 1 (stage II)
    gets stage II's coefficients, none on turn 1 here."""
    seen_loss = _trl_loss_inputs(monkeypatch)
    trainer = _tiny_trainer(tiny_model_dir, tmp_path, episode="self_correct", score_stage1_steps=1, max_steps=2,
                            refine_bonus_alpha=2.0, num_iterations=2, turn_kl={"solve_stage1": 1.0})  # fmt: skip
    seen = spy_rollouts(trainer)
    trainer.train()
    (_, first), (_, second) = seen_loss
    width = first["completion_ids"].size(1)
    turn1 = torch.stack([_turn1_mask(seen["rollouts"], width)[b] for b in _rollout_of_each_row(first, seen["rollouts"])])
    assert torch.equal(first["turn_kl_coef"], turn1.float())
    assert torch.equal(second["turn_kl_coef"], torch.zeros_like(second["turn_kl_coef"]))
    assert second["tool_mask"][turn1].all()  # turn 1 still trained, now with its stage-II advantage


# ---- (c) MuTIS interventions --------------------------------------------------------------------------------------

INTERVENE = "No answer yet. Put it in <answer></answer> tags."


def _mutis(**overrides):
    from mtgrpo.episodes.mutis import MutisEpisode

    return MutisEpisode(**{"intervention_text": INTERVENE, "max_turns": 4, **overrides})


class AnswerAfter:
    """Prompt i ("What is i + 1?") answers after `after[i]` interventions; before that it rambles without an answer."""

    def __init__(self, tokenizer, after: dict[int, int], ramble: str = "Let me think about it"):
        self.tokenizer, self.after, self.ramble, self.calls = tokenizer, after, ramble, []

    def __call__(self, prompt_ids, num_generations):
        self.calls.append(len(prompt_ids))
        out = []
        for ids in prompt_ids:
            text = self.tokenizer.decode(ids)
            i = int(text.split("What is ")[1].split(" ")[0])
            seen = text.count("No answer yet.")
            reply = f"<answer>{i + 1}</answer>" if seen >= self.after.get(i, 99) else self.ramble
            out.append(self.tokenizer(reply, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id])
        return out, None


def test_mutis_intervenes_until_an_answer_masks_the_intervention(tokenizer):
    episode = _mutis()
    gen = AnswerAfter(tokenizer, {0: 0, 1: 1, 2: 2})
    rollouts = run_episodes(episode, _prompts(tokenizer, 3), gen, ChatTurns(tokenizer), num_generations=1)
    assert gen.calls == [3, 2, 1]  # one batched call per turn over the unfinished episodes
    assert [len(r.turns("solver")) for r in rollouts] == [1, 2, 3]
    r = rollouts[2]
    assert [(s.credit, s.trained) for s in r.turns()] == [("solve", True), ("retry", True), ("retry", True)]
    injected = [s for s in r.segments if s.role == "user" and s.text]
    assert [s.text for s in injected] == [INTERVENE] * 2 and not any(s.trained for s in injected)
    assert episode.scored_turns(r)["final"].text == "<answer>3</answer>"
    assert episode.scored_turns(r)["turn1"].text == "Let me think about it"
    metrics = episode.metrics(rollouts)
    assert metrics["interventions/per_episode"] == [0.0, 1.0, 2.0]
    assert metrics["interventions/answered"] == [1.0, 1.0, 1.0]
    assert metrics["tokens/per_episode"] == [float(sum(s.num_tokens for s in r.turns())) for r in rollouts]


def test_mutis_episode_that_never_answers_ends_at_max_turns_and_is_scored(tokenizer):
    episode = _mutis(max_turns=3)
    gen = AnswerAfter(tokenizer, {})
    rollouts = run_episodes(episode, _prompts(tokenizer, 2), gen, ChatTurns(tokenizer), num_generations=2)
    assert gen.calls == [2, 2, 2]
    assert all(len(r.turns("solver")) == 3 and r.done for r in rollouts)
    assert episode.metrics(rollouts)["interventions/per_episode"] == [2.0, 2.0]
    assert episode.metrics(rollouts)["interventions/answered"] == [0.0, 0.0]
    rf = torch.tensor([0.0, 0.0])
    adv = episode.advantages({"turn1": rf, "final": rf}, 2, "group")
    assert torch.equal(adv["solve"], torch.zeros(2)) and torch.equal(adv["retry"], torch.zeros(2))
    # max_turns 1: no intervention at all.
    one = run_episodes(_mutis(max_turns=1), _prompts(tokenizer, 1), AnswerAfter(tokenizer, {}), ChatTurns(tokenizer), 1)
    assert len(one[0].turns()) == 1


def test_mutis_turn_caps_cut_each_turn(tokenizer):
    episode = _mutis(turn_max_tokens=[3, 2], max_turns=3)
    ramble = "one two three four five six seven"
    gen = AnswerAfter(tokenizer, {}, ramble=ramble)
    r = run_episodes(episode, _prompts(tokenizer, 1), gen, ChatTurns(tokenizer), 1)[0]
    assert [s.num_tokens for s in r.turns()] == [3, 2, 2]  # the last entry caps every later turn
    assert [len(s.ids) for s in r.turns()] == [3, 2, 2]
    first = r.turns()[0]
    assert first.text == tokenizer.decode(first.ids, skip_special_tokens=True) and ramble.startswith(first.text.strip())
    # A cut turn reads as truncated, so the template's end-of-turn token (masked) closes it before the intervention.
    after_first = r.segments[r.segments.index(first) + 1]
    assert after_first.ids == [tokenizer.eos_token_id] and not after_first.trained
    assert episode.turn_cap(0) == 3 and episode.turn_cap(5) == 2 and _mutis().turn_cap(0) is None


def test_mutis_answer_check_follows_the_correctness_reward():
    math = _mutis()
    assert math.has_answer("so \\boxed{12}") and math.has_answer("The answer is 12.") and math.has_answer("<answer>12</answer>")
    assert not math.has_answer("7 + 5 = 12") and not math.has_answer("<answer></answer>")
    args = _config(episode="mutis", correctness_reward="triviaqa_exact_match")
    from mtgrpo.episodes import build_episode

    tag = build_episode(args)
    assert tag.answer_format == "tag" and tag.has_answer("<answer>Paris</answer>") and not tag.has_answer("The answer is Paris.")
    assert build_episode(_config(episode="mutis")).answer_format == "explicit"


def test_mutis_final_outcome_on_every_trained_turn():
    rf = torch.tensor([1.0, 0.0, 1.0, 1.0])
    adv = _mutis().advantages({"turn1": torch.zeros(4), "final": rf}, 4, "group")
    assert torch.allclose(adv["solve"], _norm([1.0, 0.0, 1.0, 1.0])) and torch.equal(adv["solve"], adv["retry"])


def test_mutis_config_errors():
    with pytest.raises(ValueError, match="intervention_text is empty.*Set it"):
        _config(episode="mutis", intervention_text="  ")
    with pytest.raises(ValueError, match="max_turns=0 must be >= 1"):
        _config(episode="mutis", max_turns=0)
    with pytest.raises(ValueError, match=r"turn_max_tokens=\[64, 0\] must be a non-empty list of positive"):
        _config(episode="mutis", turn_max_tokens=[64, 0])
    args = _config(episode="mutis", max_turns=3, turn_max_tokens=[64, 32])
    from mtgrpo.episodes import build_episode

    episode = build_episode(args)
    assert (episode.max_turns, episode.turn_max_tokens, episode.intervention_text) == (3, [64, 32], args.intervention_text)


# ---- (d) per-turn KL with gradient ------------------------------------------------------------------------------

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"]


def _kl_batch(trainer, perturb=True):
    """A scored batch (2 prompts x 2 generations) from a policy moved away from its reference."""
    if perturb:
        torch.manual_seed(1)
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    rows = [trainer.train_dataset[i // 2] for i in range(4)]
    seen = spy_rollouts(trainer)
    return trainer._generate_and_score_completions(rows), seen["rollouts"]


def _credit_mask(rollouts, width, credit):
    out = torch.zeros(len(rollouts), width, dtype=torch.bool)
    for b, rollout in enumerate(rollouts):
        pos = 0
        for seg in rollout.segments:
            if seg.credit == credit and seg.trained:
                out[b, pos : pos + len(seg.ids)] = True
            pos += len(seg.ids)
    return out


def _logps_grad(trainer, inputs):
    """Gradient of the loss w.r.t. the policy's per-token log-probs of TRL's forward pass in `_compute_loss`."""
    forward = trainer._get_per_token_logps_and_entropies
    kept = []

    def keep(*args, **kwargs):
        out = forward(*args, **kwargs)
        out[0].retain_grad()
        kept.append(out[0])
        return out

    trainer._get_per_token_logps_and_entropies = keep
    try:
        trainer.model.zero_grad()
        trainer._compute_loss(trainer.model, inputs).backward()
    finally:
        del trainer._get_per_token_logps_and_entropies
    return kept[0].grad.detach().clone()


def test_turn_kl_gradient_reaches_turn1_tokens_only(tiny_model_dir, tmp_path):
    trainer = _tiny_trainer(tiny_model_dir, tmp_path, feedback_source="template", turn_kl={"solve": 0.5})
    assert trainer.ref_model is not None and trainer.beta == 0.0 and trainer.args.beta == 0.0
    inputs, rollouts = _kl_batch(trainer)
    assert inputs["turn_kl_coef"].shape == inputs["completion_ids"].shape and "ref_per_token_logps" in inputs
    width = inputs["completion_ids"].size(1)
    turn1 = _credit_mask(rollouts, width, "solve")
    assert turn1.any() and _credit_mask(rollouts, width, "refine").any()
    assert torch.equal(inputs["turn_kl_coef"], 0.5 * turn1.float())
    with_kl = _logps_grad(trainer, inputs)
    without_kl = _logps_grad(trainer, {k: v for k, v in inputs.items() if k != "turn_kl_coef"})
    kl_grad = with_kl - without_kl
    assert (kl_grad[turn1].abs() > 0).all()  # every turn-1 token gets the KL's gradient ...
    assert torch.equal(kl_grad[~turn1], torch.zeros_like(kl_grad[~turn1]))  # ... and no other token does
    assert trainer._metrics["train"]["turn_kl/kl"][-1] > 0


def test_zero_turn_kl_is_todays_loss_bit_for_bit(tiny_model_dir, tmp_path):

    trainer = _tiny_trainer(tiny_model_dir, tmp_path, feedback_source="template", turn_kl={"solve": 0.0, "refine": 0.0})
    assert trainer.ref_model is None  # nothing to compute: no reference model is built
    inputs, _ = _kl_batch(trainer, perturb=False)
    assert "turn_kl_coef" not in inputs and "ref_per_token_logps" not in inputs
    _assert_loss_is_trls(trainer, inputs)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_uniform_turn_kl_equals_trl_beta_for_every_loss_type(tiny_model_dir, tmp_path, bias_correction):
    from trl import GRPOTrainer

    beta = 0.3
    trainer = _tiny_trainer(tiny_model_dir, tmp_path, feedback_source="template", turn_kl={"solve": beta, "refine": beta},
                            use_bias_correction_kl=bias_correction)  # fmt: skip
    inputs, _ = _kl_batch(trainer)
    trl_inputs = {k: v for k, v in inputs.items() if k != "turn_kl_coef"}
    for loss_type in LOSS_TYPES:
        trainer.loss_type = loss_type
        ours = trainer._compute_loss(trainer.model, inputs)
        trainer.beta = beta
        try:
            trls = GRPOTrainer._compute_loss(trainer, trainer.model, trl_inputs)
        finally:
            trainer.beta = 0.0
        assert torch.allclose(ours, trls, rtol=1e-5, atol=1e-7), (loss_type, ours.item(), trls.item())


def test_turn_kl_config_errors():
    with pytest.raises(ValueError, match=r"Unknown credit key 'turn1' in turn_kl for episode 'refine'.*'solve'"):
        _config(turn_kl={"turn1": 0.1})
    with pytest.raises(
        ValueError, match=r"Unknown credit key 'refine' in turn_kl for episode 'plan'.*'plan'"
    ):
        _config(episode="plan", feedback_source="self", turn_kl={"refine": 0.1})
    with pytest.raises(ValueError, match=r"turn_kl\['solve'\]=-0.1 is negative.*>= 0"):
        _config(turn_kl={"solve": -0.1})
    with pytest.raises(ValueError, match="must be a number"):
        _config(turn_kl={"solve": "strong"})
    with pytest.raises(ValueError, match="not valid JSON"):
        _config(turn_kl="{solve: 0.1")
    assert _config(turn_kl='{"solve": 0.1, "refine": 0}').turn_kl == {"solve": 0.1, "refine": 0.0}  # from the CLI
    assert _config().turn_kl == {}
    assert _config(episode="self_correct", turn_kl={"solve_stage1": 1.0}, score_stage1_steps=1).turn_kl


def test_score_recipe_trains_with_its_turn1_kl(tiny_model_dir, tmp_path):
    # Stage I for the first step (turn 1 held by its KL), stage II for the second: a real train() on a tiny model.
    trainer = _tiny_trainer(tiny_model_dir, tmp_path, episode="self_correct", score_stage1_steps=1, max_steps=2,
                            refine_bonus_alpha=2.0, turn_kl={"solve_stage1": 1.0})  # fmt: skip
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "score/stage" in entry]
    assert [entry["score/stage"] for entry in logs] == [1.0, 2.0]
    assert "turn_kl/kl" in logs[0] and "turn_kl/kl" not in logs[1]  # only stage I's turn 1 carries a coefficient


def _assert_loss_is_trls(trainer, inputs) -> None:
    """For every loss type, our loss equals TRL's own on the same inputs, bit for bit."""
    from trl import GRPOTrainer

    for loss_type in LOSS_TYPES:
        trainer.loss_type = loss_type
        torch.manual_seed(0)
        ours = trainer._compute_loss(trainer.model, inputs)
        torch.manual_seed(0)
        todays = GRPOTrainer._compute_loss(trainer, trainer.model, inputs)
        assert torch.equal(ours, todays), loss_type


def _overflow_kl_where(inputs, where: torch.Tensor) -> dict:
    """The batch with a reference log-prob so far above the policy's on `where` that the k3 KL overflows to inf."""
    ref = inputs["ref_per_token_logps"].clone()
    ref[where] = 1.0e4
    return {**inputs, "ref_per_token_logps": ref}


def test_turn_kl_zero_coefficient_on_an_overflowing_token_is_not_nan(tiny_model_dir, tmp_path):
    # Issue 21, item 13: coef * kl * mask gave 0 * inf = NaN on refine tokens (coefficient 0) and padded tokens.
    trainer = _tiny_trainer(tiny_model_dir, tmp_path, feedback_source="template", turn_kl={"solve": 0.5})
    inputs, rollouts = _kl_batch(trainer)
    width = inputs["completion_ids"].size(1)
    refine = _credit_mask(rollouts, width, "refine")
    padded = inputs["completion_mask"] == 0
    assert refine.any()
    for where in (refine, padded) if padded.any() else (refine,):
        loss = trainer._compute_loss(trainer.model, _overflow_kl_where(inputs, where))
        assert torch.isfinite(loss), loss
    assert all(map(math.isfinite, trainer._metrics["train"]["turn_kl/kl"]))


def test_turn_kl_batch_without_a_positive_coefficient_builds_no_kl_term(tiny_model_dir, tmp_path):
    # A batch whose tokens all have coefficient 0 (e.g. SCoRe stage II with turn_kl only on solve_stage1): TRL's loss,
    # bit for bit, even where the KL overflows.

    trainer = _tiny_trainer(tiny_model_dir, tmp_path, feedback_source="template", turn_kl={"solve": 0.5})
    inputs, _ = _kl_batch(trainer)
    inputs = _overflow_kl_where({**inputs, "turn_kl_coef": torch.zeros_like(inputs["turn_kl_coef"])},
                                torch.ones_like(inputs["completion_mask"], dtype=torch.bool))  # fmt: skip
    _assert_loss_is_trls(trainer, inputs)
