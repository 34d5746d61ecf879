"""Episode loop and refine protocol with scripted generations (no model), on the real SmolLM2 tokenizer."""

import pytest
import torch
from scripted import ScriptedGenerate

from mtgrpo.advantages import group_normalize, token_advantages
from mtgrpo.chat import ChatTurns
from mtgrpo.config import MTGRPOConfig
from mtgrpo.episodes import RefineEpisode, run_episodes


def _episode(source="self", train_feedback=False):
    return RefineEpisode(
        feedback_source=source,
        train_feedback=train_feedback,
        feedback_prompt="Review it.",
        feedback_template="Recheck the sum.",
        refine_prompt="Answer again.",
    )


def _prompts(tokenizer, n):
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"What is {i} + 1?"}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for i in range(n)
    ]


def test_self_feedback_stream_masks_and_calls(tokenizer):
    gen = ScriptedGenerate(tokenizer, [["It is 2."] * 2, ["Check the carry."] * 2, ["The answer is 2."] * 2])
    chat = ChatTurns(tokenizer)
    rollouts = run_episodes(_episode(), _prompts(tokenizer, 2), gen, chat, num_generations=2)
    assert [(n, g) for n, g, _ in gen.calls] == [(2, 2), (2, 1), (2, 1)]  # one call per turn, n only on turn 1
    r = rollouts[0]
    assert [s.role for s in r.turns()] == ["solver", "feedback", "solver"]
    mask = r.tool_mask()
    pos = 0
    for seg in r.segments:
        expected = 1 if seg.role == "solver" else 0  # feedback (untrained), injected prompts and headers are 0
        assert mask[pos : pos + len(seg.ids)] == [expected] * len(seg.ids)
        pos += len(seg.ids)
    assert pos == len(r.completion_ids())
    # The stream is the chat template's own rendering of the conversation, built without re-tokenising.
    rendered = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": "What is 0 + 1?"},
            {"role": "assistant", "content": "It is 2."},
            {"role": "user", "content": "Review it."},
            {"role": "assistant", "content": "Check the carry."},
            {"role": "user", "content": "Answer again."},
            {"role": "assistant", "content": "The answer is 2."},
        ],
        tokenize=True,
        return_dict=False,
    )
    assert r.context_ids() == rendered[: len(r.context_ids())]
    # The third call saw the first attempt and the feedback in its context.
    assert tokenizer.decode(gen.calls[2][2][0]).count("Check the carry.") == 1


def test_template_feedback_is_masked_and_not_generated(tokenizer):
    gen = ScriptedGenerate(tokenizer, [["It is 3."], ["The answer is 2."]])
    rollouts = run_episodes(
        _episode("template"), _prompts(tokenizer, 1), gen, ChatTurns(tokenizer), 1
    )
    assert len(gen.calls) == 2
    r = rollouts[0]
    assert [(s.role, s.trained) for s in r.turns()] == [("solver", True), ("feedback", False), ("solver", True)]
    feedback = r.turns("feedback")[0]
    assert feedback.text == "Recheck the sum." and "Recheck the sum." in tokenizer.decode(feedback.ids)
    assert feedback.num_tokens == len(tokenizer("Recheck the sum.", add_special_tokens=False)["input_ids"])


def test_trained_feedback_gets_its_own_credit(tokenizer):
    gen = ScriptedGenerate(tokenizer, [["a"], ["b"], ["c"]])
    r = run_episodes(_episode(train_feedback=True), _prompts(tokenizer, 1), gen, ChatTurns(tokenizer), 1)[0]
    assert [(s.role, s.trained, s.credit) for s in r.turns()] == [
        ("solver", True, "solve"), ("feedback", True, "feedback"), ("solver", True, "refine")]


@pytest.mark.parametrize("first", ["", "2 + 2 is"])
def test_empty_or_truncated_first_turn_is_closed_and_continues(tokenizer, first):
    # Empty: nothing generated; truncated: no EOS. Either way the episode goes on and the closing EOS is masked.
    gen = ScriptedGenerate(tokenizer, [[first], ["fb"], ["The answer is 4."]], eos=False)
    r = run_episodes(_episode(), _prompts(tokenizer, 1), gen, ChatTurns(tokenizer), 1)[0]
    assert len(gen.calls) == 3
    closing = r.segments[1]
    assert closing.ids == [tokenizer.eos_token_id] and not closing.trained
    assert r.turns("solver")[-1].text == "The answer is 4."
    # The final turn has no EOS and is left unclosed, so TRL still sees it as truncated.
    assert r.completion_ids()[-1] != tokenizer.eos_token_id


def test_group_normalize_matches_hand_computation():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    adv = group_normalize(r, 4)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()  # unbiased, as TRL
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4)
    assert torch.allclose(adv[:4], expected)
    assert torch.equal(adv[4:], torch.zeros(4))  # identical rewards carry no signal
    assert torch.allclose(group_normalize(r, 4, "none")[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_refine_advantages_per_turn_hand_computed(tokenizer):
    episode = RefineEpisode(feedback_source="self", train_feedback=True, turn1_reward_weight=0.5, refine_bonus_alpha=1.0)
    r1 = torch.tensor([1.0, 0.0, 0.0, 0.0])
    rf = torch.tensor([1.0, 1.0, 0.0, 0.0])
    adv = episode.advantages({"turn1": r1, "final": rf}, num_generations=4, scale="group")

    def norm(x):
        x = torch.tensor(x)
        return (x - x.mean()) / (x.std() + 1e-4)

    assert torch.allclose(adv["solve"], norm([1.0, 0.5, 0.0, 0.0]))  # 0.5 * r1 + 0.5 * rf
    assert torch.allclose(adv["refine"], norm([1.0, 2.0, 0.0, 0.0]))  # rf + 1.0 * (rf - r1)
    assert torch.allclose(adv["feedback"], norm([1.0, 1.0, 0.0, 0.0]))

    # Placement on tokens: each trained turn's tokens carry its own advantage, everything else 0.
    gen = ScriptedGenerate(tokenizer, [["x y"] * 4, ["f g h"] * 4, ["z"] * 4])
    rollouts = run_episodes(episode, _prompts(tokenizer, 4), gen, ChatTurns(tokenizer), 4)
    width = max(len(r.completion_ids()) for r in rollouts) + 3
    tokens = token_advantages(rollouts, adv, width)
    for b, r in enumerate(rollouts):
        pos = 0
        for seg in r.segments:
            want = adv[seg.credit][b].item() if seg.trained else 0.0
            assert torch.allclose(tokens[b, pos : pos + len(seg.ids)], torch.full((len(seg.ids),), want))
            pos += len(seg.ids)
        assert torch.equal(tokens[b, pos:], torch.zeros(width - pos))


def test_config_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="feedback_source.*'critic'.*self"):
        MTGRPOConfig(output_dir=str(tmp_path), feedback_source="critic")
    with pytest.raises(ValueError, match="train_feedback=true needs feedback_source=self"):
        MTGRPOConfig(output_dir=str(tmp_path), feedback_source="template", train_feedback=True)
    with pytest.raises(ValueError, match="turn1_reward_weight"):
        MTGRPOConfig(output_dir=str(tmp_path), turn1_reward_weight=2.0)
    with pytest.raises(ValueError, match="divisible by num_generations"):
        MTGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=6, num_generations=4)


def test_bf16_without_gpu_falls_back_to_fp32(tmp_path, caplog):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = MTGRPOConfig(output_dir=str(tmp_path), bf16=True, per_device_train_batch_size=2, num_generations=2)
    assert args.bf16 is False
    assert "no CUDA GPU" in caplog.text


@pytest.mark.parametrize("nan_turn", ["turn1", "final"])
def test_an_unscorable_turn_does_not_poison_advantages_that_do_not_use_it(nan_turn):
    # w = 1, alpha = 0: the solve advantage uses only R(turn 1), the refine advantage only R(final).
    episode = RefineEpisode(feedback_source="template", turn1_reward_weight=1.0, refine_bonus_alpha=0.0)
    rewards = {"turn1": torch.tensor([1.0, 0.0, 1.0, 0.0]), "final": torch.tensor([1.0, 1.0, 0.0, 0.0])}
    clean = episode.advantages(rewards, num_generations=4, scale="group")
    rewards[nan_turn] = torch.tensor([float("nan"), 0.0, 1.0, 0.0])
    adv = episode.advantages(rewards, num_generations=4, scale="group")
    untouched = "refine" if nan_turn == "turn1" else "solve"
    assert torch.equal(adv[untouched], clean[untouched])  # not a single NaN-driven 0
    touched = "solve" if nan_turn == "turn1" else "refine"
    assert adv[touched][0] == 0 and torch.isfinite(adv[touched]).all()  # the unscorable sample only


def test_improvement_bonus_is_zero_where_turn1_is_unscorable():
    episode = RefineEpisode(feedback_source="template", turn1_reward_weight=1.0, refine_bonus_alpha=2.0)
    r1 = torch.tensor([float("nan"), 0.0, 1.0, 0.0])
    rf = torch.tensor([1.0, 1.0, 1.0, 0.0])
    adv = episode.advantages({"turn1": r1, "final": rf}, num_generations=4, scale="none")
    shaped = torch.tensor([1.0, 3.0, 1.0, 0.0])  # rf + 2 * (rf - r1), with the undefined bonus of sample 0 at 0
    assert torch.allclose(adv["refine"], shaped - shaped.mean())


def test_credit_defaults_follow_mlmt_rl_and_the_collapse_setting_warns(tmp_path, caplog):
    args = MTGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2)
    assert (args.turn1_reward_weight, args.refine_bonus_alpha) == (0.0, 0.0)  # MLMT-RL: outcome credit on every turn
    episode = RefineEpisode.from_config(args)
    r1, rf = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    adv = episode.advantages({"turn1": r1, "final": rf}, 2, "group")
    assert torch.equal(adv["solve"], adv["refine"])  # both solver turns credited with the final outcome
    assert "collapse" not in caplog.text
    MTGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, turn1_reward_weight=1.0)
    assert "SCoRe reports collapse" in caplog.text
    with pytest.raises(ValueError, match="refine_bonus_alpha=-1"):
        MTGRPOConfig(output_dir=str(tmp_path), refine_bonus_alpha=-1.0)
