"""Screenshot a report in headless Chromium (Debian's `chromium`), to look at it as a reviewer would.

    .venv/bin/python scripts/screenshot_report.py reports/demo/persona/report.html out.png [--expand]

`--expand` opens every collapsed section first. Prints console errors and any request that leaves
file:// (there should be none).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--expand", action="store_true")
    parser.add_argument("--width", type=int, default=1200)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        page = browser.new_page(viewport={"width": args.width, "height": 900})
        page.on("console", lambda m: print(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("request", lambda r: None if r.url.startswith("file://") else print(f"external request: {r.url}"))
        page.goto(args.report.resolve().as_uri())
        if args.expand:
            page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        page.screenshot(path=str(args.png), full_page=True)
        browser.close()
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
