"""The public API: `auditor.audit` gives what the CLI gives, the README's example runs, bad keywords are named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import write_replay_recipe
from test_golden import GOLDEN, differences, normalise

import auditor
from auditor import api
from auditor.errors import AuditInputError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_audit_returns_what_the_cli_writes(base_dir: Path, lora_random_dir: Path, tmp_path: Path) -> None:
    """The library call and `drift-audit audit` are one code path: the same numbers as the stored CLI run."""
    results = auditor.audit(str(base_dir), str(lora_random_dir), recipe=write_replay_recipe(tmp_path), cache=False)
    folders = {"base": base_dir, "finetune": lora_random_dir, "suites": tmp_path}
    expected = json.loads((GOLDEN / "tiny_lora_audit.json").read_text(encoding="utf-8"))
    assert differences(expected, normalise(results.to_json(), folders)) == []
    assert not any(p.name == "results.json" for p in tmp_path.rglob("*")), "out=None writes no file"


def test_directions_and_replay_stop_early(base_dir: Path, lora_random_dir: Path, tmp_path: Path) -> None:
    recipe = write_replay_recipe(tmp_path)
    measured = api.directions(str(base_dir), str(lora_random_dir), recipe=recipe, out=tmp_path / "d")
    assert measured.part == "directions" and (tmp_path / "d" / "directions.safetensors").is_file()
    replayed = api.replay(str(base_dir), str(lora_random_dir), recipe=recipe, cache=False)
    assert replayed.part == "replay" and replayed.attribution is None


def test_an_unknown_load_option_is_named(base_dir: Path) -> None:
    with pytest.raises(AuditInputError, match="unknown load option.*low_mem.*low_memory"):
        auditor.audit(str(base_dir), str(base_dir), low_mem=True)


def test_the_readme_example_runs(base_dir: Path, lora_random_dir: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    section = README.read_text(encoding="utf-8").split("### From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    example = (code.group(1).replace('"org/base-model"', repr(str(base_dir)))
               .replace('"path/to/lora-adapter"', repr(str(lora_random_dir)))
               .replace('recipe="quick"', f"recipe={str(write_replay_recipe(tmp_path))!r}")
               .replace('"reports/my-lora"', repr(str(tmp_path / "out"))))
    monkeypatch.setenv("DRIFT_AUDIT_CACHE", str(tmp_path / "cache"))
    exec(compile(example, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    printed = capsys.readouterr().out
    assert "refusal 0% -> 0%" in printed and (tmp_path / "out" / "report.html").is_file()
