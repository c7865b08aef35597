"""The results.json contract (schema drift-audit/1) and a small validator for it, standard library only.

`results.schema.json` beside this module is a JSON Schema. The validator implements the subset it
uses: type, enum, required, properties, additionalProperties (a schema), items, minItems, maxItems,
minProperties, minimum, maximum, dependentRequired and local `$ref`s into `$defs`, plus one
extension, `x-ordered` (an array's items do not decrease: an interval's low end is not above its
high end). Numbers must be finite: JSON readers accept NaN and Infinity, which no rate or cosine is.

Three kinds of file pass: what `directions` writes, what `replay` adds, and a whole audit
(`dependentRequired`: a verdict comes with the replay and the attribution it was decided from).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any, Literal

from auditor.errors import AuditInputError
from auditor.results import SCHEMA

SCHEMA_FILE = Path(__file__).parent / "results.schema.json"
Part = Literal["directions", "replay", "audit"]
SHOWN_PROBLEMS = 5
_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, (list, tuple)),  # tuples: results still in memory, before JSON
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
}


@functools.cache
def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return schema


def problems(data: Any) -> list[str]:
    """Every place where `data` breaks the schema, as 'key.path: what is wrong' (empty when valid)."""
    found: list[str] = []
    _check(data, load_schema(), "", found)
    return found


def part(data: dict[str, Any]) -> Part:
    """Which command's results a valid file holds."""
    return "audit" if "verdict" in data else "replay" if "replay" in data else "directions"


def check(data: Any, where: str) -> None:
    """Raise an AuditInputError naming the keys that break the schema; `where` names the file."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise AuditInputError(f"{where} is not a drift-audit results file (schema {found!r}, expected "
                              f"{SCHEMA!r}).")
    broken = problems(data)
    if broken:
        more = f" (and {len(broken) - SHOWN_PROBLEMS} more)" if len(broken) > SHOWN_PROBLEMS else ""
        raise AuditInputError(f"{where} does not match the results.json schema: {'; '.join(broken[:SHOWN_PROBLEMS])}"
                              f"{more}. Restore these keys or re-run the audit.")


def _check(value: Any, schema: dict[str, Any], path: str, found: list[str]) -> None:
    if "$ref" in schema:
        schema = _resolve(schema["$ref"])
    name = path or "the top level"
    types = schema.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](value) for t in allowed):
            found.append(f"{name} should be {' or '.join(allowed)}, got {_short(value)}")
            return
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{name} should be one of {', '.join(map(json.dumps, schema['enum']))}, got {_short(value)}")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{name} should be at least {schema['minimum']}, got {value}")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{name} should be at most {schema['maximum']}, got {value}")
    if isinstance(value, dict):
        _check_object(value, schema, path, found)
    if isinstance(value, (list, tuple)):
        _check_array(value, schema, path, found)


def _check_object(value: dict[str, Any], schema: dict[str, Any], path: str, found: list[str]) -> None:
    prefix = f"{path}." if path else ""
    for key in schema.get("required", []):
        if key not in value:
            found.append(f"{prefix}{key} is missing")
    for key, needs in schema.get("dependentRequired", {}).items():
        if key in value:
            found += [f"{prefix}{need} is missing (a file with {key} has it)" for need in needs if need not in value]
    if len(value) < schema.get("minProperties", 0):
        found.append(f"{path or 'the top level'} should not be empty")
    properties = schema.get("properties", {})
    for key, item in value.items():
        if key in properties:
            _check(item, properties[key], f"{prefix}{key}", found)
        elif "additionalProperties" in schema:
            _check(item, schema["additionalProperties"], f"{prefix}{key}", found)


def _check_array(value: list[Any] | tuple[Any, ...], schema: dict[str, Any], path: str, found: list[str]) -> None:
    if len(value) < schema.get("minItems", 0):
        found.append(f"{path} should have at least {schema['minItems']} items, got {len(value)}")
    if len(value) > schema.get("maxItems", len(value)):
        found.append(f"{path} should have at most {schema['maxItems']} items, got {len(value)}")
    if "items" in schema:
        for index, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{index}]", found)
    if schema.get("x-ordered") and all(_TYPES["number"](v) for v in value) and list(value) != sorted(value):
        found.append(f"{path} should be [low, high], got {_short(value)}")


def _resolve(ref: str) -> dict[str, Any]:
    prefix = "#/$defs/"
    assert ref.startswith(prefix), f"only local $defs references are supported, got {ref}"
    definition: dict[str, Any] = load_schema()["$defs"][ref[len(prefix):]]
    return definition


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:60] + "..."
