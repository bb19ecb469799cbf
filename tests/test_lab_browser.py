"""The lab page in a real headless Chromium (Debian's package, driven by Playwright for Python).

The server runs in a thread on a free port with a tiny generated dataset; the test builds, trains,
looks inside, explains a convolution, draws a digit, saves the run and evaluates it, and fails on
any console error. A screenshot of each view is saved in the test's tmp directory.
"""
from __future__ import annotations

import json
import shutil
import socket
import statistics
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install 'cnnlab[lab]')")
if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from conftest import tiny_dataset  # noqa: E402

from cnnlab.lab import Lab, load_run  # noqa: E402
from cnnlab.lab.server import make_server  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    ds = tiny_dataset(n_train=512, n_test=128)
    ds.name = "tiny-digits"
    lab = Lab(tmp_path / "runs", datasets={ds.name: ds})
    port = free_port()
    server = make_server(lab, port=port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the lab server did not start"
    yield f"http://127.0.0.1:{port}/", lab, ds
    lab.shutdown()
    server.should_exit = True
    thread.join(10)


def test_lab_page_builds_trains_looks_inside_draws_and_saves_a_run(served, tmp_path):
    url, lab, ds = served
    shots = tmp_path / "screenshots"
    shots.mkdir()
    errors: list[str] = []
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.set_default_timeout(15_000)
        page.goto(url)

        # Build: the shipped convnetjs MNIST list, then an edit that breaks the fit, then back.
        rows = page.locator("#layer-table tbody tr")
        page.wait_for_function("document.querySelectorAll('#layer-table tbody tr').length === 6")
        assert rows.nth(1).locator("td.size").inner_text() == "⌊(24 − 5 + 2·2)/1 + 1⌋ = 24"
        assert rows.nth(1).locator("td.params").inner_text() == "5²·1·8 + 8 = 208"
        original = page.input_value("#spec")
        page.fill("#spec", original.replace('"pad":2', '"pad":0', 1))
        page.wait_for_function("document.querySelector('#layer-table tbody tr:nth-child(2) td.out')"
                               ".textContent === '8×20×20'")
        assert "misfit" in (rows.nth(4).get_attribute("class") or "")  # (10 − 3)/3 + 1 = 3.33
        page.fill("#spec", original)
        page.wait_for_function("document.querySelector('#layer-table tbody tr:nth-child(2) td.out')"
                               ".textContent === '8×24×24'")
        page.screenshot(path=str(shots / "build.png"))

        # Train: the curve grows while the page watches.
        page.click("#build-net")
        page.wait_for_selector("#view-train.active")
        page.fill("#k-lr", "0.05")
        page.dispatch_event("#k-lr", "change")
        page.click("#start")
        page.wait_for_function("window.lab.points.filter(p => p.kind === 'train').length >= 3", timeout=30_000)
        first = page.evaluate("window.lab.points.length")
        page.wait_for_function(f"window.lab.points.length > {first + 2}", timeout=30_000)
        page.wait_for_function("window.lab.points.some(p => p.kind === 'test')", timeout=30_000)
        assert int(page.get_attribute("#loss-chart", "data-points")) >= 3
        page.screenshot(path=str(shots / "train.png"))

        # Look inside, while training goes on.
        page.click("#tabs button[data-view=inside]")
        page.wait_for_function("document.querySelectorAll('#overview .layercol').length === 6")
        assert page.locator("#filters canvas").count() == 8
        page.screenshot(path=str(shots / "inside.png"))

        # The convolution, explained, and the 7x7 widget at stride 3.
        page.click("#tabs button[data-view=conv]")
        page.wait_for_function("document.querySelector('#c-sum').textContent.includes('the same')")
        assert page.inner_text("#c-formula").count("·") == 25  # a 5x5 kernel written out
        page.fill("#w-stride", "3")
        page.dispatch_event("#w-stride", "input")
        assert "don't fit" in page.inner_text("#w-formula")
        page.fill("#w-pad", "1")
        page.dispatch_event("#w-pad", "input")
        assert page.inner_text("#w-formula") == "W_out = ⌊(7 − 3 + 2·1)/3 + 1⌋ = 3"
        page.screenshot(path=str(shots / "conv.png"))

        # Draw a stroke: probabilities that sum to one.
        page.click("#tabs button[data-view=draw]")
        box = page.locator("#pad").bounding_box()
        page.mouse.move(box["x"] + 140, box["y"] + 50)
        page.mouse.down()
        for i in range(1, 11):
            page.mouse.move(box["x"] + 140 + 3 * i, box["y"] + 50 + 18 * i)
        page.mouse.up()
        page.wait_for_selector("#draw-probs[data-sum]")
        assert abs(float(page.get_attribute("#draw-probs", "data-sum")) - 1) < 1e-3
        assert page.locator("#draw-probs .bar").count() == 10
        page.screenshot(path=str(shots / "draw.png"))

        # Keep: stop, save, and the run directory is a regular run.
        page.click("#tabs button[data-view=train]")
        page.click("#stop")
        page.wait_for_function("window.lab.status.state === 'stopped'")
        latencies = page.evaluate("window.lab.stats.latencies")
        page.click("#tabs button[data-view=keep]")
        page.fill("#run-name", "browser-run")
        page.click("#save")
        page.wait_for_function("document.querySelector('#save-info').textContent.startsWith('saved')")
        page.wait_for_selector("#runs li")
        page.screenshot(path=str(shots / "keep.png"))
        browser.close()

    assert not errors, errors
    run = lab.work_dir / "browser-run"
    assert json.loads((run / "spec.json").read_text())["layers"][1]["filters"] == 8
    model, state = load_run(run)
    from cnnlab import data as cdata
    from cnnlab.train.config import TrainConfig
    from cnnlab.train.engine import evaluate

    loader = cdata.BatchLoader(ds.test_x, ds.test_y, batch_size=64, mean=ds.mean, std=ds.std, shuffle=False)
    result = evaluate(model, loader)
    assert result["top1"] > 0.2  # ten classes of bars: chance is 0.1
    if "spec" in TrainConfig.__dataclass_fields__:  # `cnnlab train --spec` support: evaluate as any run
        from cnnlab.train import evaluate_checkpoint

        assert evaluate_checkpoint(run, dataset=ds)["test_top1"] == pytest.approx(result["top1"])
    print(f"\nstep -> curve latency: median {statistics.median(latencies) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms over {len(latencies)} updates; screenshots in {shots}")
