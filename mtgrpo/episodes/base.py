"""The episode loop shared by every protocol: one batched generation call per turn over unfinished rollouts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..chat import ChatTurns

# generate(prompt_ids, num_generations) -> (completion_ids, per-token logprobs or None). In the trainer this is
# GRPOTrainer._generate_single_turn, so every backend (vLLM server/colocate, transformers) is used as TRL uses it.
GenerateFn = Callable[[list[list[int]], int], tuple[list[list[int]], list[list[float]] | None]]


@dataclass
class Segment:
    """A contiguous piece of an episode's completion stream.

    role: "solver" / "feedback" / "tool" for turn content, "user" for injected instructions and role headers,
        "prefix" for text written at the start of a policy turn for the policy to continue.
    ids: token ids of the piece, as they sit in the stream.
    trained: whether these tokens enter the loss (TRL's tool_mask = 1).
    credit: which advantage the trained tokens receive (a key of Episode.advantages()); None when untrained.
    text: the piece's text (decoded for generated turns, the source text for injected ones).
    num_tokens: tokens of the turn's own text, without role headers or a closing EOS we added.
    logprobs: sampling log-probabilities of generated ids (vLLM), else None.
    policy: which policy wrote the text: "solver" (the policy being trained, whatever the role), "feedback" (a
        separate feedback/plan model), None for fixed text (templates, instructions, tool results).
    """

    role: str
    ids: list[int]
    trained: bool
    credit: str | None = None
    text: str = ""
    num_tokens: int = 0
    logprobs: list[float] | None = None
    policy: str | None = None


@dataclass
class TurnSpec:
    """What the next turn is: an optional injected message (masked), then a generation by the policy."""

    role: str
    credit: str | None
    trained: bool = True
    message: str | None = None
    message_role: str = "user"
    message_text: str | None = None  # what transcripts show for the injected message (defaults to `message`)
    message_ids: list[int] | None = None  # ids of an injected non-user message (a native tool result)
    message_policy: str | None = None  # who wrote the injected message's text ("feedback": a feedback model)
    # Text the episode writes at the start of the policy's turn, which the policy continues (masked, never trained),
    # e.g. the opening of a tool call for a model that does not write one by itself.
    response_prefix: str | None = None
    prefix_trained: bool = False  # train the prefix's tokens with the turn's credit (guided rollouts)


@dataclass
class Rollout:
    """One episode: a prompt and the segments appended to it, turn by turn."""

    prompt_ids: list[int]
    segments: list[Segment] = field(default_factory=list)
    done: bool = False
    state: dict = field(default_factory=dict)  # protocol-specific state (e.g. tool calls made)

    def context_ids(self) -> list[int]:
        return self.prompt_ids + self.completion_ids()

    def completion_ids(self) -> list[int]:
        return [tok for seg in self.segments for tok in seg.ids]

    def tool_mask(self) -> list[int]:
        return [int(seg.trained) for seg in self.segments for _ in seg.ids]

    def logprobs(self) -> list[float | None]:
        # Tokens the policy did not sample carry None (TRL maps it to NaN and leaves it out of the IS correction).
        out: list[float | None] = []
        for seg in self.segments:
            out.extend(seg.logprobs if seg.logprobs is not None else [None] * len(seg.ids))
        return out

    def turns(self, role: str | None = None) -> list[Segment]:
        """Turn segments (not injected instructions), optionally of one role."""
        return [s for s in self.segments if s.role != "user" and (role is None or s.role == role)]


class Episode(Protocol):
    """What a protocol provides (see refine.py for a complete one)."""

    def next_turn(self, rollout: Rollout, turn_index: int) -> TurnSpec | None:
        """The next turn of this rollout, or None when it is finished."""

    def after_turn(self, rollout: Rollout, segment: Segment) -> None:
        """React to a generated turn (e.g. run a tool and append its masked result, or mark the rollout done)."""

    def scored_turns(self, rollout: Rollout) -> dict[str, Segment]:
        """Turns the reward functions score, by key; must include "final" (what TRL's reward logging sees)."""

    def advantages(self, rewards: dict[str, torch.Tensor], num_generations: int, scale: str) -> dict[str, torch.Tensor]:
        """Per-credit-key advantages over the gathered batch. `rewards[key]` is the weighted reward sum of a
        scored turn; `rewards[key + "/turn"]` and `rewards[key + "/outcome"]` sum only that level's functions."""

    def turn_rewards(self, rewards: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The raw reward shown in transcripts for each credit key."""

    def metrics(self, rollouts: list[Rollout]) -> dict[str, list[float]]:
        """Values whose mean over every process is logged under each name."""

    # Optional hooks (see tool.py, refine.py): `bind(chat: ChatTurns)` gives an episode the tokenizer before its first
    # turn; `prepare_turn(rollouts, turn_index)` runs batched work (e.g. executing turn-1 programs) once before each
    # turn's `next_turn` calls; `reward_kwargs(rollouts) -> dict[str, list]` adds per-episode columns to the reward
    # functions' kwargs; `shared_first_context = False` when the copies of a prompt differ before the first generated
    # turn. Each rollout's dataset row (when the caller has it) is `rollout.state["row"]`.


def run_episodes(
    episode: Episode,
    prompt_ids: Sequence[list[int]],
    generate: GenerateFn,
    chat: ChatTurns,
    num_generations: int,
    max_over_processes: Callable[[int], int] = lambda count: count,
    rows: Sequence[dict] | None = None,
) -> list[Rollout]:
    """Run all episodes turn by turn; each turn is ONE batched `generate` call over the unfinished rollouts.

    `prompt_ids` arrive repeated `num_generations` times per prompt (TRL's sampler does this), so the first turn
    passes `num_generations` to the backend (vLLM server de-duplicates and samples n per prompt); later turns
    have distinct contexts and pass 1, and so does the first when the episode's `shared_first_context` is false
    (each copy got its own injected text before it, e.g. a sampled plan).

    Every process passes the SAME number of contexts in every call. TRL's vLLM paths (server mode, colocate with
    tensor parallelism) gather all processes' prompts and hand process k the slice [k*n, (k+1)*n): with uneven
    counts, completions would land on another process's contexts. `max_over_processes(count)` returns the largest
    count over all processes (a collective; identity on one process); a process with fewer unfinished episodes
    pads its call with throwaway contexts whose outputs are dropped, and the loop ends on every process together
    when no process has an unfinished episode, so the number of calls is identical on every rank.

    `rows`: the dataset row of each prompt (e.g. a code task's visible tests), kept as `rollout.state["row"]`.
    """
    rollouts = [Rollout(prompt_ids=list(p)) for p in prompt_ids]
    if rows is not None:
        for rollout, row in zip(rollouts, rows, strict=True):
            rollout.state["row"] = row
    if hasattr(episode, "bind"):
        episode.bind(chat)  # e.g. the tool episode decodes turns to cut them after a tool call
    turn_index = 0
    while True:
        if hasattr(episode, "prepare_turn"):
            episode.prepare_turn([r for r in rollouts if not r.done], turn_index)
        specs = {i: episode.next_turn(r, turn_index) for i, r in enumerate(rollouts) if not r.done}
        active = [i for i, spec in specs.items() if spec is not None]
        for i, spec in specs.items():
            if spec is None:
                rollouts[i].done = True
        width = max_over_processes(len(active))
        if width == 0:
            break
        for i in active:
            _open_turn(rollouts[i], specs[i], chat, first=turn_index == 0)
        if turn_index == 0:
            # The first call keeps TRL's prompt layout (groups of num_generations identical prompts, the same count on
            # every process), so a rollout that asked for no turn still sends its prompt; its output is dropped below.
            chosen = set(active)
            slots = [i if i in chosen else None for i in range(len(rollouts))]
            contexts = [r.context_ids() for r in rollouts]
        else:
            # Throwaway contexts pad the call to `width`: the shortest prompt at hand, so padding generates little.
            filler = min((r.prompt_ids for r in rollouts), key=len)
            slots = active + [None] * (width - len(active))
            contexts = [rollouts[i].context_ids() for i in active] + [filler] * (width - len(active))
        # A group's copies share the first context unless the episode gave each its own (per-episode plans), and
        # TRL's vLLM server path samples n per DISTINCT prompt only for shared ones.
        shared = turn_index == 0 and getattr(episode, "shared_first_context", True)
        completion_ids, logprobs = generate(contexts, num_generations if shared else 1)
        if len(completion_ids) != len(contexts):
            raise RuntimeError(
                f"The generation backend returned {len(completion_ids)} completions for {len(contexts)} contexts."
            )
        for k, i in enumerate(slots):
            if i is None:
                continue  # a throwaway context: its completion belongs to no episode
            spec, rollout = specs[i], rollouts[i]
            ids = list(completion_ids[k])
            segment = Segment(
                role=spec.role,
                ids=ids,
                trained=spec.trained,
                credit=spec.credit if spec.trained else None,
                text=chat.tokenizer.decode(ids, skip_special_tokens=True),
                num_tokens=len(ids),
                logprobs=list(logprobs[k]) if logprobs is not None else None,
                policy="solver",
            )
            rollout.segments.append(segment)
            episode.after_turn(rollout, segment)
        turn_index += 1
    return rollouts


def _open_turn(rollout: Rollout, spec: TurnSpec, chat: ChatTurns, first: bool) -> None:
    """Close the previous turn as the template does and append the turn's injected message (both masked)."""
    if not first:
        closing = chat.closing_ids(rollout.completion_ids())
        if closing:
            # An empty or truncated turn (or one ended by a stop token other than the template's end-of-turn) is
            # closed with the template's end-of-turn token, which the policy did not sample (kept out of the loss).
            # Only done when another turn follows, so a truncated final turn still looks truncated to TRL.
            rollout.segments.append(Segment(role="user", ids=closing, trained=False))
    if spec.message is not None:
        text = spec.message_text if spec.message_text is not None else spec.message
        ids = spec.message_ids if spec.message_ids is not None else chat.user_turn(spec.message)
        rollout.segments.append(
            Segment(
                role=spec.message_role,
                ids=ids,
                trained=False,
                text=text,
                num_tokens=chat.text_length(text),
                policy=spec.message_policy,
            )
        )
    if spec.response_prefix:
        ids = chat.tokenizer.encode(spec.response_prefix, add_special_tokens=False)
        trained = spec.prefix_trained and spec.trained
        rollout.segments.append(
            Segment(
                role="prefix",
                ids=ids,
                trained=trained,
                credit=spec.credit if trained else None,
                text=spec.response_prefix,
                num_tokens=len(ids),
            )
        )
