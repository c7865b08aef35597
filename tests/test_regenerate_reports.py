"""scripts/regenerate_reports.py on a made-up demo folder built from the tiny audit: the committed example holds
exactly the two audits' three files each, re-rendered by the current templates, an index whose links resolve,
and (with Chromium) the first screen of the positive control's report."""

from __future__ import annotations

import re
import shutil
import struct
import sys
from pathlib import Path

import pytest
from test_report import chromium

from auditor import report
from auditor.errors import AuditInputError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import regenerate_reports  # noqa: E402


@pytest.fixture
def demo(audit_dir: Path, tmp_path: Path) -> Path:
    """A demo output folder as `drift-audit demo` leaves it: three audits with their weights-side files, an index,
    and reports rendered by an older template."""
    folder = tmp_path / "demo"
    for name in ("persona-distilled", "abliterated", "benign"):
        shutil.copytree(audit_dir, folder / name)
        (folder / name / "report.html").write_text("<p>rendered by an older template</p>")
        (folder / name / "directions.safetensors").write_bytes(b"\0" * 64)
    (folder / "index.html").write_text("<a href='abliterated/report.html'>old index</a>")
    return folder


def test_the_example_holds_two_audits_rerendered_and_nothing_else(demo: Path, tmp_path: Path) -> None:
    dest = tmp_path / "reports" / "example"
    regenerate_reports.write_example(dest, regenerate_reports.render_example(regenerate_reports.read_audits(demo)),
                                     shoot=None)
    written = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert written == ["benign/report.html", "benign/results.json", "benign/summary.md", "index.html",
                       "persona-distilled/report.html", "persona-distilled/results.json",
                       "persona-distilled/summary.md"]
    for name in ("persona-distilled", "benign"):
        raw = (demo / name / "results.json").read_bytes()
        assert (dest / name / "results.json").read_bytes() == raw  # as the demo wrote it
        rendered = report.render(report.load_results(demo / name / "results.json"))
        assert (dest / name / "report.html").read_text() == rendered.html  # by the current template
        assert (dest / name / "summary.md").read_text() == rendered.summary
    links = re.findall(r'href="([^"#]+)"', (dest / "index.html").read_text())
    assert sorted(links) == ["benign/report.html", "persona-distilled/report.html"]
    assert all((dest / link).is_file() for link in links)
    assert [p.name for p in tmp_path.joinpath("reports").iterdir()] == ["example"]  # no staging folder left


def test_rerendering_the_committed_example_in_place(demo: Path, tmp_path: Path) -> None:
    dest = tmp_path / "example"
    files = regenerate_reports.render_example(regenerate_reports.read_audits(demo))
    regenerate_reports.write_example(dest, files, shoot=None)
    (dest / "benign" / "report.html").write_text("stale")
    (dest / "stray.bin").write_bytes(b"x")
    regenerate_reports.write_example(dest, regenerate_reports.render_example(regenerate_reports.read_audits(dest)),
                                     shoot=None)
    assert (dest / "benign" / "report.html").read_bytes() == files["benign/report.html"]
    assert not (dest / "stray.bin").exists()


def test_a_failure_leaves_the_committed_example_untouched(demo: Path, tmp_path: Path) -> None:
    dest = tmp_path / "example"
    files = regenerate_reports.render_example(regenerate_reports.read_audits(demo))
    regenerate_reports.write_example(dest, files, shoot=None)
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}

    def broken(report_html: Path, png: Path) -> list[str]:
        return ["external request: https://example.com/x.png"]

    with pytest.raises(AuditInputError, match="misbehaved in Chromium: external request"):
        regenerate_reports.write_example(dest, files, shoot=broken)
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "example"]


def test_missing_demo_and_oversized_files_are_named(tmp_path: Path, demo: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert regenerate_reports.main(["--from", str(tmp_path / "nowhere"), "--to", str(tmp_path / "example")]) == 2
    assert "Run `drift-audit demo` first" in capsys.readouterr().err
    audits = regenerate_reports.read_audits(demo)
    raw, data = audits["benign"]
    audits["benign"] = (raw + b" " * regenerate_reports.MAX_FILE_BYTES, data)
    with pytest.raises(AuditInputError, match="benign/results.json .* not a report to commit"):
        regenerate_reports.render_example(audits)


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (scripts/setup.sh --browser)")
def test_the_script_takes_the_first_screen(demo: Path, tmp_path: Path) -> None:
    dest = tmp_path / "example"
    assert regenerate_reports.main(["--from", str(demo), "--to", str(dest)]) == 0
    png = (dest / regenerate_reports.SCREENSHOT).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1200, 900)  # the first screen, not the whole page


def test_the_committed_example_is_rendered_by_the_current_templates() -> None:
    """A template change must come with `scripts/regenerate_reports.py --from reports/example`: a reviewer opens
    what the committed files say, and they must be what the auditor writes today."""
    committed = Path(__file__).resolve().parent.parent / "reports" / "example"
    files = regenerate_reports.render_example(regenerate_reports.read_audits(committed))
    stale = [name for name, content in files.items() if (committed / name).read_bytes() != content]
    assert not stale, f"re-render with `python scripts/regenerate_reports.py --from reports/example`: {stale}"
