"""Tool episode with scripted generations (no model) on the real SmolLM2 tokenizer, and its MT-GRPO credit."""

import copy
import json
import time

import pytest
import torch
from datasets import Dataset

from mtgrpo.advantages import token_advantages
from mtgrpo.chat import ChatTurns
from mtgrpo.episodes import ToolEpisode, run_episodes


def lookup(query: str) -> str:
    """Looks a query up.

    Args:
        query: What to look up.
    """
    return f"Paris is the capital of France. (searched: {query})"


def boom(query: str) -> str:
    """Fails.

    Args:
        query: Ignored.
    """
    raise RuntimeError("index offline")


def hang(query: str) -> str:
    """Never answers in time.

    Args:
        query: Ignored.
    """
    time.sleep(5)
    return "too late"


TOOLS = {"lookup": lookup, "boom": boom, "hang": hang}


def call(name="lookup", **args):
    return f"<tool>{json.dumps({'name': name, 'args': args or {'query': 'France'}})}</tool>"


class ScriptedGenerate:
    """Returns scripted texts call by call (each followed by EOS unless it ends with "|noeos") and records calls."""

    def __init__(self, tokenizer, turns: list[list[str]]):
        self.tokenizer, self.turns, self.calls = tokenizer, turns, []

    def __call__(self, prompt_ids, num_generations):
        self.calls.append([list(p) for p in prompt_ids])
        texts = (
            self.turns[len(self.calls) - 1] if len(self.calls) <= len(self.turns) else [""] * len(prompt_ids)
        )
        out = []
        for text in texts[: len(prompt_ids)]:
            eos = not text.endswith("|noeos")
            text = text.removesuffix("|noeos")
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            out.append(ids + ([self.tokenizer.eos_token_id] if eos and text else []))
        return out, None


def _prompts(tokenizer, n):
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Question {i}: what is the capital of France?"}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        for i in range(n)
    ]


def _run(tokenizer, turns, episode=None, n=1, **kwargs):
    episode = episode or ToolEpisode(tools=TOOLS, max_tool_calls=2, tool_timeout=0.3)
    gen = ScriptedGenerate(tokenizer, turns)
    chat = ChatTurns(tokenizer)
    rollouts = run_episodes(episode, _prompts(tokenizer, n), gen, chat, 1, **kwargs)
    return rollouts, gen, episode


def _assert_masks(rollout):
    mask, pos = rollout.tool_mask(), 0
    for seg in rollout.segments:
        assert mask[pos : pos + len(seg.ids)] == [int(seg.role == "solver")] * len(seg.ids), seg.role
        pos += len(seg.ids)


def test_successful_call_result_is_masked_and_turn_is_cut(tokenizer):
    first = (
        "<reasoning>Look it up.</reasoning>\n" + call() + "\n<result>invented</result>\n<answer>Lyon</answer>"
    )
    (r,), gen, _ = _run(tokenizer, [[first], ["<reasoning>Found.</reasoning>\n<answer>Paris</answer>"]])
    assert len(gen.calls) == 2
    assert [(s.role, s.trained, s.credit) for s in r.turns()] == [
        ("solver", True, "pre_tool"),
        ("tool", False, None),
        ("solver", True, "post_tool"),
    ]
    tool_call, result, answer = r.turns()
    # Everything the model wrote after </tool> (an invented result and answer) is dropped; ids and text agree.
    assert tool_call.text.rstrip("\n").endswith("</tool>") and "invented" not in tool_call.text
    assert tokenizer.decode(tool_call.ids, skip_special_tokens=True) == tool_call.text
    assert tool_call.num_tokens == len(tool_call.ids)
    assert result.text == "Paris is the capital of France. (searched: France)"
    assert "<result>\nParis is the capital" in tokenizer.decode(gen.calls[1][0])
    _assert_masks(r)
    assert (
        r.state["tool_calls"] == 1
        and r.state["tool_successes"] == 1
        and not sum(r.state["tool_errors"].values())
    )
    # The stream is the chat template's own rendering: the cut call turn is closed by a (masked) EOS.
    rendered = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": "Question 0: what is the capital of France?"},
            {"role": "assistant", "content": tool_call.text},
            {"role": "user", "content": f"<result>\n{result.text}\n</result>"},
            {"role": "assistant", "content": answer.text},
        ],
        tokenize=True,
        return_dict=False,
    )
    assert r.context_ids() == rendered[: len(r.context_ids())]


def test_eos_sampled_right_after_the_call_is_kept_and_trained(tokenizer):
    (r,), _, _ = _run(tokenizer, [[call()], ["<answer>Paris</answer>"]])
    first = r.segments[0]
    assert first.ids[-1] == tokenizer.eos_token_id and first.trained
    assert r.segments[1].role == "tool"  # no extra closing EOS was needed


@pytest.mark.parametrize(
    "text, kind, message",
    [
        ("<tool>{name: lookup}</tool>", "malformed", "not valid JSON"),
        ('<tool>["lookup"]</tool>', "malformed", "JSON object"),
        (
            call("search_web"),
            "unknown_tool",
            "unknown tool 'search_web'. Available tools: boom, hang, lookup",
        ),
        (call("lookup", q="France"), "bad_arguments", "wrong arguments for lookup(query: str)"),
        (call("boom"), "exception", "boom failed: RuntimeError: index offline"),
        (call("hang"), "timeout", "hang did not finish within 0.3 s"),
    ],
)
def test_tool_failures_come_back_as_error_results_and_are_counted(tokenizer, text, kind, message):
    start = time.monotonic()
    (r,), gen, _ = _run(tokenizer, [[text], ["<answer>Paris</answer>"]])
    assert time.monotonic() - start < 3  # a hanging tool costs its timeout, not its run time
    assert len(gen.calls) == 2  # the episode goes on after a failure
    result = r.turns("tool")[0]
    assert result.text.startswith("Error:") and message in result.text
    assert r.state["tool_errors"][kind] == 1 and r.state["tool_calls"] == 1 and r.state["tool_successes"] == 0
    assert r.turns()[0].credit == "pre_tool"  # an error result is still a tool result
    _assert_masks(r)


@pytest.mark.parametrize(
    "text", ["<reasoning>Easy.</reasoning>\n<answer>Paris</answer>", "I am not sure.", ""]
)
def test_answer_or_neither_ends_the_episode_without_a_call(tokenizer, text):
    (r,), gen, _ = _run(tokenizer, [[text], ["never generated"]])
    assert len(gen.calls) == 1 and r.done
    assert [s.credit for s in r.turns("solver")] == ["no_tool"]
    assert r.state["tool_calls"] == 0
    assert r.completion_ids()  # TRL cannot take an empty completion: an empty turn gets a masked EOS
    _assert_masks(r)


def test_answer_before_a_tool_call_wins(tokenizer):
    (r,), gen, _ = _run(tokenizer, [["<answer>Paris</answer> " + call()]])
    assert len(gen.calls) == 1 and r.state["tool_calls"] == 0 and r.turns()[0].credit == "no_tool"


def test_max_tool_calls_caps_the_episode(tokenizer):
    turns = [[call(query="a")], [call(query="b")], [call(query="c") + " <answer>Paris</answer>"]]
    (r,), gen, _ = _run(tokenizer, turns)  # max_tool_calls=2
    assert len(gen.calls) == 3
    assert r.state["tool_calls"] == 2 and len(r.turns("tool")) == 2
    assert [s.credit for s in r.turns("solver")] == ["pre_tool", "post_tool", "post_tool"]
    # The call after the cap is not run, and the turn is kept whole: the answer written after it and the EOS stay,
    # so TRL sees a finished episode (not a truncated one) and the reward reads the answer.
    last = r.turns("solver")[-1]
    assert last.text.endswith("<answer>Paris</answer>")
    assert last.ids[-1] == tokenizer.eos_token_id and r.completion_ids()[-1] == tokenizer.eos_token_id
    assert last.num_tokens == len(last.ids)
    _assert_masks(r)


def test_episodes_of_different_lengths_keep_generation_calls_in_step(tokenizer):
    turns = [[call(), "<answer>Paris</answer>"], ["<answer>Paris</answer>"]]
    (long, short), gen, _ = _run(tokenizer, turns, n=2)
    assert [len(c) for c in gen.calls] == [2, 1]  # one batched call per turn over unfinished episodes
    assert len(long.turns("solver")) == 2 and len(short.turns("solver")) == 1
    # Another process still has 2 unfinished episodes: this one joins its collective calls, padded to the same count
    # with throwaway contexts, and drops their outputs.
    widths = iter([1, 2, 2, 0])
    (r,), gen, _ = _run(tokenizer, [["<answer>Paris</answer>"]], max_over_processes=lambda count: next(widths))
    assert [len(c) for c in gen.calls] == [1, 2, 2]
    assert len(r.turns("solver")) == 1 and r.turns("solver")[0].text == "<answer>Paris</answer>"


def _group_rewards():
    # One group of 4: tool-using episodes 0-2, episode 3 answered without a tool.
    return {
        "final/turn": torch.tensor([0.7, 0.2, 0.0, 0.0]),
        "final/outcome": torch.tensor([1.5, 0.0, 1.5, 0.2]),
    }


def _norm(x):
    return (x - x.mean()) / (x.std() + 1e-4)


@pytest.mark.parametrize("mode", ["mt_grpo", "grpo_or", "grpo_mr"])
def test_advantages_match_the_mt_grpo_formulas(mode):
    rewards = _group_rewards()
    r_t, r_o = rewards["final/turn"], rewards["final/outcome"]
    episode = ToolEpisode(tools=TOOLS, advantage_mode=mode, turn_advantage_coef=0.5)
    adv = episode.advantages(rewards, num_generations=4, scale="group")
    a_t, a_o, a_to = _norm(r_t), _norm(r_o), _norm(r_t + r_o)
    expected = {
        "mt_grpo": {"pre_tool": a_o + 0.5 * a_t, "post_tool": a_o, "no_tool": a_to},
        "grpo_or": dict.fromkeys(["pre_tool", "post_tool", "no_tool"], a_o),
        "grpo_mr": dict.fromkeys(["pre_tool", "post_tool", "no_tool"], a_to),
    }[mode]
    assert adv.keys() == expected.keys()
    for key in expected:
        assert torch.allclose(adv[key], expected[key], atol=1e-6), key


def test_advantages_are_placed_on_tokens_by_turn(tokenizer):
    turns = [[call(), call(), call(), "<answer>Paris</answer>"], ["<answer>Paris</answer>"] * 3]
    rollouts, _, episode = _run(tokenizer, turns, n=4)
    adv = episode.advantages(_group_rewards(), num_generations=4, scale="group")
    width = max(len(r.completion_ids()) for r in rollouts) + 2
    tokens = token_advantages(rollouts, adv, width)
    for b, rollout in enumerate(rollouts):
        pos = 0
        for seg in rollout.segments:
            want = adv[seg.credit][b].item() if seg.trained else 0.0
            assert torch.allclose(tokens[b, pos : pos + len(seg.ids)], torch.full((len(seg.ids),), want))
            pos += len(seg.ids)
    assert [s.credit for s in rollouts[0].turns("solver")] == ["pre_tool", "post_tool"]
    assert [s.credit for s in rollouts[3].turns("solver")] == ["no_tool"]


def test_reward_kwargs_and_metrics(tokenizer):
    turns = [[call(), call("boom"), "<answer>x</answer>"], ["<answer>Paris</answer>"] * 2]
    rollouts, _, episode = _run(tokenizer, turns, n=3)
    kwargs = episode.reward_kwargs(rollouts)
    assert kwargs["tool_calls"] == [1, 1, 0] and kwargs["tool_successes"] == [1, 0, 0]
    assert kwargs["first_result"][0].startswith("Paris is the capital") and kwargs["first_result"][1:] == [
        None,
        None,
    ]
    assert kwargs["assistant_turns"][2] == ["<answer>x</answer>"]
    metrics = episode.metrics(rollouts)
    assert metrics["tools/calls_per_episode"] == [1, 1, 0]
    assert metrics["tools/success_rate"] == [1.0, 0.0]  # per call
    assert metrics["tools/errors/exception"] == [0, 1, 0]
    rewards = {"final/turn": torch.tensor([0.7, 0.0, 0.0]), "final/outcome": torch.tensor([1.0, 0.0, 0.2])}
    shown = episode.turn_rewards(rewards)
    assert shown["pre_tool"].tolist() == pytest.approx([0.7, 0.0, 0.0])
    assert shown["no_tool"].tolist() == pytest.approx([1.7, 0.0, 0.2])


# ---- native chat-template tool calls (TRL's Qwen2.5 template on the SmolLM2 vocabulary, same ChatML tokens) ----


@pytest.fixture
def qwen_tokenizer(tokenizer):
    from trl.chat_template_utils import qwen2_5_chat_template

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = qwen2_5_chat_template
    return tok


def test_native_protocol_parses_template_tool_calls(qwen_tokenizer):
    tok = qwen_tokenizer
    episode = ToolEpisode(tools=TOOLS, protocol="native", tool_timeout=0.3)
    native = '<tool_call>\n{"name": "lookup", "arguments": {"query": "France"}}\n</tool_call>'
    gen = ScriptedGenerate(tok, [[native], ["<answer>Paris</answer>"]])
    chat = ChatTurns(tok)
    episode.bind(chat)
    assert episode.native and episode.chat_tools == list(TOOLS.values())
    (r,) = run_episodes(episode, _prompts(tok, 1), gen, chat, 1)
    assert [(s.role, s.credit) for s in r.turns()] == [
        ("solver", "pre_tool"),
        ("tool", None),
        ("solver", "post_tool"),
    ]
    assert r.state["tool_successes"] == 1
    # The result is a template `tool` message, rendered exactly as the template renders the whole conversation.
    rendered = tok.apply_chat_template(
        [
            {"role": "user", "content": "Question 0: what is the capital of France?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "lookup", "arguments": {"query": "France"}}}
                ],
            },
            {"role": "tool", "name": "lookup", "content": r.turns("tool")[0].text},
        ],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    assert r.context_ids()[: len(rendered)] == rendered
    _assert_masks(r)


def test_protocol_detection(tokenizer, qwen_tokenizer):
    auto = ToolEpisode(tools=TOOLS, protocol="auto")
    auto.bind(ChatTurns(tokenizer))
    assert not auto.native and auto.chat_tools == []  # SmolLM2's template has no tool calls: text protocol
    auto = ToolEpisode(tools=TOOLS, protocol="auto")
    auto.bind(ChatTurns(qwen_tokenizer))
    assert auto.native
    with pytest.raises(ValueError, match="tool_protocol: text"):
        ToolEpisode(tools=TOOLS, protocol="native").bind(ChatTurns(tokenizer))


# ---- through the trainer: reward kwargs, metrics and (B, T) advantages, with scripted generations ----


def test_trainer_passes_tool_facts_to_rewards_and_logs_tool_metrics(tiny_model_dir, tmp_path, tokenizer):
    from mtgrpo import MTGRPOConfig, MultiTurnGRPOTrainer
    from mtgrpo.registry import get_reward_funcs

    reward_funcs = get_reward_funcs(
        ["triviaqa_tool_success", "triviaqa_result_has_answer", "triviaqa_exact_match"]
    )

    args = MTGRPOConfig(
        output_dir=str(tmp_path),
        episode="tool",
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        report_to=[],
        use_cpu=True,
        gradient_checkpointing=False,
        correctness_reward="triviaqa_exact_match",
    )
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "Capital of France?"}],
                "answer": "Paris",
                "aliases": ["paris"],
            }
        ]
        * 4
    )
    episode = ToolEpisode(tools=TOOLS, tool_timeout=1.0)
    trainer = MultiTurnGRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        episode=episode,
    )
    script = ScriptedGenerate(
        tokenizer,
        [[call(), call("boom"), "<answer>Paris</answer>", "no idea"]]
        + [["<answer>Paris</answer>", "<answer>Rome</answer>"]],
    )
    trainer._generate_single_turn = lambda ids, images, fields, n: script(ids, n)
    trainer.model.train()
    out = trainer._generate_and_score_completions([dataset[i] for i in range(4)])
    assert out["advantages"].shape == out["completion_ids"].shape
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert metrics["tools/calls_per_episode"] == pytest.approx(0.5)
    assert metrics["tools/success_rate"] == pytest.approx(0.5)
    assert metrics["rewards/triviaqa_tool_success/mean"] == pytest.approx(0.05)  # 0.2 for episode 0 only
    assert metrics["rewards/triviaqa_result_has_answer/mean"] == pytest.approx(
        0.125
    )  # "Paris" is in its result
    assert metrics["rewards/triviaqa_exact_match/mean"] == pytest.approx(0.5)
    # Logged by the rewards through TRL's log_metric (they need the gold answers).
    assert metrics["outcome/exact_match"] == pytest.approx(0.5)
    assert metrics["tools/answer_in_result"] == pytest.approx(1.0)


def test_tool_config_errors_name_the_fix(tmp_path):
    from mtgrpo import MTGRPOConfig

    for field, value, message in [
        ("advantage_mode", "ppo", r"Unknown advantage_mode 'ppo'.*mt_grpo"),
        ("tool_protocol", "xml", r"Unknown tool_protocol 'xml'.*native"),
        ("search_backend", "google", r"Unknown search_backend 'google'.*bm25"),
        ("max_tool_calls", 0, r"max_tool_calls=0 must be >= 1"),
        ("tool_timeout", 0.0, r"tool_timeout=0.0 must be a positive"),
    ]:
        with pytest.raises(ValueError, match=message):
            MTGRPOConfig(output_dir=str(tmp_path), episode="tool", **{field: value})
