"""The typed results: every field survives JSON and back, the shipped schema is the one the dataclasses give,
and `report` reads files of the same major version that lack the fields added since."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import pytest

from auditor import report, schema
from auditor.cli import main
from auditor.results import AuditResults, Record, is_required, type_hints


def example(kind: Any, depth: int = 0) -> Any:
    """A value of `kind` with every field filled (no None anywhere), valid under the schema."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Annotated:
        return example(args[0], depth)
    if origin in (Union, types.UnionType):
        return example(next(a for a in args if a is not type(None)), depth)
    if isinstance(kind, type) and issubclass(kind, Record):
        hints = type_hints(kind)
        values = {f.name: example(hints[f.name], depth + 1) for f in dataclasses.fields(kind)  # type: ignore[arg-type]
                  if depth < 8 or is_required(f)}  # a suite's contrast items hold a suite: stop nesting somewhere
        return kind(**values)
    if origin is Literal:
        return args[0]
    if origin is list:
        return [example(args[0], depth)]
    if origin is tuple:
        return tuple(sorted(example(a, depth) + i for i, a in enumerate(args)))
    if origin is dict:
        return {"name": "x"} if args[1] is Any else {"name": example(args[1], depth)}
    return {float: 0.25, int: 1, str: "text", bool: True}[kind]


def records(cls: type, seen: set[type] | None = None) -> set[type]:
    """Every record class reachable from `cls` through its fields."""
    seen = set() if seen is None else seen
    if cls in seen:
        return seen
    seen.add(cls)
    for hint in type_hints(cls).values():
        for part in _flatten(hint):
            if isinstance(part, type) and issubclass(part, Record):
                records(part, seen)
    return seen


def _flatten(kind: Any) -> list[Any]:
    args = typing.get_args(kind)
    return [kind, *(a for arg in args for a in _flatten(arg))]


def test_every_field_survives_json_and_back() -> None:
    full = example(AuditResults)
    written = json.loads(json.dumps(full.to_json(), allow_nan=False))
    assert schema.problems(written) == []
    assert AuditResults.from_json(written) == full
    missing = [f"{cls.__name__}.{f.name}" for cls in records(AuditResults) for f in dataclasses.fields(cls)
               if not _appears(written, f.name)]
    assert not missing, f"fields never written: {missing}"


def _appears(data: Any, key: str) -> bool:
    if isinstance(data, dict):
        return key in data or any(_appears(v, key) for v in data.values())
    if isinstance(data, list):
        return any(_appears(v, key) for v in data)
    return False


def test_the_shipped_schema_is_generated_from_the_dataclasses() -> None:
    shipped = json.loads(schema.SCHEMA_FILE.read_text(encoding="utf-8"))
    assert shipped == schema.generate(), "auditor/results.py changed: rewrite the schema with python -m auditor.schema"


def without_defaults(cls: type[Record], data: dict[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """`data` as an earlier release of the same major version wrote it: no field that has a default, except the
    `keep` ones (which are still stripped inside)."""
    hints = type_hints(cls)
    return {f.name: _strip(hints[f.name], data[f.name]) for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.name in data and (is_required(f) or f.name in keep)}


def _strip(kind: Any, value: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if value is None:
        return None
    if origin is Annotated:
        return _strip(args[0], value)
    if origin in (Union, types.UnionType):
        return _strip(next(a for a in args if a is not type(None)), value)
    if origin is list:
        return [_strip(args[0], v) for v in value]
    if origin is dict:
        return {k: _strip(args[1], v) for k, v in value.items()}
    if isinstance(kind, type) and issubclass(kind, Record):
        return without_defaults(kind, value)
    return value


def test_report_reads_a_file_of_the_same_major_version_without_later_fields(audit_dir: Path, tmp_path: Path) -> None:
    data = json.loads((audit_dir / "results.json").read_text())
    old = without_defaults(AuditResults, data, keep=("verdict", "reasons", "replay", "general_drift", "attribution"))
    assert "judge" not in old["replay"] and "corrected" not in old["replay"]["refusal"]["base"]
    assert "layer_range" not in old["attribution"] and "refusal_norm_base" not in old["layers"][0]
    # it predates `resolution` and the judge's correction, so its reasons name neither
    old["reasons"] = [r for r in old["reasons"] if not r.startswith("inconclusive") and "corrected for" not in r]
    (tmp_path / "results.json").write_text(json.dumps(old))
    assert main(["report", str(tmp_path / "results.json")]) == 0
    assert "corrected for the judge" not in (tmp_path / "report.html").read_text()


def test_a_file_of_another_major_version_is_refused_by_name(audit_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads((audit_dir / "results.json").read_text())
    (tmp_path / "results.json").write_text(json.dumps({**data, "schema": "drift-audit/2"}))
    assert main(["report", str(tmp_path / "results.json")]) == 2
    assert "'drift-audit/2'" in capsys.readouterr().err


def test_a_written_file_reads_back_equal(audit_dir: Path) -> None:
    loaded = report.load_results(audit_dir / "results.json")
    assert loaded.to_json() == json.loads((audit_dir / "results.json").read_text())
    assert loaded.part == "audit"
