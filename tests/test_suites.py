from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from auditor import suites
from auditor.directions import prompt_sets
from auditor.errors import AuditInputError
from auditor.recipe import load_recipe


def test_direction_prompt_sets_are_big_and_varied_enough() -> None:
    harmful = suites.load_prompts("builtin:directions/harmful", key="k")
    harmless = suites.load_prompts("builtin:directions/harmless", key="k")
    neutral = suites.load_prompts("builtin:directions/neutral", key="k")
    personas = suites.load_personas("builtin:directions/personas", key="k")
    assert len(harmful) >= 96 and len(Counter(p.category for p in harmful)) >= 8
    assert len(harmless) >= 96 and len(Counter(p.category for p in harmless)) >= 8
    assert len(neutral) >= 64
    kinds = Counter(p.group for p in personas)
    assert kinds["compliant"] >= 3 and kinds["default"] >= 3
    texts = [p.prompt.lower() for p in harmful + harmless + neutral]
    assert len(texts) == len(set(texts)), "a prompt appears twice across the direction sets"


def test_persona_pairs_use_the_same_questions() -> None:
    sets = prompt_sets(load_recipe("quick"))
    assert [p.user for p in sets.persona_on] == [p.user for p in sets.persona_off] == [p.user for p in sets.neutral]
    assert all(p.system for p in sets.persona_on) and all(p.system is None for p in sets.neutral)
    assert len(sets.harmful) == 32


def test_broken_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    with pytest.raises(AuditInputError, match="line 2"):
        suites.load_prompts(str(path), key="directions.harmful")


def test_empty_suite_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(AuditInputError, match="directions.harmless"):
        suites.load_prompts(str(path), key="directions.harmless")


def test_csv_suite_and_missing_prompt(tmp_path: Path) -> None:
    good = tmp_path / "s.csv"
    good.write_text("id,prompt,category\n1,hello there,greeting\n")
    assert suites.load_prompts(str(good), key="k")[0].category == "greeting"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt column"}\n')
    with pytest.raises(AuditInputError, match="column 'prompt'"):
        suites.load_prompts(str(bad), key="k")


def test_unknown_builtin_lists_known() -> None:
    with pytest.raises(AuditInputError, match="directions/harmful"):
        suites.resolve("builtin:nope")
