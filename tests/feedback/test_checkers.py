"""Feedback that carries information: a checker writes the feedback turn from the row (without its gold answer)
and the first answer; the refine turn reads it."""

from __future__ import annotations

import pytest
from scripted import ScriptedGenerate

from mtgrpo.chat import ChatTurns
from mtgrpo.episodes.base import run_episodes
from mtgrpo.episodes.refine import RefineEpisode
from mtgrpo.feedback.checkers import FALLBACK_FEEDBACK, arithmetic, resolve_checker, run_checker


def test_arithmetic_checker_recomputes_claims_and_names_the_wrong_ones():
    check = arithmetic({}, "47 * 83 = 321. Then 321 + 4 = 325, and 6 x 7 = 42. The answer is 325.")
    assert (check.claims_checked, check.claims_wrong) == (3, 1)
    assert "47 * 83 = 321" in check.text and "wrong" in check.text
    assert "321 + 4 = 325" not in check.text.split("wrong:")[1]  # right claims are not named as wrong


def test_arithmetic_checker_handles_decimals_fractions_and_no_claims():
    assert arithmetic({}, "12 / 8 = 1.5 and 1 / 3 = 0.3333").claims_wrong == 1  # 1/3 is not 0.3333 exactly
    assert arithmetic({}, "7 / 2 = 3.5").claims_wrong == 0
    none = arithmetic({}, "The answer is 12.")
    assert none.claims_checked == 0 and "no calculation" in none.text


def test_a_checker_never_sees_the_gold_answer():
    seen = {}

    def spy(row, attempt):
        seen.update(row)
        return "ok"

    run_checker(spy, {"problem": "What is 2 + 2?", "answer": "4", "aliases": ["four"], "tests": ["assert f()"],
                      "visible_tests": ["assert g()"]}, "5")
    assert seen == {"problem": "What is 2 + 2?", "visible_tests": ["assert g()"]}


def test_a_checker_that_raises_gives_fallback_feedback_and_is_counted():
    def broken(row, attempt):
        raise KeyError("no such column")

    check, failed = run_checker(broken, {"problem": "x"}, "attempt")
    assert failed and check.text == FALLBACK_FEEDBACK
    check, failed = run_checker(lambda row, attempt: 42, {}, "attempt")  # neither text nor a Check
    assert failed and check.text == FALLBACK_FEEDBACK


@pytest.mark.parametrize(
    "name, message",
    [
        ("arithmetc", "unknown checker 'arithmetc'"),
        ("json:no_such_function", "has no 'no_such_function'"),
        ("json:__doc__", "is a str, not a function"),
        (None, "needs feedback_checker"),
    ],
)
def test_bad_checkers_are_clear_errors(name, message):
    with pytest.raises(ValueError, match=message):
        resolve_checker(name)


def test_config_requires_a_checker_for_the_checker_source(tmp_path):
    from mtgrpo import MTGRPOConfig

    with pytest.raises(ValueError, match="feedback_source: checker needs feedback_checker"):
        MTGRPOConfig(output_dir=str(tmp_path), feedback_source="checker", use_cpu=True, bf16=False)
    with pytest.raises(ValueError, match="feedback_checker is set but feedback_source='self'"):
        MTGRPOConfig(output_dir=str(tmp_path), feedback_checker="arithmetic", use_cpu=True, bf16=False)


def test_refine_with_the_arithmetic_checker_shows_the_verdict_and_counts_it(tokenizer):
    episode = RefineEpisode(feedback_source="checker", feedback_checker=resolve_checker("arithmetic"),
                            refine_prompt="Give your final answer.")
    prompts = ChatTurns(tokenizer).prompt_ids([[{"role": "user", "content": "What is 47 * 83?"}]] * 2)
    gen = ScriptedGenerate(tokenizer, [["47 * 83 = 321.", "47 * 83 = 3901."], ["3901", "3901"]])
    rows = [{"problem": "What is 47 * 83?", "answer": "3901"}] * 2
    rollouts = run_episodes(episode, prompts, gen, ChatTurns(tokenizer), 1, rows=rows)
    wrong, right = (r.turns("feedback")[0] for r in rollouts)
    assert "47 * 83 = 321" in wrong.text and "wrong" in wrong.text and not wrong.trained
    assert "found no mistake" in right.text
    assert "3901" not in wrong.text  # the checker names the mistake, not the answer
    # The refine turn's context holds the verdict.
    assert "47 * 83 = 321" in tokenizer.decode(gen.calls[1][2][0])
    metrics = episode.metrics(rollouts)
    assert metrics["feedback_checker/claims_checked"] == [1, 1]
    assert metrics["feedback_checker/claims_wrong"] == [1, 0]
    assert metrics["feedback_checker/errors"] == [0.0, 0.0]
