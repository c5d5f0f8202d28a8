"""Open an `unfreeze report --html` page in a real headless Chromium and check it; optionally screenshot it.

    python benchmarks/report_browser.py runs/sw                        # a sweep or suggest folder: report it, open it
    python benchmarks/report_browser.py page.html --screenshot docs/report.png

Checks (exit status 1 when one fails): the page's own script ran to its end (`data-report="ready"`:
an exception on the way leaves it unset), the browser logged no console message at all (uncaught
errors included), the results table has one line per row, and the frontier has one point per finished
row. Chromium comes from the OS packages (`apt-get install -y chromium` on Debian); it runs without a
sandbox (as root in CI), without a GPU, and with every background network feature off, from a
throw-away profile.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--mute-audio")
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, NAMES) if path), None)


@dataclass
class PageCheck:
    ready: bool
    console: list[str] = field(default_factory=list)  # every console line the browser logged
    rows: int = -1  # what the page's script counted: table lines and points on the first cost axis
    points: int = -1
    finished_rows: int = -1  # table lines whose row has results
    screenshot: Path | None = None

    def problems(self) -> list[str]:
        said = [] if self.ready else ["the page script did not finish (data-report is not 'ready')"]
        said += [f"console: {line}" for line in self.console]
        if self.points != self.finished_rows:
            said.append(f"the frontier has {self.points} points for {self.finished_rows} finished rows")
        return said


def _chromium(browser: str, page: Path, extra: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="unfreeze-chromium-") as profile:
        command = [browser, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def check_page(page: Path, screenshot: Path | None = None, size: tuple[int, int] = (1280, 1400),
               browser: str | None = None, timeout: float = 120.0) -> PageCheck:
    """Load the page once for its DOM after the scripts ran (and the console log), once for a screenshot."""
    browser = browser or find_chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found; apt-get install -y chromium")
    done = _chromium(browser, page, ["--enable-logging=stderr", "--v=0", "--dump-dom"], timeout)
    dom = done.stdout
    console = [line.strip() for line in done.stderr.splitlines() if ":CONSOLE" in line]
    status = re.search(r'<p id="report-status"([^>]*)>', dom)
    attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', status.group(1))) if status else {}
    check = PageCheck(ready=bool(re.search(r'<html[^>]*data-report="ready"', dom)), console=console,
                      rows=int(attributes.get("data-rows", -1)), points=int(attributes.get("data-points", -1)),
                      finished_rows=len(re.findall(r"<tr data-row=", dom))
                      - len(re.findall(r'<tr data-row="[^"]*" data-status="(?:failed|skipped|pending)"', dom)))
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        _chromium(browser, page, [f"--screenshot={screenshot.resolve()}", f"--window-size={size[0]},{size[1]}"],
                  timeout)
        check.screenshot = screenshot if screenshot.is_file() else None
    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", type=Path, help="an HTML page, or a sweep/suggest folder to report first")
    parser.add_argument("--screenshot", type=Path, help="write a PNG of the page here")
    parser.add_argument("--size", default="1280,1400", help="window width,height for the screenshot")
    args = parser.parse_args(argv)
    page = args.target
    if page.is_dir():
        from unfreeze.cli import main as unfreeze

        page = Path(tempfile.mkdtemp(prefix="unfreeze-report-")) / "report.html"
        if unfreeze(["report", str(args.target), "--html", str(page)]) != 0:
            return 2
    width, height = (int(v) for v in args.size.split(","))
    check = check_page(page, args.screenshot, (width, height))
    print(f"{page}: script ready {check.ready}, {check.rows} table rows ({check.finished_rows} finished), "
          f"{check.points} frontier points, {len(check.console)} console lines"
          + (f"; screenshot {check.screenshot}" if check.screenshot else ""))
    for problem in check.problems():
        print(f"  {problem}", file=sys.stderr)
    return 1 if check.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
