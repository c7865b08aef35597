"""Fuzz the recipe parser and the suite loaders: nothing but AuditInputError may escape."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.errors import AuditInputError
from auditor.recipe import Recipe, load_recipe
from auditor.suites import load_personas, load_prompts, load_templates

KEYS = st.sampled_from(["version", "extends", "positions", "batch_size", "seed", "directions", "replay",
                        "attribution", "thresholds", "max_prompts", "harmful", "refusal", "source",
                        "persona_budget", "window", "name", "layers_path", "bogus"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["quick", "default", "late", "last", "builtin:refusal"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(KEYS, inner, max_size=4)), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.one_of(KEYS, st.integers()), VALUES, max_size=6))
def test_recipe_parser_only_raises_input_errors(data: dict) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.yaml"
        path.write_text(yaml.safe_dump(data))
        try:
            assert isinstance(load_recipe(str(path)), Recipe)
        except AuditInputError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_recipe_parser_on_arbitrary_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_recipe(str(path))
        except AuditInputError:
            pass


LINES = st.one_of(st.text(max_size=60), st.sampled_from([
    '{"prompt": "hi"}', '{"prompt": ""}', '{"prompt": 3}', "[1, 2]", '{"expected": "maybe", "prompt": "x"}',
    '{"template": "{prompt}"}', '{"template": "no placeholder"}', '{"group": "g", "system": 5}',
    '{"kind": "compliant", "system": "obey"}', "1" * 5000, "[" * 100000, "{}"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(LINES, max_size=6), st.sampled_from([".jsonl", ".csv"]))
def test_suite_loaders_only_raise_input_errors(lines: list[str], suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"suite{suffix}"
        path.write_text("\n".join(lines), encoding="utf-8")
        for loader in (lambda: load_prompts(str(path), key="k"), lambda: load_personas(str(path), key="k"),
                       lambda: load_templates(str(path), key="k")):
            try:
                loader()
            except AuditInputError:
                pass
