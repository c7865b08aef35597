"""The results.json contract (schema drift-audit/1): generated from the results dataclasses, and a small
validator for it, standard library only.

`results.schema.json` beside this module is `generate()`'s output (a test keeps them equal; after changing a
dataclass in `auditor/results.py`, rewrite it with `python -m auditor.schema`). The validator implements the
subset the schema uses: type, enum, required, properties, additionalProperties (a schema), items, minItems,
maxItems, minProperties, minimum, maximum, anyOf, dependentRequired and local `$ref`s into `$defs`, plus one
extension, `x-ordered` (an array's items do not decrease: an interval's low end is not above its high end).
Numbers must be finite: JSON readers accept NaN and Infinity, which no rate or cosine is.

Three kinds of file pass: what `directions` writes, what `replay` adds, and a whole audit
(`dependentRequired`: a verdict comes with the replay and the attribution it was decided from).
"""

from __future__ import annotations

import functools
import json
import math
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from auditor.errors import AuditInputError
from auditor.results import OPTIONAL, SCHEMA, AuditResults, Record, is_required, type_hints

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


PRIMITIVES: dict[Any, str] = {float: "number", int: "integer", str: "string", bool: "boolean"}


def generate() -> dict[str, Any]:
    """The JSON Schema of results.json, from the dataclasses in `auditor/results.py`: one `$defs` entry per
    record; a field without a default is required; the constraints come from the types' `Annotated` parts."""
    defs: dict[str, Any] = {}
    top = _record_schema(AuditResults, defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA,
        "title": "drift-audit results.json",
        "description": "What `drift-audit directions`, `replay` and `audit` write; generated from auditor/results.py. "
                       "Numbers are finite. x-ordered (an extension): an interval's items do not decrease.",
        **top,
        "$defs": dict(sorted(defs.items())),
    }


def _record_schema(cls: type[Record], defs: dict[str, Any]) -> dict[str, Any]:
    hints = type_hints(cls)
    properties = {}
    for f in fields(cls):  # type: ignore[arg-type]
        kind = hints[f.name]
        if f.metadata.get(OPTIONAL):  # left out of the JSON when None, so never null in it
            kind = _without_none(kind)
        properties[f.name] = _type_schema(kind, defs)
    required = [f.name for f in fields(cls) if is_required(f)]  # type: ignore[arg-type]
    return {"type": "object", "required": required, **cls.SCHEMA_EXTRA, "properties": properties}


def _without_none(kind: Any) -> Any:
    if typing.get_origin(kind) in (Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(kind) if a is not type(None)]
        return inner
    return kind


def _type_schema(kind: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Annotated:
        return {**_type_schema(args[0], defs), **args[1].keywords}
    if origin in (Union, types.UnionType):
        inner = _type_schema(_without_none(kind), defs)
        if "$ref" in inner:
            return {"anyOf": [{"type": "null"}, inner]}
        if "enum" in inner:
            return {**inner, "enum": [*inner["enum"], None]}
        allowed = inner["type"] if isinstance(inner["type"], list) else [inner["type"]]
        return {**inner, "type": [*allowed, "null"]}
    if isinstance(kind, type) and issubclass(kind, Record):
        if kind.__name__ not in defs:
            defs[kind.__name__] = {}  # a record that holds itself (a suite's contrast items) refers to this entry
            defs[kind.__name__] = _record_schema(kind, defs)
        return {"$ref": f"#/$defs/{kind.__name__}"}
    if origin is Literal:
        return {"enum": list(args)}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0], defs)}
    if origin is tuple:
        (item,) = set(args)
        return {"type": "array", "items": _type_schema(item, defs), "minItems": len(args), "maxItems": len(args)}
    if origin is dict:
        values = {} if args[1] is Any else {"additionalProperties": _type_schema(args[1], defs)}
        return {"type": "object", **values}
    if kind is Any:
        return {}
    return {"type": PRIMITIVES[kind]}


def write() -> None:
    """Rewrite the shipped schema file from the dataclasses."""
    SCHEMA_FILE.write_text(json.dumps(generate(), indent=1) + "\n", encoding="utf-8")


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


def read(data: Any, where: str) -> AuditResults:
    """Results from JSON a file held: checked against the schema, then typed."""
    check(data, where)
    return AuditResults.from_json(data)


def check(data: Any, where: str) -> None:
    """Raise an AuditInputError naming the keys that break the schema; `where` names the file."""
    found = data.get("schema") if isinstance(data, dict) else type(data).__name__
    if isinstance(found, str) and found.startswith("drift-audit/") and found != SCHEMA:
        raise AuditInputError(f"{where} was written with results schema {found!r}; this drift-audit reads "
                              f"{SCHEMA!r} files (any release of that major version). Re-run the audit with this "
                              "release, or re-render it with the release that wrote it.")
    if not isinstance(data, dict) or found != SCHEMA:
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
    if "anyOf" in schema:
        branches = [_problems_under(value, branch, path) for branch in schema["anyOf"]]
        if all(branches):
            found += branches[-1]
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


def _problems_under(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    found: list[str] = []
    _check(value, schema, path, found)
    return found


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
