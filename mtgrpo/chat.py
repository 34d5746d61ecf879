"""Turn boundaries as token ids, taken from the tokenizer's own chat template.

An episode's token stream is built by concatenating ids: the prompt, what the policy generated, then the ids
that close its turn and open the next message. Decoding and re-tokenising the whole conversation would change
token boundaries and so the log-probabilities the loss is computed on; instead we ask the chat template once
for the ids between "end of an assistant message" and "start of the next assistant message" (the approach of
TRL's `_get_tool_suffix_ids`).
"""

from __future__ import annotations

from functools import lru_cache

_DUMMY = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "dummy"}]


class ChatTurns:
    """Token ids of prompts and of the boundaries between turns, for one tokenizer's chat template.

    Training and evaluation both build their prompts and turns through one instance (`ChatTurns.for_training`), so
    the recipe's `chat_template_kwargs` (e.g. Qwen3's `enable_thinking`) and the tools' schemas shape eval prompts
    exactly as they shape training prompts.
    """

    def __init__(self, tokenizer, chat_template: str | None = None, chat_template_kwargs: dict | None = None):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        # Bound per instance so the cache dies with the tokenizer.
        self.message_ids = lru_cache(maxsize=256)(self._message_ids)
        # Injected messages repeat across every rollout of a batch; count their tokens once.
        self.text_length = lru_cache(maxsize=256)(lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        # The template's own end-of-turn token (ChatML's <|im_end|>, Llama 3's <|eot_id|>), which is not always the
        # tokenizer's EOS: base models such as Qwen2.5-7B have EOS <|endoftext|> but close turns with <|im_end|>.
        self.end_of_turn_id = self._end_of_turn_id()

    @classmethod
    def for_training(cls, tokenizer, chat_template_kwargs: dict | None = None) -> ChatTurns:
        """The trainer's choice, shared with evaluation: the tokenizer's template when it is prefix-preserving (turn
        streams are concatenations, so earlier messages must render the same whatever follows), else TRL's
        training-safe version of it (what TRL's own tool loop swaps in for the same reason)."""
        from trl.chat_template_utils import get_training_chat_template, is_chat_template_prefix_preserving

        template = None if is_chat_template_prefix_preserving(tokenizer) else get_training_chat_template(tokenizer)
        return cls(tokenizer, template, chat_template_kwargs)

    def prompt_ids(self, prompts: list, tools: list | None = None) -> list[list[int]]:
        """Token ids of each prompt (a list of chat messages, or a plain string) followed by the assistant header.

        `tools`: functions whose JSON schemas the template renders into the prompt (native tool calls)."""
        out = []
        for prompt in prompts:
            if isinstance(prompt, str):  # a plain-text prompt is tokenised as TRL does (special tokens added)
                out.append(list(self.tokenizer(prompt)["input_ids"]))
                continue
            ids = self.tokenizer.apply_chat_template(
                prompt,
                tools=tools or None,  # `or None`: some templates (Llama) render tool boilerplate for tools=[]
                chat_template=self.chat_template,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
                **self.chat_template_kwargs,
            )
            out.append(list(ids))
        return out

    def _end_of_turn_id(self) -> int:
        """The first token the template puts after an assistant message's content, if it is a special token."""
        header = self._render(_DUMMY[:1], add_generation_prompt=True)
        full = self._render(_DUMMY, add_generation_prompt=False)
        special = set(self.tokenizer.all_special_ids) | {
            i for i, tok in self.tokenizer.added_tokens_decoder.items() if tok.special
        }
        if full[: len(header)] == header:
            body = full[len(header) :]
            for k in range(1, len(body)):
                if "dummy" in self.tokenizer.decode(body[:k]) and body[k] in special:
                    return body[k]
        return self.tokenizer.eos_token_id

    def _render(self, messages, add_generation_prompt: bool) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=add_generation_prompt,
            tokenize=True,
            chat_template=self.chat_template,
            return_dict=False,
            **self.chat_template_kwargs,
        )
        return list(ids)

    def _message_ids(self, role: str, content: str) -> list[int]:
        """Ids that follow a finished assistant turn: a `role` message with `content`, then the assistant header."""
        return self._suffix_ids(_DUMMY, [{"role": role, "content": content}])

    def tool_result_ids(self, tool_messages: list[dict]) -> list[int]:
        """Ids that follow a finished assistant turn with native tool calls: the `tool` messages, then the assistant
        header (what TRL's `_get_tool_suffix_ids` builds; the tool name is real because some templates use it)."""
        call = {"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}
        context = [_DUMMY[0], {"role": "assistant", "content": "", "tool_calls": [call]}]
        return self._suffix_ids(context, tool_messages)

    def _suffix_ids(self, context: list[dict], messages: list[dict]) -> list[int]:
        prefix = self._render(context, add_generation_prompt=False)
        # Templates such as Qwen's render "<|im_end|>\n" after an assistant message; the policy stops at the
        # end-of-turn token, so that is the boundary, and whatever the template puts after it belongs to the suffix.
        eos_positions = [i for i, tok in enumerate(prefix) if tok == self.end_of_turn_id]
        if eos_positions:
            prefix = prefix[: eos_positions[-1] + 1]
        full = self._render([*context, *messages], add_generation_prompt=True)
        if full[: len(prefix)] != prefix:
            raise ValueError(
                "This chat template is not prefix-preserving (rendering one more message changed earlier tokens), "
                "so multi-turn token streams cannot be built by concatenation. Pass a prefix-preserving "
                "`chat_template` in the recipe (TRL ships some under trl/chat_templates/)."
            )
        return full[len(prefix) :]

    def user_turn(self, content: str) -> list[int]:
        return list(self.message_ids("user", content))

    def closing_ids(self, completion_ids: list[int]) -> list[int]:
        """Ids to append so that a turn ends as the template ends one: its end-of-turn token. An empty or truncated
        turn gets it, and so does a turn that stopped on another stop token (a base model's EOS), which the template
        would not have closed with."""
        if completion_ids and completion_ids[-1] == self.end_of_turn_id:
            return []
        return [self.end_of_turn_id]


def check_prompt_lengths(chat: ChatTurns, dataset, limit: int | None, tools: list | None = None, split: str = "training"):
    """Raise, naming the row and the fix, when a prompt of `dataset` is longer than `limit` tokens as the rollout
    tokenises it (the training template, the recipe's chat_template_kwargs, the tools' schemas)."""
    if isinstance(dataset, dict):  # several named eval sets
        for name, part in dataset.items():
            check_prompt_lengths(chat, part, limit, tools, f"{split} ({name})")
        return
    # Streaming datasets cannot be read up front; their prompts are not checked.
    if limit is None or "prompt" not in (getattr(dataset, "column_names", None) or []) or not hasattr(dataset, "__len__"):
        return
    prompts = dataset["prompt"]
    for start in range(0, len(prompts), 1024):
        for offset, ids in enumerate(chat.prompt_ids(prompts[start : start + 1024], tools=tools)):
            if len(ids) > limit:
                row = start + offset
                raise ValueError(
                    f"Row {row} of the {split} set has a {len(ids)}-token prompt after the chat template, more than "
                    f"max_prompt_length={limit}: {prompt_text(prompts[row])[:100]!r}... Raise max_prompt_length in "
                    "the recipe, shorten system_prompt / prompt_template, or filter long problems out of the dataset."
                )


def prompt_text(prompt) -> str:
    """The last user message of a conversational prompt (or the prompt itself): what an error message quotes."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), str(prompt))
