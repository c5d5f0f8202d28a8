"""The HTML report in a real headless Chromium (from the OS packages): the page's script runs without a
console message, the table has a line per row, the frontier a point per finished row; a screenshot is taken.

Skipped where no Chromium is installed (`apt-get install -y chromium` on Debian, as CI does).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from unfreeze.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import report_browser  # noqa: E402
from test_report_html import make_suggestion, make_sweep  # noqa: E402

pytestmark = pytest.mark.skipif(report_browser.find_chromium() is None,
                                reason="no Chromium (apt-get install -y chromium)")


def test_sweep_report_opens_in_chromium_without_errors(tmp_path, capsys):
    page = tmp_path / "report.html"
    assert main(["report", str(make_sweep(tmp_path)), "--html", str(page)]) == 0
    check = report_browser.check_page(page, screenshot=tmp_path / "report.png", size=(1280, 900))
    assert check.ready and check.console == [], check.console
    assert check.rows == 4 and check.finished_rows == 3 and check.points == 3  # the failed row has no point
    assert check.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and check.screenshot.stat().st_size > 20_000
    assert check.problems() == []


def test_suggest_report_opens_in_chromium_without_errors(tmp_path, capsys):
    page = tmp_path / "suggest.html"
    assert main(["report", str(make_suggestion(tmp_path)), "--html", str(page)]) == 0
    check = report_browser.check_page(page)
    assert check.ready and check.console == [] and check.rows == 4 and check.points == 4


def test_the_check_catches_a_page_whose_script_fails(tmp_path, capsys):
    page = tmp_path / "report.html"
    assert main(["report", str(make_sweep(tmp_path)), "--html", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    # a point the page's data does not know: its script throws before it marks the page ready
    page.write_text(text.replace('<g id="point-trainable_params-0"', '<g id="point-trainable_params-99"'), "utf-8")
    check = report_browser.check_page(page)
    assert not check.ready and any("Uncaught" in line for line in check.console)
    assert report_browser.main([str(page)]) == 1
