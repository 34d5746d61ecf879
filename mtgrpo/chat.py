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
    """Token ids for the boundaries between turns of one tokenizer's chat template."""

    def __init__(self, tokenizer, chat_template: str | None = None, chat_template_kwargs: dict | None = None):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.eos_token_id = tokenizer.eos_token_id
        # Bound per instance so the cache dies with the tokenizer.
        self.message_ids = lru_cache(maxsize=256)(self._message_ids)
        # Injected messages repeat across every rollout of a batch; count their tokens once.
        self.text_length = lru_cache(maxsize=256)(lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]))

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
        # Templates such as Qwen's render "<|im_end|>\n" after an assistant message; the policy stops at the EOS,
        # so the boundary is the last EOS, and whatever the template puts after it belongs to the suffix.
        eos_positions = [i for i, tok in enumerate(prefix) if tok == self.eos_token_id]
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

    def closing_ids(self, completion_ids: list[int], stop_ids: set[int]) -> list[int]:
        """Ids to append so that a (possibly empty or truncated) turn ends like a finished one."""
        if completion_ids and completion_ids[-1] in stop_ids:
            return []
        return [self.eos_token_id]
