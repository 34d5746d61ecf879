"""Turn a TRL completion (plain text or a list of chat messages) into the text a reward should read."""


def completion_text(completion) -> str:
    """Return the completion's text: the string itself, or the content of the last assistant message.

    TRL passes conversational datasets' completions as ``[{"role": "assistant", "content": ...}]``; a
    multi-turn episode may carry several messages, and the final answer is in the last assistant turn.
    """
    if isinstance(completion, str):
        return completion
    for message in reversed(completion or []):
        if message.get("role") == "assistant":
            content = message.get("content") or ""
            # Multimodal-style content is a list of parts; only text parts can hold an answer.
            if isinstance(content, list):
                return "".join(part.get("text", "") for part in content if part.get("type") == "text")
            return content
    return ""
