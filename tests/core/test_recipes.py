"""Every shipped recipe parses with the real parser, and its reward names resolve."""

from pathlib import Path

import pytest

from mtgrpo.recipe import check_recipe_keys, parse_recipe
from mtgrpo.registry import get_reward_funcs

RECIPES = sorted(str(p) for p in Path(__file__).resolve().parents[2].joinpath("recipes").rglob("*.yaml"))


def test_there_are_recipes():
    assert len(RECIPES) >= 3


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: Path(p).parent.name + "/" + Path(p).name)
def test_recipe_parses_and_rewards_resolve(recipe):
    script_args, training_args, model_args = parse_recipe(["--config", recipe])
    assert model_args.model_name_or_path
    funcs = get_reward_funcs(script_args.reward_funcs)
    assert [f.__name__ for f in funcs][: len(script_args.reward_funcs)]
    assert training_args.correctness_reward in [f.__name__ for f in funcs]
    assert Path(recipe).parent.name in Path(recipe).as_posix()  # recipes/<model>/<task>-<episode>.yaml
    assert "-" in Path(recipe).stem


def test_cli_overrides_the_recipe():
    recipe = "recipes/smollm2-135m-instruct/arithmetic-refine.yaml"
    _, training_args, _ = parse_recipe(["--config", recipe, "--max_steps", "3", "--feedback_source", "self"])
    assert training_args.max_steps == 3 and training_args.feedback_source == "self"


def test_unknown_recipe_key_names_the_key_and_a_fix(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: x\nlearnig_rate: 1.0e-06\n")
    with pytest.raises(ValueError, match=r"Unknown recipe key 'learnig_rate'.*Did you mean 'learning_rate'"):
        check_recipe_keys(bad)


def test_unknown_feedback_source_in_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: x\nfeedback_source: critic\nuse_cpu: true\n")
    with pytest.raises(ValueError, match="Unknown feedback_source 'critic'"):
        parse_recipe(["--config", str(recipe)])
