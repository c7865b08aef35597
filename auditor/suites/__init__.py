"""Prompt suites: JSONL data shipped in the package, a user's local file, or a Hub data set.

A suite reference is `builtin:NAME` (the file `data/NAME.jsonl` beside this module), a path to a
`.jsonl` or `.csv` file, or `hub:ORG/NAME` (a data set repository, read from the local Hub cache when
offline, as Hub models are; the named recipes in `recipes/` use it). Records are plain mappings;
`load_prompts` and `load_personas` turn them into typed items. Every problem names the file and, where
there is one, the line.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from auditor.errors import AuditInputError
from auditor.recipe import SuiteSpec

DATA_DIR = Path(__file__).parent / "data"
BUILTIN = "builtin:"
HUB = "hub:"


@dataclass(frozen=True)
class PromptItem:
    """One user request. `expected` is "refuse" or "answer" where the suite says so."""

    id: str
    prompt: str
    category: str = ""
    expected: Literal["refuse", "answer"] | None = None


@dataclass(frozen=True)
class Persona:
    """A system prompt ("" means the template's default). `group` is its family: "compliant" and
    "default" for the direction persona pairs; gender, race, religion, disability, compliant or
    baseline in the replay persona design."""

    id: str
    group: str
    system: str
    name: str = ""


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
        return _csv_records(path, text)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            raise AuditInputError(f"{path}, line {number}: not valid JSON ({getattr(exc, 'msg', exc)}). "
                                  "Fix or remove that line.") from None
        if not isinstance(record, dict):
            raise AuditInputError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}.")
        records.append(record)
    return records


def _csv_records(path: Path, text: str) -> list[dict[str, Any]]:
    """CSV rows as mappings; a row with more or fewer fields than the header is an error (csv would pad it
    with None or put the extra fields under the key None, silently)."""
    reader = csv.DictReader(text.splitlines())
    records = []
    try:
        for record in reader:
            if None in record or None in record.values():
                more = "more" if None in record else "fewer"
                raise AuditInputError(f"{path}, line {reader.line_num}: this row has {more} fields than the header "
                                      f"({len(reader.fieldnames or [])}). Quote fields that contain commas.")
            records.append(record)
    except csv.Error as exc:
        raise AuditInputError(f"{path}, line {reader.line_num}: not a valid CSV row ({exc}).") from None
    return records


def _text(record: dict[str, Any], column: str, where: object, number: int) -> str:
    value = record.get(column)
    if isinstance(value, list) and len(value) == 1:  # a one-turn conversation, as SORRY-Bench stores its prompts
        value = value[0]
    elif isinstance(value, list):
        raise AuditInputError(f"{where}, record {number}: column {column!r} holds {len(value)} turns; only one-turn "
                              "prompts can be replayed. Keep one-turn rows with filter_column / filter_values.")
    if not isinstance(value, str) or not value.strip():
        raise AuditInputError(f"{where}, record {number}: column {column!r} must be non-empty text, got {value!r:.60}.")
    _no_nul(value, f"{where}, record {number}: column {column!r}")
    return value


def _no_nul(value: str, where: str) -> None:
    """A NUL character is never part of a prompt: it is a sign of a binary or corrupt file, and tokenizers and
    terminals treat it differently."""
    if "\x00" in value:
        raise AuditInputError(f"{where} contains a NUL character (\\x00). Remove it from the file.")


def load_prompts(ref: str, *, key: str, limit: int | None = None) -> list[PromptItem]:
    """Load a suite in the project's own format (`prompt`, optional `id`, `category`, `expected`)."""
    return load_suite(SuiteSpec(source=ref), key=key, limit=limit)


def load_suite(spec: SuiteSpec, *, key: str, limit: int | None = None) -> list[PromptItem]:
    """Load a suite from a built-in file, a local file or a Hub data set, mapping its columns.

    `key` is the recipe key that named the suite, used in errors.
    """
    if spec.source.startswith(HUB):
        where, records = _hub_records(spec, key)
    else:
        path = resolve(spec.source)
        where, records = str(path), read_records(path)
    if spec.filter_column is not None:
        records = _kept(records, spec.filter_column, spec.filter_values, key, where)
    items = []
    for number, record in enumerate(records, start=1):
        expected = spec.default_expected
        if spec.expected_column in record and record[spec.expected_column] not in (None, ""):
            expected = "refuse" if str(record[spec.expected_column]) in spec.refuse_values else "answer"
            if spec.expected_column == "expected" and record["expected"] not in ("refuse", "answer"):
                raise AuditInputError(f"{where}, record {number}: `expected` must be refuse or answer, "
                                      f"got {record['expected']!r}.")
        items.append(PromptItem(
            id=str(record.get(spec.id_column, number)),
            prompt=_text(record, spec.prompt_column, where, number),
            category=str(record.get(spec.category_column, "") or ""),
            expected=expected,
        ))
    if not items:
        raise AuditInputError(f"{key}: suite {where} has no prompts. Point {key} at a file with at least one record.")
    return spread(items, limit) if limit else items


def spread(items: list[PromptItem], limit: int) -> list[PromptItem]:
    """The first `limit` items taken round-robin over categories, so a capped suite still covers every
    category (the files are grouped by category; their first N would cover only the first few)."""
    by_category: dict[str, list[PromptItem]] = {}
    for item in items:
        by_category.setdefault(item.category, []).append(item)
    queues = list(by_category.values())
    chosen: list[PromptItem] = []
    depth = 0
    while len(chosen) < min(limit, len(items)):
        chosen += [queue[depth] for queue in queues if depth < len(queue)][: limit - len(chosen)]
        depth += 1
    return chosen


def _kept(records: list[dict[str, Any]], column: str, values: tuple[str, ...], key: str,
          where: str) -> list[dict[str, Any]]:
    """The records whose `column` holds one of `values` (compared as text): the recipe's filter."""
    kept = [r for r in records if str(r.get(column)) in values]
    if records and not kept:
        seen = sorted({str(r.get(column)) for r in records})[:8]
        raise AuditInputError(f"{key}: no row of {where} has {column!r} in {list(values)}; its values include "
                              f"{seen}. Fix filter_values.")
    return kept


def _hub_records(spec: SuiteSpec, key: str) -> tuple[str, list[dict[str, Any]]]:
    """Rows of a Hub data set. Its repository is found as Hub models are (`snapshot_download`: downloaded when
    online, the local Hub cache when HF_HUB_OFFLINE=1, so `hf download --repo-type dataset` is enough), then read
    with `datasets.load_dataset` from that folder, whose dataset card names the configurations and splits."""
    import datasets
    from huggingface_hub import snapshot_download

    name = spec.source[len(HUB):]
    subset = f"configuration {spec.config!r}, " if spec.config else ""
    try:
        folder = snapshot_download(name, repo_type="dataset")
    except Exception as exc:  # huggingface_hub raises many types for missing, gated and offline repositories
        raise AuditInputError(f"{key}: the Hub data set {name!r} is not in the local Hugging Face cache and cannot "
                              f"be downloaded ({type(exc).__name__}: {str(exc)[:200]}). Where there is network, run "
                              f"`hf download --repo-type dataset {name}` (gated sets: accept their terms on the Hub "
                              "and log in first), or export it to a local .jsonl.") from None
    try:
        rows = datasets.load_dataset(folder, spec.config, split=spec.split)
    except Exception as exc:  # datasets raises many types for unknown configurations and splits
        raise AuditInputError(f"{key}: the Hub data set {name!r} ({subset}split {spec.split!r}) cannot be read "
                              f"({type(exc).__name__}: {str(exc)[:300]}). Check `config` and `split` against its "
                              "dataset card.") from None
    return f"hub:{name}", [dict(row) for row in rows]


def load_personas(ref: str, *, key: str) -> list[Persona]:
    """Load persona system prompts: `id`, `group` (or `kind`), `system`, optional `name`."""
    path = resolve(ref)
    personas = []
    for number, record in enumerate(read_records(path), start=1):
        group_column = "group" if "group" in record else "kind"
        system = record.get("system", "")
        if not isinstance(system, str):
            raise AuditInputError(f"{path}, record {number}: `system` must be text, got {system!r:.60}.")
        _no_nul(system, f"{path}, record {number}: `system`")
        personas.append(Persona(id=str(record.get("id", number)), group=_text(record, group_column, path, number),
                                system=system, name=str(record.get("name", record.get("id", number)))))
    if not personas:
        raise AuditInputError(f"{key}: persona file {path} is empty.")
    return personas


def load_templates(ref: str, *, key: str) -> list[str]:
    """Task paraphrase templates, each with exactly one `{prompt}` placeholder."""
    path = resolve(ref)
    templates = []
    for number, record in enumerate(read_records(path), start=1):
        template = _text(record, "template", path, number)
        if template.count("{prompt}") != 1:
            raise AuditInputError(f"{path}, record {number}: a template needs exactly one {{prompt}}, "
                                  f"got {template!r}.")
        templates.append(template)
    if not templates:
        raise AuditInputError(f"{key}: template file {path} is empty.")
    return templates
