"""Turn boundaries from the chat template itself, on the real SmolLM2 tokenizer (ChatML)."""

import copy

import pytest

from mtgrpo.chat import ChatTurns
from mtgrpo.episodes import RefineEpisode, run_episodes


@pytest.fixture
def base_model_tokenizer(tokenizer):
    """The SmolLM2 vocabulary with a base model's special tokens: EOS <|endoftext|>, while the ChatML template still
    ends every turn with <|im_end|> (as Qwen2.5-7B base does)."""
    tok = copy.deepcopy(tokenizer)
    tok.eos_token = "<|endoftext|>"
    assert tok.eos_token_id != tok.convert_tokens_to_ids("<|im_end|>")
    return tok


def test_end_of_turn_is_the_templates_token_not_the_eos(tokenizer, base_model_tokenizer):
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ChatTurns(tokenizer).end_of_turn_id == im_end
    assert ChatTurns(base_model_tokenizer).end_of_turn_id == im_end


def _generate(tokenizer, stop_id, replies):
    calls = []

    def generate(prompt_ids, num_generations):
        text = replies[len(calls)]
        calls.append(prompt_ids)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return [ids + ([stop_id] if stop_id is not None else []) for _ in prompt_ids], None

    return generate


@pytest.mark.parametrize("how_turn1_ends", ["end_of_turn", "truncated"])
def test_streams_follow_the_template_when_eos_differs(base_model_tokenizer, how_turn1_ends):
    tok = base_model_tokenizer
    chat = ChatTurns(tok)
    im_end = chat.end_of_turn_id
    replies = ["It is 2.", "The answer is 2."]
    stop = im_end if how_turn1_ends == "end_of_turn" else None
    episode = RefineEpisode(feedback_source="template", feedback_template="Recheck.", refine_prompt="Again.")
    prompt = chat.prompt_ids([[{"role": "user", "content": "What is 1 + 1?"}]])
    (r,) = run_episodes(episode, prompt, _generate(tok, stop, replies), chat, num_generations=1)
    rendered = tok.apply_chat_template(
        [
            {"role": "user", "content": "What is 1 + 1?"},
            {"role": "assistant", "content": "It is 2."},
            {"role": "user", "content": "Recheck.\n\nAgain."},
            {"role": "assistant", "content": "The answer is 2."},
        ],
        tokenize=True,
        return_dict=False,
    )
    # Built by concatenation, the stream is the template's own rendering: turn 1 closed by <|im_end|>, never by the
    # tokenizer's EOS, and the next message starts with what the template puts after <|im_end|>.
    assert r.context_ids() == rendered[: len(r.context_ids())]
    assert tok.eos_token_id not in r.completion_ids()
    closing = [s for s in r.segments if s.role == "user" and s.ids == [im_end]]
    assert len(closing) == (1 if how_turn1_ends == "truncated" else 0)
    assert all(not s.trained for s in closing)


def test_a_turn_stopped_by_another_stop_token_is_closed_with_end_of_turn(base_model_tokenizer):
    chat = ChatTurns(base_model_tokenizer)
    assert chat.closing_ids([5, base_model_tokenizer.eos_token_id]) == [chat.end_of_turn_id]
    assert chat.closing_ids([5, chat.end_of_turn_id]) == []
    assert chat.closing_ids([]) == [chat.end_of_turn_id]


def test_prompt_ids_honour_template_kwargs_and_tools(tokenizer):
    from trl.chat_template_utils import qwen3_chat_template

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = qwen3_chat_template  # Qwen3's template on the same ChatML tokens

    def lookup(query: str) -> str:
        """Look something up.

        Args:
            query: what to look up
        """
        return query

    prompt = [[{"role": "user", "content": "Hi"}]]
    thinking = tok.decode(ChatTurns.for_training(tok).prompt_ids(prompt)[0])
    plain = ChatTurns.for_training(tok, {"enable_thinking": False}).prompt_ids(prompt, tools=[lookup])[0]
    text = tok.decode(plain)
    assert "<think>\n\n</think>" in text and "<think>" not in thinking  # the kwarg reached the template
    assert '"name": "lookup"' in text  # the tool's schema is in the prompt
