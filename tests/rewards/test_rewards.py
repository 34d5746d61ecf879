import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest

from mtgrpo.registry import _load_rewards_package, get_reward_func, get_reward_funcs

REPO = Path(__file__).resolve().parents[2]
rewards = _load_rewards_package()
math_answer_correct = rewards.math_answer_correct
format_reward = rewards.format_reward
extract_final_answer = rewards.extract_final_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so we get \\boxed{\\frac{3}{4}}, not 7", "\\frac{3}{4}"),
        ("first \\boxed{1} then \\boxed{x^{2}+1}", "x^{2}+1"),
        ("The answer is 12.", "12"),
        ("**Answer:** -5", "-5"),
        ("So the final answer is 12 apples. Done in 3 steps", "12"),
        ("The answer is 7 + 5 = 12.", "12"),
        ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("The answer is 12.5.", "12.5"),
        ("7 + 5 = 12", "12"),
        ("The total is 1,234 dollars", "1234"),
        ("8 - 10 = -2", "-2"),
        ("5-7", "7"),
        ("half of it, 3/4 of the rest", "3/4"),
        ("no numbers here", None),
        ("", None),
        ("\\boxed{unclosed", None),
        (None, None),
    ],
)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize(
    ("completion", "gold", "reward"),
    [
        ("Therefore \\boxed{12}.", "12", 1.0),
        ("The answer is 12", "12", 1.0),
        ("7 + 5 = 12", "12", 1.0),
        ("7 + 5 = 13", "12", 0.0),
        ("\\boxed{\\frac{3}{4}}", "0.75", 1.0),
        ("It is 0.75", "\\frac{3}{4}", 1.0),
        ("It is 3/4", "\\frac{3}{4}", 1.0),
        ("The answer is 42.0", "42", 1.0),
        ("3 - 8 = -5", "-5", 1.0),
        ("3 - 8 = 5", "-5", 0.0),
        ("They sold 1,234 rolls", "1234", 1.0),
        ("\\boxed{2\\sqrt{3}}", "2\\sqrt{3}", 1.0),
        ("lorem ipsum", "12", 0.0),
        ("", "12", 0.0),
        ("\\boxed{\\frac{", "12", 0.0),
        ("The answer is 12", "\\frac{", 0.0),  # unparseable gold
    ],
)
def test_math_answer_correct(completion, gold, reward):
    assert math_answer_correct([completion], answer=[gold]) == [reward]


def test_math_answer_correct_conversational_batch():
    completions = [
        [{"role": "assistant", "content": "The answer is 12."}],
        [{"role": "assistant", "content": "I get 13."}],
        # A multi-turn episode: the last assistant message carries the final answer.
        [
            {"role": "assistant", "content": "I get 13."},
            {"role": "user", "content": "Check again."},
            {"role": "assistant", "content": "Sorry, 7 + 5 = 12."},
        ],
    ]
    assert math_answer_correct(completions, answer=["12"] * 3, prompts=None, problem=["x"] * 3) == [
        1.0,
        0.0,
        1.0,
    ]


def test_math_answer_correct_off_main_thread():
    # math-verify's signal-based timeout raises off the main thread; the reward must still work there.
    result = []
    thread = threading.Thread(
        target=lambda: result.extend(math_answer_correct(["\\boxed{0.5}"], answer=["1/2"]))
    )
    thread.start()
    thread.join()
    assert result == [1.0]


def test_format_reward():
    completions = [
        "\\boxed{5}",
        "The answer is 5.",
        "Answer: 5",
        "5",
        "The answer is",
        "",
        [{"role": "assistant", "content": "answer: 5"}],
    ]
    assert format_reward(completions) == [0.2, 0.2, 0.2, 0.0, 0.0, 0.0, 0.2]


def test_reward_metadata():
    for name, func in rewards.REWARD_FUNCS.items():
        assert func.__name__ == name  # TRL logs rewards/<__name__>/mean
        assert func.reward_level in ("turn", "outcome")  # how MultiTurnGRPOTrainer splits R_T and R_O


def test_registry_by_name_and_dotted_path():
    assert get_reward_func("math_answer_correct") is math_answer_correct
    assert get_reward_func("mtgrpo.rewards.math_answer.format_reward") is format_reward
    assert get_reward_func("mtgrpo.rewards:format_reward") is format_reward
    assert get_reward_funcs(["format_reward", "math_answer_correct"]) == [format_reward, math_answer_correct]
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        get_reward_func("mtgrpo.rewards.nope")


def test_registry_unknown_name_says_how_to_fix():
    with pytest.raises(ValueError) as err:
        get_reward_func("exact_match")
    message = str(err.value)
    assert "'exact_match'" in message
    assert "format_reward" in message and "math_answer_correct" in message
    assert "my_pkg.my_module.my_reward" in message


def test_plain_checkout_loads_rewards_folder(tmp_path):
    """Without `pip install`, `mtgrpo.rewards` does not exist; the registry must load the top-level folder."""
    (tmp_path / "mtgrpo").mkdir()
    (tmp_path / "mtgrpo" / "__init__.py").touch()
    shutil.copy(REPO / "mtgrpo" / "registry.py", tmp_path / "mtgrpo")
    shutil.copytree(REPO / "rewards", tmp_path / "rewards", ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import sys; from mtgrpo.registry import get_reward_func; "
        "f = get_reward_func('math_answer_correct'); "
        "print(f(['7 + 5 = 12'], answer=['12']), sys.modules['mtgrpo.rewards'].__file__)"
    )
    # -S skips site hooks (.pth files), so no installed or editable mtgrpo can provide mtgrpo.rewards;
    # the dependencies are still importable from site-packages.
    env = {"PYTHONPATH": f"{tmp_path}:{sysconfig.get_paths()['purelib']}", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[1.0]", str(tmp_path / "rewards" / "__init__.py")]
