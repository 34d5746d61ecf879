"""Episodes that end at different turns on different processes, under TRL's vLLM gather-and-slice rule.

No GPU and no vLLM here, so the processes are simulated by threads and the backend by a function that does what
TRL's vLLM paths do (server mode; colocate with tensor parallelism): gather every process's prompts, generate
(de-duplicating groups of `num_generations` identical prompts on the first turn), and return to process k the
slice [k * len(its prompts), (k + 1) * len(its prompts)). Each completion carries a fingerprint of the context it
was generated for, so a completion that lands on another episode's context is caught.
"""

import json
import re
import threading
import zlib

import pytest
from scripted import Collective

from mtgrpo.chat import ChatTurns
from mtgrpo.episodes import ToolEpisode, run_episodes


def lookup(query: str) -> str:
    return f"Result for {query}."


def fingerprint(ids) -> str:
    return f"ctx{zlib.crc32(json.dumps(list(ids)).encode())}"


class TRLvLLMRule:
    """A generation backend that follows TRL's vLLM gather-and-slice rule."""

    def __init__(self, tokenizer, collective: Collective, rank: int):
        self.tokenizer, self.collective, self.rank = tokenizer, collective, rank

    def reply(self, context, sample: int) -> list[int]:
        text = self.tokenizer.decode(context)
        question = int(re.search(r"Question (\d+)", text).group(1))
        results = text.count("<result>")
        first_turn = re.search(r"ctx\d+ s(\d+)", text)  # later turns keep the sample drawn on the first
        sample = int(first_turn.group(1)) if first_turn else sample
        # How many tool calls this episode makes depends on the question and the sample: 0, 1 or 2.
        wanted = (question + sample) % 3
        body = (
            f'<tool>{json.dumps({"name": "lookup", "args": {"query": f"q{question}"}})}</tool>'
            if results < wanted
            else "<answer>Paris</answer>"
        )
        ids = self.tokenizer(f"{fingerprint(context)} s{sample} {body}", add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id]

    def __call__(self, prompt_ids, num_generations):
        everyone = [p for prompts in self.collective.all_gather(self.rank, prompt_ids) for p in prompts]
        completions = [
            self.reply(prompt, sample)
            for prompt in everyone[::num_generations]  # the server de-duplicates each group and samples n
            for sample in range(num_generations)
        ]
        n = len(prompt_ids)
        return completions[self.rank * n : (self.rank + 1) * n], None


@pytest.mark.parametrize("world", [2, 3])
def test_every_completion_lands_on_the_context_it_was_generated_for(tokenizer, world):
    collective = Collective(world)
    num_generations, per_rank = 2, 4
    calls = [[] for _ in range(world)]
    results, errors = [None] * world, []

    def rank_main(rank):
        try:
            backend = TRLvLLMRule(tokenizer, collective, rank)

            def generate(prompt_ids, n):
                calls[rank].append(len(prompt_ids))
                return backend(prompt_ids, n)

            chat = ChatTurns(tokenizer)
            prompts = chat.prompt_ids(
                [
                    [{"role": "user", "content": f"Question {rank * per_rank + i // num_generations}: capital?"}]
                    for i in range(per_rank)
                ]
            )
            episode = ToolEpisode(tools={"lookup": lookup}, max_tool_calls=2, tool_timeout=5)
            results[rank] = run_episodes(
                episode,
                prompts,
                generate,
                chat,
                num_generations,
                max_over_processes=lambda count: max(collective.all_gather(rank, count)),
            )
        except BaseException as err:  # surfaced below; a broken barrier would otherwise hide the first error
            errors.append(err)
            collective.barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[0]

    # The processes really were uneven: at some turn they had different numbers of unfinished episodes.
    active = [[sum(len(r.turns("solver")) > t for r in results[rank]) for t in range(3)] for rank in range(world)]
    assert any(len({a[t] for a in active}) > 1 for t in range(3)), active
    # Every process made the same calls with the same number of contexts (padded where it had fewer episodes).
    assert all(c == calls[0] for c in calls), calls
    for rank in range(world):
        for rollout in results[rank]:
            context = list(rollout.prompt_ids)
            for seg in rollout.segments:
                if seg.role == "solver":
                    assert seg.text.startswith(fingerprint(context)), (rank, seg.text)
                context += seg.ids
            assert rollout.done
    # Episodes of 1, 2 and 3 solver turns all occurred.
    lengths = {len(r.turns("solver")) for rs in results for r in rs}
    assert lengths == {1, 2, 3}
