"""The documentation stays true to the repository: every module is in both module tables, no file points
outside the repository, and every relative link resolves. A clone has nothing beside it, so a link or a
path into a sibling folder works only on the machine that wrote it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
SCANNED = ("README.md", "pyproject.toml", "docs", "auditor", "tests", "scripts", "examples", ".ci")
# Built from parts so that this file does not contain what it looks for.
OUTSIDE = (".." + "/shared", "/work/" + "shared")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def auditor_entries() -> list[str]:
    """Every top-level module and folder of the package, as the tables name them (`auditor/x.py`, `auditor/y/`)."""
    entries = []
    for path in sorted((ROOT / "auditor").iterdir()):
        if path.name.startswith((".", "__pycache__")):
            continue
        if path.is_dir():
            entries.append(f"auditor/{path.name}/")
        elif path.suffix == ".py":
            entries.append(f"auditor/{path.name}")
    return entries


def table_names(markdown: Path, heading: str) -> set[str]:
    """The `code` names in the table rows of one `## heading` section."""
    text = markdown.read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end >= 0 else None]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row)}


@pytest.mark.parametrize(("doc", "heading"), [(ARCHITECTURE, "Modules"), (README, "Layout")])
def test_every_module_is_in_the_module_table(doc: Path, heading: str) -> None:
    named = table_names(doc, heading)
    missing = [entry for entry in auditor_entries() if entry not in named]
    assert not missing, f"{doc.name} section {heading!r} does not name {missing}"


def scanned_files() -> Iterator[Path]:
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from (p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def test_no_file_points_outside_the_repository() -> None:
    files = list(scanned_files())
    assert README in files and ARCHITECTURE in files
    offending = [f"{path.relative_to(ROOT)}: {pattern}" for path in files for pattern in OUTSIDE
                 if pattern.encode() in path.read_bytes()]
    assert not offending, offending


@pytest.mark.parametrize("doc", [README, ARCHITECTURE])
def test_relative_links_resolve(doc: Path) -> None:
    text = FENCE.sub("", doc.read_text(encoding="utf-8"))
    targets = [t.split("#")[0] for t in LINK.findall(text) if "://" not in t and not t.startswith(("#", "mailto:"))]
    broken = [t for t in targets if not (doc.parent / t).exists()]
    assert not broken, f"{doc.name} links to missing files: {broken}"
