"""Reward functions with TRL's batched signature ``f(completions, **columns) -> list[float]``.

Installed as ``mtgrpo.rewards``; recipes name them by their key in REWARD_FUNCS (see mtgrpo.registry).
Each function's ``__name__`` is its registry name, which TRL logs as ``rewards/<name>/mean``, and its
``reward_level`` says whether it scores the whole episode ("outcome") or a single turn ("turn").
"""

from collections.abc import Callable

from ._text import completion_text
from .code_exec import code_all_tests_passed, code_tests_passed, extract_program, make_code_reward
from .math_answer import extract_final_answer, format_reward, last_boxed, math_answer_correct
from .tools import environment_reward, tool_call_success
from .triviaqa import (
    triviaqa_answer_contains,
    triviaqa_answer_mentioned,
    triviaqa_exact_match,
    triviaqa_f1,
    triviaqa_result_has_answer,
    triviaqa_tag_count,
    triviaqa_tool_success,
    triviaqa_xml_format,
)

REWARD_FUNCS: dict[str, Callable] = {
    f.__name__: f
    for f in (
        math_answer_correct,
        format_reward,
        triviaqa_tool_success,
        triviaqa_result_has_answer,
        triviaqa_exact_match,
        triviaqa_answer_contains,
        triviaqa_answer_mentioned,
        triviaqa_f1,
        triviaqa_xml_format,
        triviaqa_tag_count,
        code_tests_passed,
        code_all_tests_passed,
        tool_call_success,
        environment_reward,
    )
}

__all__ = [
    "REWARD_FUNCS",
    "code_all_tests_passed",
    "code_tests_passed",
    "completion_text",
    "extract_final_answer",
    "extract_program",
    "format_reward",
    "last_boxed",
    "environment_reward",
    "make_code_reward",
    "tool_call_success",
    "math_answer_correct",
    "triviaqa_answer_contains",
    "triviaqa_answer_mentioned",
    "triviaqa_exact_match",
    "triviaqa_f1",
    "triviaqa_result_has_answer",
    "triviaqa_tag_count",
    "triviaqa_tool_success",
    "triviaqa_xml_format",
]
