"""Screenshot a report in headless Chromium (Debian's `chromium`), to look at it as a reviewer would.

    .venv/bin/python scripts/screenshot_report.py reports/demo/persona-distilled/report.html out.png [--expand]

`--expand` opens every collapsed section first; `--first-screen` keeps only what a reviewer sees before
scrolling (scripts/regenerate_reports.py takes the README's picture so). Prints console errors and any request
that leaves file:// (there should be none).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def screenshot(report: Path, png: Path, *, expand: bool = False, width: int = 1200, height: int = 900,
               full_page: bool = True) -> list[str]:
    """Write `png` and return what went wrong in the page: console errors and requests that leave file://."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("request", lambda r: None if r.url.startswith("file://") else problems.append(
            f"external request: {r.url}"))
        page.goto(report.resolve().as_uri())
        if expand:
            page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        page.screenshot(path=str(png), full_page=full_page)
        browser.close()
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--expand", action="store_true")
    parser.add_argument("--first-screen", action="store_true", help="only the first screen, not the whole page")
    parser.add_argument("--width", type=int, default=1200)
    args = parser.parse_args()
    for problem in screenshot(args.report, args.png, expand=args.expand, width=args.width,
                              full_page=not args.first_screen):
        print(problem)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
