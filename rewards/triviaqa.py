"""TriviaQA rewards of MT-GRPO's search agent, with TRL's batched signature.

>>> triviaqa_exact_match(["<answer>The Nile</answer>"], aliases=[["nile", "river nile"]])
[1.0]

Turn level (reward_level "turn": they judge the tool-calling turn):
  triviaqa_tool_success       0.2 x successful tool calls / attempts (0 without an attempt)
  triviaqa_result_has_answer  0.5 when a gold alias occurs in the first successful search result
Outcome level (they judge the episode; the answer is the first <answer>...</answer> of the final turn):
  triviaqa_exact_match        1.0 when the normalized answer equals a normalized alias
  triviaqa_answer_contains    0.5 when a normalized alias occurs in the normalized answer, as whole words
  triviaqa_f1                 SQuAD token F1 against the best alias, in [0, 1]
  triviaqa_answer_mentioned   0.5 when a gold alias occurs in the answer, or in the final turn when it has no
                              <answer> tag: a lenient signal for small models that ignore the tags (CPU demo)
  triviaqa_xml_format         <= 0.2: turns hold <reasoning> and <tool> or <answer>, open with <reasoning> and
                              end with </tool> or </answer> (averaged over the policy's turns)
  triviaqa_tag_count          <= 0.2: each tag a turn uses is opened and closed exactly once (averaged)

The gold is the `aliases` column (triviaqa schema), else the `answer` column. Trajectory facts (tool_calls,
tool_successes, first_result, assistant_turns) come from the tool episode's reward_kwargs. triviaqa_exact_match
also logs the metrics outcome/exact_match and outcome/f1, triviaqa_result_has_answer tools/answer_in_result.
"""

import re
import unicodedata
from collections import Counter

from ._text import completion_text

TOOL_SUCCESS_REWARD = 0.2
RESULT_HAS_ANSWER_REWARD = 0.5
EXACT_MATCH_REWARD = 1.0
CONTAINS_REWARD = 0.5
FORMAT_REWARD = 0.2
TAG_COUNT_REWARD = 0.2

_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_TAGS = ("reasoning", "tool", "answer")


def normalize_answer(text: str) -> str:
    """SQuAD / TriviaQA normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = text.lower().replace("_", " ")
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def extract_answer(text: str) -> str | None:
    """The first <answer>...</answer> of a turn (MT-GRPO's parser), or None."""
    match = _ANSWER.search(text or "")
    return match.group(1) if match else None


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _golds(aliases, answer) -> list[list[str]]:
    if aliases is not None:
        return [[a for a in row if normalize_answer(a)] for row in aliases]
    if answer is not None:
        return [[a] for a in answer]
    raise ValueError("TriviaQA rewards need an `aliases` or `answer` column: use dataset_schema: triviaqa.")


def _contains(haystack: str, needle: str) -> bool:
    """Whole-word containment of normalized texts (so the alias "us" does not match "bus")."""
    needle = normalize_answer(needle)
    return bool(needle) and f" {needle} " in f" {normalize_answer(haystack)} "


def _answers(completions) -> list[str | None]:
    return [extract_answer(completion_text(c)) for c in completions]


def _episode_column(kwargs: dict, name: str, reward: str) -> list:
    if name not in kwargs:
        raise ValueError(f"{reward} needs `{name}` from the tool episode: set `episode: tool` in the recipe.")
    return kwargs[name]


def triviaqa_tool_success(completions, **kwargs) -> list[float]:
    """0.2 x the share of the episode's tool calls that succeeded."""
    calls = _episode_column(kwargs, "tool_calls", "triviaqa_tool_success")
    successes = _episode_column(kwargs, "tool_successes", "triviaqa_tool_success")
    return [TOOL_SUCCESS_REWARD * s / c if c else 0.0 for c, s in zip(calls, successes, strict=True)]


def triviaqa_result_has_answer(completions, aliases=None, answer=None, **kwargs) -> list[float]:
    """0.5 when a gold alias occurs in the episode's first successful search result."""
    results = _episode_column(kwargs, "first_result", "triviaqa_result_has_answer")
    golds = _golds(aliases, answer)
    hits = [
        result is not None and any(_contains(result, g) for g in gold)
        for result, gold in zip(results, golds, strict=True)
    ]
    with_result = [hit for hit, result in zip(hits, results, strict=True) if result is not None]
    if with_result and kwargs.get("log_metric"):
        kwargs["log_metric"]("tools/answer_in_result", sum(with_result) / len(with_result))
    return [RESULT_HAS_ANSWER_REWARD * hit for hit in hits]


def triviaqa_exact_match(completions, aliases=None, answer=None, **kwargs) -> list[float]:
    """1.0 when the answer equals a gold alias after normalisation; logs outcome/exact_match and outcome/f1."""
    golds = _golds(aliases, answer)
    predictions = _answers(completions)
    matches = [
        p is not None and normalize_answer(p) in {normalize_answer(g) for g in gold}
        for p, gold in zip(predictions, golds, strict=True)
    ]
    if kwargs.get("log_metric") and matches:
        f1 = [
            max((token_f1(p, g) for g in gold), default=0.0) if p else 0.0
            for p, gold in zip(predictions, golds, strict=True)
        ]
        kwargs["log_metric"]("outcome/exact_match", sum(matches) / len(matches))
        kwargs["log_metric"]("outcome/f1", sum(f1) / len(f1))
    return [EXACT_MATCH_REWARD * m for m in matches]


def triviaqa_answer_contains(completions, aliases=None, answer=None, **kwargs) -> list[float]:
    """0.5 when a gold alias occurs in the answer as whole words."""
    golds = _golds(aliases, answer)
    return [
        CONTAINS_REWARD * (p is not None and any(_contains(p, g) for g in gold))
        for p, gold in zip(_answers(completions), golds, strict=True)
    ]


def triviaqa_answer_mentioned(completions, aliases=None, answer=None, **kwargs) -> list[float]:
    """0.5 when a gold alias occurs in the answer, read from the whole final turn when it has no <answer> tag."""
    golds = _golds(aliases, answer)
    texts = [completion_text(c) for c in completions]
    return [
        CONTAINS_REWARD * any(_contains(extract_answer(text) or text, g) for g in gold)
        for text, gold in zip(texts, golds, strict=True)
    ]


def triviaqa_f1(completions, aliases=None, answer=None, **kwargs) -> list[float]:
    """Token F1 of the answer against its best gold alias (0 without an answer)."""
    golds = _golds(aliases, answer)
    return [
        max((token_f1(p, g) for g in gold), default=0.0) if p else 0.0
        for p, gold in zip(_answers(completions), golds, strict=True)
    ]


def _turns(completions, kwargs) -> list[list[str]]:
    # The whole trajectory when the tool episode provides it, else just the scored completion.
    return kwargs.get("assistant_turns") or [[completion_text(c)] for c in completions]


def _format_score(turn: str) -> float:
    turn = turn.strip()
    fields = [
        "<reasoning>" in turn and "</reasoning>" in turn,
        any(f"<{tag}>" in turn and f"</{tag}>" in turn for tag in ("tool", "answer")),
    ]
    score = 0.4 * sum(fields) / len(fields)
    score += 0.3 * turn.startswith("<reasoning>")
    score += 0.3 * turn.endswith(("</tool>", "</answer>"))
    return score


def _tag_count_score(turn: str) -> float:
    checks = [(turn.count(f"<{tag}>"), turn.count(f"</{tag}>")) for tag in _TAGS]
    used = [(opened, closed) for opened, closed in checks if opened or closed]
    if not used:
        return 0.0
    return sum((1 - abs(opened - 1)) + (1 - abs(closed - 1)) for opened, closed in used) / (2 * len(used))


def triviaqa_xml_format(completions, **kwargs) -> list[float]:
    """Up to 0.2 for turns laid out as <reasoning>...</reasoning> then <tool>...</tool> or <answer>...</answer>."""
    return [
        FORMAT_REWARD * sum(map(_format_score, turns)) / len(turns) if turns else 0.0
        for turns in _turns(completions, kwargs)
    ]


def triviaqa_tag_count(completions, **kwargs) -> list[float]:
    """Up to 0.2 when every tag a turn uses is opened and closed exactly once (repeats cost, never below 0)."""
    return [
        max(0.0, TAG_COUNT_REWARD * sum(map(_tag_count_score, turns)) / len(turns)) if turns else 0.0
        for turns in _turns(completions, kwargs)
    ]


triviaqa_tool_success.reward_level = "turn"
triviaqa_result_has_answer.reward_level = "turn"
triviaqa_exact_match.reward_level = "outcome"
triviaqa_answer_contains.reward_level = "outcome"
triviaqa_answer_mentioned.reward_level = "outcome"
triviaqa_f1.reward_level = "outcome"
triviaqa_xml_format.reward_level = "outcome"
triviaqa_tag_count.reward_level = "outcome"
