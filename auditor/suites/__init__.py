"""Prompt suites: JSONL data shipped in the package, or a user's local file.

A suite reference is `builtin:NAME` (the file `data/NAME.jsonl` beside this module) or a path to a
`.jsonl` or `.csv` file. Records are plain mappings; `load_prompts` and `load_personas` turn them
into typed items. Every problem names the file and, where there is one, the line.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditor.errors import AuditInputError

DATA_DIR = Path(__file__).parent / "data"
BUILTIN = "builtin:"


@dataclass(frozen=True)
class PromptItem:
    """One user request. `expected` is "refuse" or "answer" where the suite says so."""

    id: str
    prompt: str
    category: str = ""
    expected: str | None = None


@dataclass(frozen=True)
class Persona:
    """A system prompt. `kind` is "compliant" or "default" for the direction persona pairs."""

    id: str
    kind: str
    system: str


def resolve(ref: str) -> Path:
    """The file a suite reference names."""
    if ref.startswith(BUILTIN):
        name = ref[len(BUILTIN):]
        path = DATA_DIR / f"{name}.jsonl"
        if not path.is_file():
            known = sorted(str(p.relative_to(DATA_DIR).with_suffix("")) for p in DATA_DIR.rglob("*.jsonl"))
            raise AuditInputError(f"no built-in suite {name!r}. Built-in suites: {', '.join(known)}.")
        return path
    path = Path(ref)
    if not path.is_file():
        raise AuditInputError(f"suite file {path} does not exist. Give a .jsonl or .csv file, or builtin:NAME.")
    return path


def read_records(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL or CSV file into a list of mappings, naming the line of any broken record."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditInputError(f"suite file {path} cannot be read as UTF-8 text: {exc}") from None
    if path.suffix.lower() == ".csv":
        return list(csv.DictReader(text.splitlines()))
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AuditInputError(f"{path}, line {number}: not valid JSON ({exc.msg}). Fix or remove that line.") from None
        if not isinstance(record, dict):
            raise AuditInputError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}.")
        records.append(record)
    return records


def _text(record: dict[str, Any], column: str, path: Path, number: int) -> str:
    value = record.get(column)
    if not isinstance(value, str) or not value.strip():
        raise AuditInputError(f"{path}, record {number}: column {column!r} must be non-empty text, got {value!r:.60}.")
    return value


def load_prompts(ref: str, *, key: str, limit: int | None = None) -> list[PromptItem]:
    """Load prompt items; `key` is the recipe key that named the suite, used in errors.

    Records need a `prompt`; `id`, `category` and `expected` are optional (ids default to the
    record number).
    """
    path = resolve(ref)
    items = []
    for number, record in enumerate(read_records(path), start=1):
        expected = record.get("expected")
        if expected not in (None, "refuse", "answer"):
            raise AuditInputError(f"{path}, record {number}: `expected` must be refuse or answer, got {expected!r}.")
        items.append(PromptItem(
            id=str(record.get("id", number)),
            prompt=_text(record, "prompt", path, number),
            category=str(record.get("category", "")),
            expected=expected,
        ))
    if not items:
        raise AuditInputError(f"{key}: suite {path} has no prompts. Point {key} at a file with at least one record.")
    return items[:limit] if limit else items


def load_personas(ref: str, *, key: str) -> list[Persona]:
    """Load persona system prompts (`id`, `kind`, `system`)."""
    path = resolve(ref)
    personas = [
        Persona(id=str(r.get("id", n)), kind=_text(r, "kind", path, n), system=str(r.get("system", "")))
        for n, r in enumerate(read_records(path), start=1)
    ]
    if not personas:
        raise AuditInputError(f"{key}: persona file {path} is empty.")
    return personas
