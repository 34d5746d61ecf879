"""episode: plan — a plan (from a frozen feedback model, or the policy itself) precedes the solver's answer."""

import pytest
import torch
from scripted import ScriptedGenerate

from mtgrpo.chat import ChatTurns
from mtgrpo.config import MTGRPOConfig
from mtgrpo.episodes import PlanEpisode, build_episode, run_episodes


class ScriptedPlanner:
    def __init__(self):
        self.calls = []

    def generate(self, conversations):
        self.calls.append(conversations)
        return [f"Plan {i}: add the units." for i in range(len(conversations))]


def _rows_and_prompts(tokenizer, problems, num_generations):
    rows = [
        {"prompt": [{"role": "user", "content": f"What is {i} + 1?"}], "answer": str(i + 1)}
        for i in range(problems)
        for _ in range(num_generations)
    ]  # repeated as TRL's sampler does
    ids = [
        tokenizer.apply_chat_template(
            r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for r in rows
    ]
    return rows, ids


def test_model_plan_once_per_prompt_shared_by_the_group(tokenizer):
    planner = ScriptedPlanner()
    episode = PlanEpisode(
        feedback_source="model",
        plan_prompt="Plan it.",
        solve_with_plan_prompt="Now solve.",
        feedback_model=planner,
    )
    rows, prompts = _rows_and_prompts(tokenizer, problems=2, num_generations=3)
    gen = ScriptedGenerate(tokenizer, [["The answer is 1."] * 6])
    chat = ChatTurns(tokenizer)
    rollouts = run_episodes(episode, prompts, gen, chat, num_generations=3, rows=rows)
    assert len(planner.calls) == 1 and len(planner.calls[0]) == 2  # one plan per distinct prompt, one call
    assert planner.calls[0][0] == [{"role": "user", "content": "What is 0 + 1?\n\nPlan it."}]
    assert [(n, g) for n, g, _ in gen.calls] == [(6, 3)]  # the solver's one turn keeps TRL's layout
    contexts = gen.calls[0][2]
    assert (
        contexts[0] == contexts[1] == contexts[2] != contexts[3]
    )  # the group shares its plan and its context
    r = rollouts[0]
    assert [(s.role, s.policy, s.trained) for s in r.turns()] == [
        ("plan", "feedback", False),
        ("solver", "solver", True),
    ]
    plan = r.turns("plan")[0]
    assert plan.text == "Plan 0: add the units."
    assert (
        plan.ids[0] == chat.end_of_turn_id
    )  # the prompt's assistant turn is closed empty, then the plan follows
    assert "Plan 0: add the units.\n\nNow solve." in tokenizer.decode(plan.ids)
    assert r.tool_mask() == [0] * len(plan.ids) + [1] * len(r.turns("solver")[0].ids)
    adv = episode.advantages({"final": torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])}, 3, "group")
    assert set(adv) == {"solve", "plan"} and adv["solve"][0] > 0 and adv["solve"][3] == 0
    assert episode.metrics(rollouts)["plan/mean_tokens"][0] == chat.text_length("Plan 0: add the units.")


@pytest.mark.parametrize("train", [False, True])
def test_self_plan_is_written_by_the_policy(tokenizer, train):
    episode = PlanEpisode(
        feedback_source="self",
        train_feedback=train,
        plan_prompt="Plan it.",
        solve_with_plan_prompt="Now solve.",
    )
    rows, prompts = _rows_and_prompts(tokenizer, problems=1, num_generations=2)
    gen = ScriptedGenerate(tokenizer, [["First add."] * 2, ["The answer is 1."] * 2])
    rollouts = run_episodes(episode, prompts, gen, ChatTurns(tokenizer), num_generations=2, rows=rows)
    assert [(n, g) for n, g, _ in gen.calls] == [(2, 2), (2, 1)]
    r = rollouts[0]
    assert [(s.role, s.policy, s.trained) for s in r.turns()] == [
        ("plan", "solver", train),
        ("solver", "solver", True),
    ]
    assert episode.scored_turns(r)["final"].text == "The answer is 1."
    assert "Plan it." in tokenizer.decode(r.segments[0].ids)


def test_plan_config_builds_the_episode():
    args = MTGRPOConfig(
        output_dir="/tmp/unused",
        use_cpu=True,
        report_to=[],
        episode="plan",
        feedback_source="model",
        feedback_model_name_or_path="smollm2-135m-instruct",
    )
    episode = build_episode(args)
    assert isinstance(episode, PlanEpisode) and episode.num_generation_turns == 1
    args = MTGRPOConfig(output_dir="/tmp/unused", use_cpu=True, report_to=[], episode="plan")
    assert build_episode(args).num_generation_turns == 2  # default feedback_source self: the policy plans
