"""Math rewards: pull the final answer out of a completion and check it against the gold with math-verify.

>>> math_answer_correct(["7 + 5 = 12"], answer=["12"])
[1.0]
"""

import re
import threading

from math_verify import parse, verify
from math_verify.errors import TimeoutException

from ._text import completion_text

FORMAT_REWARD = 0.2  # kept well below the 1.0 for a correct answer so format never outweighs correctness
_TIMEOUT_S = 5

# A number as models write it: thousands commas, decimals, simple fractions. The minus counts as a sign
# only when it does not follow an operand, so "5-7" ends in 7 while "= -2" ends in -2.
_NUMBER = re.compile(r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?")
# "The final answer is X.", "Answer: X", "**Answer:** X": X runs to the end of the sentence or line.
_ANSWER_PHRASE = re.compile(r"answer\s*(?:is|:)[\s:*]*(.+?)\s*(?:\.(?:\s|$)|\n|$)", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (nested braces balanced), or None if absent, empty or unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    open_brace = start + len("\\boxed")
    depth = 0
    for i in range(open_brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_brace + 1 : i].strip() or None
    return None


def _last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _phrase_answer(text: str) -> str | None:
    """The answer stated after the last "answer is"/"answer:" phrase, or None."""
    matches = list(_ANSWER_PHRASE.finditer(text))
    if not matches:
        return None
    stated = matches[-1].group(1).strip(" *$")
    # LaTeX ("\frac{3}{4}") must stay whole; in prose ("12 apples", "7 + 5 = 12") the last number is the answer.
    if "\\" in stated:
        return stated or None
    return _last_number(stated) or stated or None


def extract_final_answer(text: str) -> str | None:
    """The completion's final answer: the last ``\\boxed{}``, else an "answer is X" phrase, else the last number."""
    if not isinstance(text, str):
        return None
    return last_boxed(text) or _phrase_answer(text) or _last_number(text)


def _equivalent(prediction: str, gold: str) -> bool:
    # math-verify's timeout uses signal.alarm, which only works on the main thread (TRL runs async rewards
    # on a worker thread); there it must be disabled, trading the hang guard for not crashing.
    timeout = _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        # Wrapping in $...$ makes the LaTeX extractor read bare numbers, fractions and LaTeX alike.
        gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
        prediction_parsed = parse(f"${prediction}$", parsing_timeout=timeout)
        return bool(gold_parsed and prediction_parsed) and verify(
            gold_parsed, prediction_parsed, timeout_seconds=timeout
        )
    except (Exception, TimeoutException):  # TimeoutException derives from BaseException
        return False


def math_answer_correct(completions, answer, **kwargs) -> list[float]:
    """1.0 where the completion's final answer equals the gold ``answer`` column mathematically, else 0.0."""
    rewards = []
    for completion, gold in zip(completions, answer, strict=True):
        prediction = extract_final_answer(completion_text(completion))
        rewards.append(float(prediction is not None and _equivalent(prediction, str(gold))))
    return rewards


def format_reward(completions, **kwargs) -> list[float]:
    """FORMAT_REWARD where the completion states its final answer explicitly (boxed or "answer is N"), else 0.0."""
    return [
        FORMAT_REWARD if last_boxed(text) or _phrase_answer(text) else 0.0
        for text in map(completion_text, completions)
    ]


math_answer_correct.reward_level = "outcome"
format_reward.reward_level = "outcome"
