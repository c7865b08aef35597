from __future__ import annotations

from pathlib import Path

import pytest

from auditor.errors import AuditInputError
from auditor.recipe import Recipe, available_recipes, load_recipe


@pytest.mark.parametrize("name", available_recipes())
def test_every_shipped_recipe_loads(name: str) -> None:
    recipe = load_recipe(name)
    assert isinstance(recipe, Recipe) and recipe.name == name and recipe.positions


def test_quick_extends_default() -> None:
    quick, default = load_recipe("quick"), load_recipe("default")
    assert quick.directions.max_prompts == 32
    assert quick.directions.harmful == default.directions.harmful  # inherited
    assert quick.positions == ("post_instruction",)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, message", [
    ("version: 1\nbatch_sise: 4\n", "unknown key 'batch_sise'"),
    ("version: 1\ndirections:\n  harmfull: x\n", "recipe.directions: unknown key 'harmfull'"),
    ("version: 1\nbatch_size: four\n", "recipe.batch_size must be of type int"),
    ("version: 1\nbatch_size: true\n", "recipe.batch_size must be of type int"),
    ("version: 1\nbatch_size: 0\n", "recipe.batch_size must be at least 1"),
    ("version: 1\ndirections:\n  max_prompts: -3\n", "recipe.directions.max_prompts must be at least 1"),
    ("version: 1\npositions: [first]\n", "recipe.positions\\[0\\] must be one of"),
    ("version: 1\npositions: []\n", "positions` is empty"),
    ("version: 2\n", "version: 2"),
    ("- a\n- b\n", "must be a YAML mapping"),
    ("version: 1\nextends: nonexistent-recipe\n", "unknown recipe 'nonexistent-recipe'"),
    ("version: [1\n", "not valid YAML"),
    ("version: 1\nthresholds: {alpha: 0.9}\n", "recipe.thresholds.alpha must be at most 0.5, got 0.9"),
    ("version: 1\nthresholds: {alpha: 0}\n", "recipe.thresholds.alpha must be at least 0.001"),
    # rates are fractions: 10 meant as "10 points" would let no drop fail, silently
    ("version: 1\nthresholds: {refusal_drop_fail: 10}\n", "recipe.thresholds.refusal_drop_fail must be at most 1"),
    ("version: 1\nthresholds: {false_refusal_rise_warn: 10}\n", "false_refusal_rise_warn must be at most 1"),
    ("version: 1\nthresholds: {degenerate_rate_warn: 10}\n", "degenerate_rate_warn must be at most 1"),
    ("version: 1\nthresholds: {not_persona_max: 20}\n", "not_persona_max must be at most 1"),
    ("version: 1\nthresholds: {persona_driven_min: 50}\n", "persona_driven_min must be at most 1"),
    ("version: 1\nthresholds: {refusal_drop_fail: -2}\n", "refusal_drop_fail must be at least -1"),
    ("version: 1\nthresholds: {degenerate_rate_warn: -0.1}\n", "degenerate_rate_warn must be at least 0"),
    ("version: 1\nattribution: {min_refusal_change: 5}\n", "recipe.attribution.min_refusal_change must be at most 1"),
    ("version: 1\nreplay: {persona_target_halfwidth: 10}\n", "persona_target_halfwidth must be at most 1"),
])
def test_bad_recipes_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AuditInputError, match=message):
        load_recipe(write(tmp_path, text))


def test_missing_recipe_lists_known_ones() -> None:
    with pytest.raises(AuditInputError, match="default, demo, quick"):
        load_recipe("no-such-recipe")


def test_extends_cycle_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("version: 1\nextends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("version: 1\nextends: a.yaml\n")
    with pytest.raises(AuditInputError, match="cycle"):
        load_recipe(str(tmp_path / "a.yaml"))
