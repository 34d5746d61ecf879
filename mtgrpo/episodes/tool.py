"""Reason -> call a tool -> read the result -> answer (MT-GRPO's search agent), with turn-level credit.

    mtgrpo train --config recipes/smollm2-135m-instruct/triviaqa-search.yaml

Protocols (`tool_protocol`):
- text (MT-GRPO, any chat template): the policy writes `<tool>{"name": "wiki_search", "args": {"query": ...}}</tool>`.
  The turn is cut right after the first `</tool>` (TRL's transformers backend cannot stop on a string; with vLLM,
  `generation_kwargs: {stop: ["</tool>"], include_stop_str_in_output: true}` stops there and saves the tokens), the
  tool runs, and its output comes back as a masked user message `<result>\\n...\\n</result>`. The final answer
  goes in `<answer>...</answer>`.
- native: the chat template's own tool calls (Qwen's `<tool_call>`, Llama 3.1's JSON, ...), parsed with TRL's
  `parse_response`; the tools' schemas are rendered into the prompt and results come back as `tool` messages.
  Only templates TRL can parse (trl.chat_template_utils.add_response_schema) qualify. A malformed native call
  cannot be told from prose (TRL's parser falls back to text), so it ends the episode like a turn without a call.
- auto: native when the chat template supports tool calls, else text.

An episode ends at an answer, at a turn with neither a tool call nor an answer, or with the turn that follows the
`max_tool_calls`-th tool-calling turn (a call there is not run: MT-GRPO's step cap; that turn is kept whole, so an
answer written after the call still counts). Tool failures come back to the
policy as "Error: ..." results (see mtgrpo.tasks.tools) and are counted in `rollout.state`.

Credit keys: the first tool-calling turn is "pre_tool", every turn after a tool result "post_tool", and the single
turn of an episode without any tool result "no_tool". With R_T the turn-level rewards (reward_level "turn": tool
success, answer in the first result) and R_O the outcome rewards, each group-normalised on its own
(A = (r - mean) / (std + 1e-4)):
    mt_grpo:  pre_tool = A_O + turn_advantage_coef * A_T,  post_tool = A_O,  no_tool = A_{T+O}
    grpo_or:  A_O on every token;   grpo_mr:  A_{T+O} on every token.
"""

from __future__ import annotations

import inspect
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..advantages import group_normalize
from ..tasks.tools import ERROR_KINDS, ToolResult, call_tool, parse_json_call
from .base import Rollout, Segment, TurnSpec

CREDITS = ("pre_tool", "post_tool", "no_tool")
RESULT_TEMPLATE = "<result>\n{}\n</result>"
_TOOL_CALL = re.compile(r"<tool>(.*?)</tool>", re.DOTALL)
_ANSWER = re.compile(r"<answer>.*?</answer>", re.DOTALL)


@dataclass
class _Pending:
    """A tool result waiting to be shown at the start of the next turn."""

    message: str  # what the injected message says (text protocol: "<result>...</result>")
    text: str  # what transcripts show: the tools' outputs
    ids: list[int] | None  # native protocol: the template's tool-message ids; None = a user message


@dataclass
class ToolEpisode:
    tools: dict[str, Callable]
    max_tool_calls: int = 1
    tool_timeout: float = 10.0
    protocol: str = "text"
    advantage_mode: str = "mt_grpo"
    turn_advantage_coef: float = 1.0
    native: bool = field(default=False, init=False)  # resolved by bind(): the protocol actually in use
    # The per-episode columns reward_kwargs hands the reward functions (checked against their parameters at start).
    reward_columns: ClassVar[tuple[str, ...]] = (
        "tool_calls", "tool_successes", "first_result", "assistant_turns", "environment_reward"
    )

    call_prefix: str = ""  # tool_call_prefix: written for the policy at the start of its first turn
    call_prefix_rate: float = 1.0  # share of episodes that get it, spread evenly over the batch
    call_prefix_trained: bool = False  # its tokens trained with the turn's credit (guided rollouts)
    environment: type | None = None  # environment_factory: a TRL environment class, one instance per episode

    @classmethod
    def from_config(cls, args) -> ToolEpisode:
        from ..tasks.search import build_wiki_search
        from ..tasks.toolbox import resolve_tools

        def wiki_search():
            return build_wiki_search(args.search_backend, args.search_corpus, args.search_top_k, args.search_max_chars)

        environment = None
        if args.environment_factory:
            from ..tasks.environments import load_environment

            environment, tools = load_environment(args.environment_factory)
        else:
            tools = resolve_tools(args.tools if args.tools is not None else ["wiki_search"], wiki_search)
        return cls(
            environment=environment,
            tools=tools,
            max_tool_calls=args.max_tool_calls,
            tool_timeout=args.tool_timeout,
            protocol=args.tool_protocol,
            advantage_mode=args.advantage_mode,
            turn_advantage_coef=args.turn_advantage_coef,
            call_prefix=args.tool_call_prefix,
            call_prefix_rate=args.tool_call_prefix_rate,
            call_prefix_trained=args.tool_call_prefix_trained,
        )

    @property
    def shared_first_context(self) -> bool:
        """Copies of a prompt start from the same context unless only some of them get the prefix, or each has an
        environment whose reset() may say something different."""
        return self.environment is None and not (self.call_prefix and 0.0 < self.call_prefix_rate < 1.0)

    def prepare_turn(self, rollouts: list[Rollout], turn_index: int) -> None:
        if turn_index == 0 and self.environment is not None:
            from ..tasks.environments import environment_tools, reset_environment

            for rollout in rollouts:
                env = self.environment()
                state = _state(rollout)
                state.update(env=env, tools=environment_tools(env), opening=reset_environment(env, state.get("row")))
        if turn_index == 0:
            # An even spread: episode i gets the prefix when floor((i + 1) * rate) > floor(i * rate), so each group of
            # consecutive copies holds its share (rate 0.5: every other episode).
            rate = self.call_prefix_rate if self.call_prefix else 0.0
            for i, rollout in enumerate(rollouts):
                prefixed = int((i + 1) * rate) > int(i * rate)
                # "prefix": what the current turn starts with (read by after_turn); "prefixed": kept for the metrics
                _state(rollout).update(prefix=self.call_prefix if prefixed else "", prefixed=prefixed)

    def __post_init__(self):
        if self.protocol not in ("text", "native", "auto"):
            raise ValueError(f"Unknown tool_protocol {self.protocol!r}; use 'text', 'native' or 'auto'.")
        if self.advantage_mode not in ("mt_grpo", "grpo_or", "grpo_mr"):
            raise ValueError(
                f"Unknown advantage_mode {self.advantage_mode!r}; use 'mt_grpo', 'grpo_or' or 'grpo_mr'."
            )
        self._chat = None

    # ---- setup -------------------------------------------------------------------------------------------------

    def bind(self, chat) -> None:
        """Take the tokenizer (to cut and parse turns) and settle the protocol; called before the first turn."""
        if chat is self._chat:
            return
        self._chat = chat
        if self.protocol == "native":
            _enable_native_parsing(chat, self.tools)
            self.native = True
        elif self.protocol == "auto":
            self.native = _native_parsing_available(chat, self.tools)

    @property
    def chat_tools(self) -> list[Callable]:
        """Tools whose schemas the chat template renders into the prompt (native protocol only)."""
        return list(self.tools.values()) if self.native else []

    # ---- turns -------------------------------------------------------------------------------------------------

    def next_turn(self, rollout: Rollout, turn_index: int) -> TurnSpec | None:
        if turn_index == 0:
            prefix = _state(rollout).setdefault("prefix", "")  # set by prepare_turn
            # becomes pre_tool if this turn calls a tool
            opening = _state(rollout).get("opening")  # an environment's reset() text, shown before the first turn
            return TurnSpec(
                role="solver", credit="no_tool", response_prefix=prefix or None, prefix_trained=self.call_prefix_trained,
                message=opening or None,
            )
        pending = _state(rollout).pop("pending")  # after_turn ends the episode when there is none
        _state(rollout)["prefix"] = ""
        return TurnSpec(
            role="solver",
            credit="post_tool",
            message=pending.message,
            message_role="tool",
            message_text=pending.text,
            message_ids=pending.ids,
        )

    def after_turn(self, rollout: Rollout, segment: Segment) -> None:
        state = _state(rollout)
        # At the cap a call will not run, so the turn is kept whole: cutting it at `</tool>` would delete an answer
        # written after the call and the end-of-turn token, and make a finished episode look truncated to TRL.
        at_cap = state["tool_turns"] >= self.max_tool_calls
        prefix = state.get("prefix", "")
        calls = (
            None if at_cap
            else self._native_calls(rollout, segment) if self.native
            else self._text_calls(segment, prefix)
        )
        if not calls:
            rollout.done = True
            if not rollout.completion_ids():
                # TRL cannot take an empty completion; an end-of-turn the policy did not sample stays out of the loss.
                rollout.segments.append(Segment(role="user", ids=[self._chat.end_of_turn_id], trained=False))
            return
        results = [
            c if isinstance(c, ToolResult) else call_tool(state.get("tools", self.tools), *c, self.tool_timeout)
            for c in calls
        ]
        state["tool_turns"] += 1
        for result in results:
            state["tool_calls"] += 1
            if result.ok:
                state["tool_successes"] += 1
                state["results"].append(result.content)
            else:
                state["tool_errors"][result.error] += 1
        if segment.credit == "no_tool":
            segment.credit = "pre_tool"
            before = rollout.segments[-2] if len(rollout.segments) > 1 else None
            if before is not None and before.role == "prefix" and before.trained:
                before.credit = "pre_tool"  # a trained prefix belongs to its turn
        state["pending"] = self._pending(results)

    def _text_calls(self, segment: Segment, prefix: str = "") -> list | None:
        """The turn's `<tool>` call as [(name, args) or an error result], or None; cuts the turn after `</tool>`.
        `prefix` is what the episode wrote for the policy before its text (tool_call_prefix): the call may start there."""
        text = prefix + segment.text
        call = _TOOL_CALL.search(text)
        if call is None:
            return None
        answer = _ANSWER.search(text)
        if answer is not None and answer.start() < call.start():
            return None  # answered first: whatever follows the answer is not acted on
        self._cut_after_call(segment, prefix)
        parsed = parse_json_call(call.group(1).strip())
        return [parsed]

    def _cut_after_call(self, segment: Segment, prefix: str = "") -> None:
        """Keep the shortest token prefix whose text holds the first complete `<tool>...</tool>` (and an EOS the
        policy sampled right after it): what the model wrote after the call would be an invented result."""
        tokenizer, ids = self._chat.tokenizer, segment.ids

        def decode(k: int) -> str:
            return tokenizer.decode(ids[:k], skip_special_tokens=True)

        low, high = 1, len(ids)
        while low < high:  # binary search: a prefix that holds the call stays holding it as it grows
            mid = (low + high) // 2
            if _TOOL_CALL.search(prefix + decode(mid)):
                high = mid
            else:
                low = mid + 1
        keep = low + int(low < len(ids) and ids[low] == self._chat.end_of_turn_id)
        segment.ids = ids[:keep]
        segment.text = decode(keep)
        segment.num_tokens = keep
        if segment.logprobs is not None:
            segment.logprobs = segment.logprobs[:keep]

    def _native_calls(self, rollout: Rollout, segment: Segment) -> list | None:
        from trl.chat_template_utils import parse_response

        prefix = rollout.prompt_ids + [tok for seg in rollout.segments[:-1] for tok in seg.ids]
        # trl 1.16 types the call's arguments with the tools' schemas ("7" -> 7 for an integer); 1.15 cannot.
        typed = {"tools": self.chat_tools} if "tools" in inspect.signature(parse_response).parameters else {}
        parsed = parse_response(self._chat.tokenizer, segment.ids, prefix=prefix, **typed)
        if not parsed.get("tool_calls") or _ANSWER.search(parsed["content"]):
            return None
        return [_native_call(call) for call in parsed["tool_calls"]]

    def _pending(self, results: list[ToolResult]) -> _Pending:
        text = "\n\n".join(r.content for r in results)
        if not self.native:
            return _Pending(message=RESULT_TEMPLATE.format(text), text=text, ids=None)
        messages = [{"role": "tool", "name": r.name or "unknown", "content": r.content} for r in results]
        return _Pending(message=text, text=text, ids=self._chat.tool_result_ids(messages))

    # ---- scoring -----------------------------------------------------------------------------------------------

    def scored_turns(self, rollout: Rollout) -> dict[str, Segment]:
        """The final turn: reward functions read its answer, and the trajectory through reward_kwargs()."""
        return {"final": rollout.turns("solver")[-1]}

    def reward_kwargs(self, rollouts: list[Rollout]) -> dict[str, list]:
        """Per-episode columns for the reward functions (rewards/triviaqa.py reads them)."""
        states = [_state(r) for r in rollouts]
        return {
            "tool_calls": [s["tool_calls"] for s in states],
            "tool_successes": [s["tool_successes"] for s in states],
            # The first successful result; error texts could echo the query, so they never count as a result.
            "first_result": [s["results"][0] if s["results"] else None for s in states],
            "assistant_turns": [[seg.text for seg in r.turns("solver")] for r in rollouts],
            # environment_factory: get_reward() of each episode's environment (None without one)
            "environment_reward": [_environment_reward(s) for s in states],
        }

    def turn_rewards(self, rewards: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reward behind each credit key's advantage (R_T for pre_tool: its own term under mt_grpo)."""
        r_t, r_o = rewards["final/turn"], rewards["final/outcome"]
        if self.advantage_mode == "mt_grpo":
            return {"pre_tool": r_t, "post_tool": r_o, "no_tool": r_t + r_o}
        return dict.fromkeys(CREDITS, r_o if self.advantage_mode == "grpo_or" else r_t + r_o)

    def advantages(
        self, rewards: dict[str, torch.Tensor], num_generations: int, scale: str
    ) -> dict[str, torch.Tensor]:
        r_t, r_o = rewards["final/turn"], rewards["final/outcome"]
        a_o = group_normalize(r_o, num_generations, scale)
        a_to = group_normalize(r_t + r_o, num_generations, scale)
        if self.advantage_mode == "grpo_or":
            return dict.fromkeys(CREDITS, a_o)
        if self.advantage_mode == "grpo_mr":
            return dict.fromkeys(CREDITS, a_to)
        a_t = group_normalize(r_t, num_generations, scale)
        return {"pre_tool": a_o + self.turn_advantage_coef * a_t, "post_tool": a_o, "no_tool": a_to}

    def metrics(self, rollouts: list[Rollout]) -> dict[str, list[float]]:
        """Per-episode tool use; success_rate is per call. Answer-based metrics (outcome/exact_match, outcome/f1,
        tools/answer_in_result) need the gold answers, so the TriviaQA rewards log them."""
        states = [_state(r) for r in rollouts]
        per_call = [float(i < s["tool_successes"]) for s in states for i in range(s["tool_calls"])]
        out = {"tools/calls_per_episode": [s["tool_calls"] for s in states], "tools/success_rate": per_call}
        if self.call_prefix:
            # Did the policy open a call by itself? (episodes that did not get tool_call_prefix)
            out["tools/calls_without_prefix"] = [float(s["tool_calls"] > 0) for s in states if not s.get("prefixed")]
        out.update({f"tools/errors/{kind}": [s["tool_errors"][kind] for s in states] for kind in ERROR_KINDS})
        return out


def _state(rollout: Rollout) -> dict:
    """Counters of one episode (created on first use)."""
    if "tool_calls" not in rollout.state:
        rollout.state.update(tool_turns=0, tool_calls=0, tool_successes=0, tool_errors=Counter(), results=[])
    return rollout.state


def _environment_reward(state: dict) -> float | None:
    if "env" not in state:
        return None
    from ..tasks.environments import environment_reward

    if "environment_reward" not in state:  # asked once per episode, however many reward functions read it
        try:
            state["environment_reward"] = environment_reward(state["env"])
        except Exception:  # an environment failing to score one episode leaves it unscored, as TRL does with None
            state["environment_reward"] = None
    return state["environment_reward"]


def _native_call(call: dict) -> tuple[str, dict] | ToolResult:
    function = call.get("function") or {}
    name, args = function.get("name"), function.get("arguments") or {}
    if isinstance(args, str):  # some templates leave the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError as err:
            return ToolResult(
                name, f"Error: the tool call's arguments are not valid JSON ({err.msg}).", "malformed"
            )
    if not isinstance(name, str):
        return ToolResult(None, "Error: the tool call has no function name.", "malformed")
    if not isinstance(args, dict):
        return ToolResult(name, "Error: the tool call's arguments must be a JSON object.", "bad_arguments")
    return name, args


def _native_parsing_available(chat, tools: dict[str, Callable]) -> bool:
    """Enable native parsing if this template and these tools allow it (tool_protocol: auto)."""
    try:
        _enable_native_parsing(chat, tools)
    except ValueError:
        return False
    return True


def _enable_native_parsing(chat, tools: dict[str, Callable]) -> None:
    """Make TRL's parse_response read this template's tool calls, or say why it cannot."""
    from transformers.utils import get_json_schema
    from transformers.utils.chat_template_utils import DocstringParsingException
    from trl.chat_template_utils import add_response_schema, supports_tool_calling

    for name, tool in tools.items():
        try:
            get_json_schema(tool)  # what the chat template renders into the prompt
        except DocstringParsingException as err:
            raise ValueError(
                f"tool_protocol: native shows each tool's JSON schema, built from its docstring: {err} Give {name} a "
                "Google-style docstring with an Args: section, or use tool_protocol: text."
            ) from err
    tokenizer = chat.tokenizer
    if not supports_tool_calling(tokenizer):
        raise ValueError(
            "tool_protocol: native needs a chat template that renders tool calls and tool messages, and this "
            "tokenizer's does not. Use tool_protocol: text (MT-GRPO's <tool> tags, any template) or auto."
        )
    if (
        getattr(tokenizer, "response_template", None) is None
        and getattr(tokenizer, "response_schema", None) is None
    ):
        try:
            add_response_schema(tokenizer)
        except ValueError as err:
            raise ValueError(
                "tool_protocol: native: TRL has no tool-call parser for this chat template (known: Qwen2.5/Qwen3, "
                "Llama 3.1/3.2, GLM-4, GPT-OSS, ...). Use tool_protocol: text, or set tokenizer.response_template."
            ) from err
