"""Code tasks in the refine episode: the turn-1 program's execution on the VISIBLE tests opens the feedback turn."""

from mtgrpo.chat import ChatTurns
from mtgrpo.episodes import RefineEpisode, run_episodes

ROW = {
    "problem": "Write add(a, b).",
    "visible_tests": ["assert add(1, 2) == 3"],
    "tests": ["assert add(1, 2) == 3", "assert add(-7, 7) == 0  # HIDDEN"],
    "setup_code": "",
}
BUGGY = "```python\ndef add(a, b):\n    return a - b\n```"
FIXED = "```python\ndef add(a, b):\n    return a + b\n```"


def _run(tokenizer, first: str, source: str):
    calls = []

    def generate(prompt_ids, num_generations):
        calls.append([tokenizer.decode(p) for p in prompt_ids])
        text = first if len(calls) == 1 else "ok" if len(calls) == 2 and source == "self" else FIXED
        return [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]] * len(prompt_ids), None

    chat = ChatTurns(tokenizer)
    episode = RefineEpisode(
        feedback_source=source, feedback_prompt="Review it.", feedback_template="Fix it.", refine_prompt="Again."
    )
    prompts = chat.prompt_ids([[{"role": "user", "content": ROW["problem"]}]])
    (rollout,) = run_episodes(episode, prompts, generate, chat, num_generations=1, rows=[ROW])
    return rollout, calls


def test_template_feedback_opens_with_the_visible_test_failure(tokenizer):
    rollout, calls = _run(tokenizer, BUGGY, "template")
    feedback = rollout.turns("feedback")[0]
    assert feedback.text.startswith("Running the program above on the task's visible tests: 0 of 1 passed")
    assert "assert add(1, 2) == 3" in feedback.text and feedback.text.endswith("Fix it.")
    assert not feedback.trained
    # The refine turn saw the report; the hidden test was never shown to the model.
    assert "0 of 1 passed" in calls[1][0]
    assert all("HIDDEN" not in context for turn in calls for context in turn)
    assert rollout.state["execution"].reason == "test_failure"


def test_self_feedback_prompt_carries_the_report_and_passing_programs_say_so(tokenizer):
    rollout, calls = _run(tokenizer, FIXED, "self")
    assert "visible tests: all 1 passed." in calls[1][0]  # the feedback writer's context
    injected = [s for s in rollout.segments if s.role == "user" and s.text]
    assert injected[0].text.endswith("Review it.")


def test_rows_without_visible_tests_are_not_executed(tokenizer):
    chat = ChatTurns(tokenizer)
    episode = RefineEpisode(feedback_source="template", feedback_template="Fix it.", refine_prompt="Again.")

    def generate(prompt_ids, n):
        return [tokenizer("x", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]] * len(prompt_ids), None

    prompts = chat.prompt_ids([[{"role": "user", "content": "What is 1 + 1?"}]])
    (r,) = run_episodes(episode, prompts, generate, chat, 1, rows=[{"answer": "2"}])
    assert "execution" not in r.state and r.turns("feedback")[0].text == "Fix it."
