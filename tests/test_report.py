"""``cnnlab report``: one self-contained HTML file, checked in a real headless Chromium."""
import re
import shutil
from pathlib import Path

import pytest

from cnnlab.cli import main
from tests.test_inspect_cli import _one_error_line, run  # noqa: F401  (the module-scoped run fixture)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def report(run, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("report") / "report.html"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_DATA", str(run[1]))
        assert main(["report", str(run[0]), "--out", str(out), "--attack-limit", "64"]) == 0
    return out


def test_report_is_one_self_contained_file_with_every_section(report):
    text = report.read_text()
    for heading in ("Summary", "Learning curves", "Confusion matrix", "Most confused pairs", "Top losses",
                    "First-layer filters", "Feature maps", "Saliency", "Adversarial robustness", "Model summary"):
        assert f">{heading}</h" in text, heading
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', text)) == 8
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert not list(report.parent.glob(".*.tmp"))


def test_report_loads_in_headless_chromium_with_every_image_and_no_console_error(report):
    if not Path(CHROMIUM).is_file() and not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium"),
                                    args=ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: errors.append(f"network request {r.url[:60]}")
                    if not r.url.startswith(("file:", "data:")) else None)
            page.goto(report.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        finally:
            browser.close()
    assert len(images) == 8
    assert all(complete and width > 0 for _, complete, width in images), images
    assert errors == []


def test_report_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")]) == 2
    _one_error_line(capsys, "no such checkpoint or run directory")
    assert not (tmp_path / "r.html").exists()
