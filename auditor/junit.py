"""JUnit XML for CI systems that read it (`--junit FILE` of `audit`, `audit-many` and `gate`): one test case per
check of the verdict (auditor/verdict.py), so a CI page lists every rule the audit applied, not only the ones that
fired; one test suite per checkpoint.

A fail is a `<failure>`; an inconclusive check is `<skipped>` (the audit could not decide it), or a `<failure>`
with `--strict`; a warning passes with its text in `<system-out>`, as CI systems show warnings beside a green
test. Text is written with the standard library's ElementTree, which escapes markup; characters XML 1.0 cannot
hold at all (most control characters) are dropped, since a checkpoint name is user input.
"""

from __future__ import annotations

import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from auditor import outputs
from auditor.errors import AuditInputError
from auditor.results import AuditResults
from auditor.verdict import Check, Verdict

NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value: object) -> str:
    return NOT_XML.sub("", str(value))


def _case(suite: ET.Element, check: Check, strict: bool) -> None:
    case = ET.SubElement(suite, "testcase", classname="drift-audit", name=check.name)
    message = _text(f"{check.level}: {check.message}")
    if check.level == "fail" or (check.level == "inconclusive" and strict):
        ET.SubElement(case, "failure", message=message, type=check.level).text = message
    elif check.level == "inconclusive":
        ET.SubElement(case, "skipped", message=message)
    else:
        ET.SubElement(case, "system-out").text = message


def _suite(root: ET.Element, verdict: Verdict, data: AuditResults, strict: bool) -> tuple[int, int, int]:
    """One checkpoint's suite: its checks as test cases, with the verdict, the models, the recipe and the smallest
    detectable drop as properties. Returns its (tests, failures, skipped)."""
    name, base = data.finetune.name, data.base.name
    failed = sum(c.level == "fail" or (c.level == "inconclusive" and strict) for c in verdict.checks)
    skipped = sum(c.level == "inconclusive" and not strict for c in verdict.checks)
    counts = (len(verdict.checks), failed, skipped)
    suite = ET.SubElement(root, "testsuite", {"name": _text(f"drift-audit {name} vs {base}"), **_counts(*counts)})
    properties = ET.SubElement(suite, "properties")
    detectable = verdict.resolution.smallest_detectable_drop if verdict.resolution else None
    for key, value in (("verdict", verdict.verdict), ("base", base), ("finetune", name),
                       ("recipe", data.recipe["name"]), ("strict", str(strict).lower()),
                       ("smallest_detectable_drop", "none" if detectable is None else f"{detectable:.4f}")):
        ET.SubElement(properties, "property", name=key, value=_text(value))
    for check in verdict.checks:
        _case(suite, check, strict)
    return counts


def _counts(tests: int, failures: int, skipped: int, errors: int = 0) -> dict[str, str]:
    return {"tests": str(tests), "failures": str(failures), "errors": str(errors), "skipped": str(skipped)}


def junit_xml(audits: Sequence[tuple[Verdict, AuditResults]], *, strict: bool = False,
              errors: Sequence[tuple[str, str]] = ()) -> bytes:
    """One JUnit test suite per audited checkpoint (`audits`: its verdict and results), and one per checkpoint that
    could not be audited (`errors`: its name and why), whose single case is an `<error>`."""
    root = ET.Element("testsuites", {"name": "drift-audit"})
    totals = [0, 0, 0]
    for verdict, data in audits:
        totals = [a + b for a, b in zip(totals, _suite(root, verdict, data, strict), strict=True)]
    for name, why in errors:
        suite = ET.SubElement(root, "testsuite", {"name": _text(f"drift-audit {name}"), **_counts(1, 0, 0, 1)})
        case = ET.SubElement(suite, "testcase", classname="drift-audit", name="audit")
        ET.SubElement(case, "error", message=_text(why), type="error").text = _text(why)
    root.attrib.update(_counts(totals[0] + len(errors), totals[1], totals[2], len(errors)))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def check_target(path: Path) -> None:
    """Create the --junit file's folder (as --out creates its own) and prove it writable before an audit spends
    its time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise AuditInputError(f"--junit {path}: its folder cannot be written ({exc.strerror or exc}). Give a path in "
                              "a writable folder.") from None


def write(path: Path, xml: bytes) -> None:
    check_target(path)
    outputs.atomic_write_bytes(path, xml)
