"""Regenerate the example reports committed in reports/example/, for a reviewer to open before installing.

    .venv/bin/drift-audit demo                          # writes reports/demo/ (builds the organisms once)
    .venv/bin/python scripts/regenerate_reports.py      # reports/demo -> reports/example, and the README picture

It takes the demo's positive control (`persona-distilled`) and `benign` control: each one's results.json as
the demo wrote it, with report.html and summary.md rendered again by the current templates, an index.html
over the two, and a picture of the positive control's first screen taken in headless Chromium
(`first-screen.png`, shown in the README). Nothing else is copied: no weights, no generation cache. Run it
whenever the report changes; `--from reports/example` re-renders the committed results without the demo.

The new folder is built beside the old one and swapped in only when complete, so a failure (no Chromium, a
results.json that breaks the schema) leaves the committed example as it was.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from auditor import report
from auditor.errors import AuditInputError
from auditor.results import AuditResults

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("persona-distilled", "benign")  # the demo's positive control and benign control
SCREENSHOT = "first-screen.png"
MAX_FILE_BYTES = 2_000_000  # a report is tens of kB; anything near this is not a report


def read_audits(source: Path, names: Sequence[str] = EXAMPLES) -> dict[str, tuple[bytes, AuditResults]]:
    """Each audit's results.json as written (bytes) and as read (checked against the schema, typed)."""
    audits = {}
    for name in names:
        path = source / name / "results.json"
        if not path.is_file():
            raise AuditInputError(f"{path} does not exist. Run `drift-audit demo` first (it writes reports/demo/), "
                                  "or pass --from the folder that holds the demo's reports.")
        audits[name] = (path.read_bytes(), report.load_results(path))
    return audits


def render_example(audits: dict[str, tuple[bytes, AuditResults]]) -> dict[str, bytes]:
    """The example folder's files by relative path: per audit results.json, report.html and summary.md, and the
    index over them."""
    files: dict[str, bytes] = {}
    rows = []
    for name, (raw, data) in audits.items():
        files[f"{name}/results.json"] = raw
        files.update({f"{name}/{file}": content for file, content in report.render(data).files().items()})
        rows.append(report.index_row(data, Path(name) / "report.html"))
    files["index.html"] = report.render_index(rows, ordered=False).encode("utf-8")  # two organisms, not a run
    large = [f"{path} ({len(content)} bytes)" for path, content in files.items() if len(content) > MAX_FILE_BYTES]
    if large:
        raise AuditInputError(f"{', '.join(large)}: larger than {MAX_FILE_BYTES} bytes, not a report to commit.")
    return files


def write_example(dest: Path, files: dict[str, bytes], shoot: Callable[[Path, Path], list[str]] | None) -> None:
    """Write the files (and, with `shoot`, the first screen of the first audit's report) into a new folder beside
    `dest`, then swap it in place of `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage, earlier = dest.with_name(f".{dest.name}-new"), dest.with_name(f".{dest.name}-earlier")
    for leftover in (stage, earlier):  # from a run that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    stage.mkdir()  # mkdir, not mkdtemp: the folder gets the umask's mode, as the files do
    try:
        for relative, content in files.items():
            (stage / relative).parent.mkdir(parents=True, exist_ok=True)
            (stage / relative).write_bytes(content)
        if shoot is not None:
            first = next(path for path in files if path.endswith("/report.html"))
            problems = shoot(stage / first, stage / SCREENSHOT)
            if problems:
                raise AuditInputError(f"{first} misbehaved in Chromium: {'; '.join(problems)}")
        if dest.exists():
            dest.rename(earlier)
        stage.rename(dest)
        shutil.rmtree(earlier, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def first_screen(report_html: Path, png: Path) -> list[str]:
    """The first screen of a report as a reviewer opens it, in headless Chromium (scripts/screenshot_report.py)."""
    from screenshot_report import screenshot  # beside this script

    return screenshot(report_html, png, full_page=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, default=ROOT / "reports" / "demo",
                        help="the demo's output folder (default: reports/demo)")
    parser.add_argument("--to", dest="dest", type=Path, default=ROOT / "reports" / "example",
                        help="the committed example folder (default: reports/example)")
    args = parser.parse_args(argv)
    try:
        files = render_example(read_audits(args.source))
        write_example(args.dest, files, first_screen)
    except AuditInputError as exc:
        print(f"regenerate_reports: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.dest}: {', '.join(sorted(files))}, {SCREENSHOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
