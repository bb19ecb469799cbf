"""The lab's server and state without a browser: one job at a time, knobs, confinement of runs,
saved runs that evaluate, the convolution explained, MNIST-like drawings, Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("starlette", reason="starlette is not installed (pip install 'cnnlab[lab]')")
from conftest import tiny_dataset  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from cnnlab import spec  # noqa: E402
from cnnlab.lab import Knobs, Lab, load_run  # noqa: E402
from cnnlab.lab import views  # noqa: E402
from cnnlab.lab.server import create_app  # noqa: E402

MNIST_SPEC = json.dumps(spec.load("convnetjs-mnist"))


@pytest.fixture
def client(tmp_path):
    ds = tiny_dataset(n_train=256, n_test=64)
    lab = Lab(tmp_path / "runs", datasets={"tiny": ds}, max_steps=None)
    with TestClient(create_app(lab)) as c:
        c.lab, c.ds = lab, ds
        yield c
    lab.shutdown()


def wait_for(predicate, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_second_training_request_is_refused_while_training_and_allowed_after_stop(client):
    assert client.post("/api/model", json={"data": "tiny", "spec": MNIST_SPEC}).status_code == 200
    assert client.post("/api/train/start", json={"lr": 0.02}).json()["state"] == "running"
    r = client.post("/api/train/start", json={})
    assert r.status_code == 409 and "one training job at a time" in r.json()["error"]
    r = client.post("/api/model", json={"data": "tiny", "spec": MNIST_SPEC})
    assert r.status_code == 409 and "stop it first" in r.json()["error"]
    wait_for(lambda: client.lab.job.step >= 2)
    assert client.post("/api/train/pause").json()["state"] == "paused"
    step = client.lab.job.step
    time.sleep(0.5)
    assert client.lab.job.step <= step + 1  # at most the step that was running
    client.post("/api/train/resume")
    wait_for(lambda: client.lab.job.step > step + 1)
    assert client.post("/api/train/stop").json()["state"] == "stopped"
    assert client.post("/api/train/start", json={}).json()["state"] == "running"  # continues the network
    client.post("/api/train/stop")


def test_knobs_take_effect_at_the_next_step(client):
    client.post("/api/model", json={"data": "tiny", "spec": MNIST_SPEC})
    client.post("/api/train/start", json={"lr": 0.01, "batch_size": 16})
    wait_for(lambda: client.lab.job.step >= 1)
    client.post("/api/knobs", json={"lr": 0.003, "batch_size": 8, "optimizer": "adam", "momentum": 0.8})
    wait_for(lambda: client.lab.job.knobs.optimizer == "adam")
    job = client.lab.job
    step = job.step
    wait_for(lambda: job.step >= step + 2)
    client.post("/api/train/stop")
    assert job.knobs == Knobs(lr=0.003, momentum=0.8, batch_size=8, weight_decay=0.0, optimizer="adam")
    assert job.examples % 8 == 0 or job.examples > 16  # batches of 8 after the change
    points = [p for p in client.lab.points if p["kind"] == "train"]
    assert points and points[-1]["lr"] == 0.003


@pytest.mark.parametrize("values,needle", [
    ({"lr": -1}, "learning rate must be in (0, 10]"),
    ({"batch_size": 2.5}, "batch size must be an integer"),
    ({"momentum": 1}, "momentum must be in [0, 1)"),
    ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
    ({"lrate": 1}, "unknown knob 'lrate'"),
])
def test_bad_knobs_are_refused_with_one_sentence(client, values, needle):
    r = client.post("/api/knobs", json=values)
    assert r.status_code == 400 and needle in r.json()["error"]


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/b", ".hidden", "", "x" * 65, 5])
def test_save_and_load_paths_are_confined_to_the_lab_directory(client, name, tmp_path):
    client.post("/api/model", json={"data": "tiny", "spec": MNIST_SPEC})
    for action in ("save", "load"):
        r = client.post(f"/api/{action}", json={"name": name})
        assert r.status_code == 400 and "run name" in r.json()["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_saved_zoo_run_is_evaluated_by_cnnlab_eval_and_loads_back(client):
    from cnnlab.train import evaluate_checkpoint

    assert client.post("/api/model", json={"data": "tiny", "zoo": "lenet5"}).status_code == 200
    client.post("/api/train/start", json={"lr": 0.05})
    wait_for(lambda: client.lab.job.step >= 3)
    client.post("/api/train/stop")
    r = client.post("/api/save", json={"name": "lenet"}).json()
    run = Path(r["saved"])
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "lab.json"]
    assert client.post("/api/save", json={"name": "lenet"}).status_code == 400  # never overwritten
    result = evaluate_checkpoint(run, dataset=client.ds)
    model, _ = load_run(run)
    with torch.inference_mode():
        x = (client.ds.test_x[:4].float() / 255 - 0.1307) / 0.3081
        assert torch.allclose(model(x), client.lab.model.eval()(x), atol=1e-5)
    assert result["model"] == "lenet5" and 0 <= result["test_top1"] <= 1
    assert client.post("/api/load", json={"name": "lenet"}).json()["model"] == "lenet5 (lenet)"
    assert client.get("/api/runs").json()["runs"] == [{"name": "lenet"}]


def test_a_saved_layer_list_run_keeps_its_spec_and_rebuilds(client):
    client.post("/api/model", json={"data": "tiny", "spec": MNIST_SPEC})
    run = Path(client.post("/api/save", json={"name": "spec-run"}).json()["saved"])
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == "tiny" and "spec" in config
    assert json.loads((run / "spec.json").read_text())["layers"] == json.loads(MNIST_SPEC)
    model, state = load_run(run)
    assert state["spec"] == json.loads(MNIST_SPEC) and state["dataset"]["input_size"] == [1, 28, 28]
    for a, b in zip(model.state_dict().values(), client.lab.model.state_dict().values()):
        assert torch.equal(a, b)


def test_table_endpoint_reports_a_misfit_and_a_parse_error_without_failing(client):
    bad = MNIST_SPEC.replace('"pad": 2', '"pad": 0', 1)
    t = client.post("/api/table", json={"text": bad, "data": "tiny"}).json()
    assert [r["fits"] for r in t["rows"]] == [True, True, True, True, False, True]
    assert "layer 4 (pool) doesn't fit" in t["error"]
    t = client.post("/api/table", json={"text": "[{", "data": "tiny"}).json()
    assert t["rows"] == [] and "not valid JSON or YAML" in t["error"]


def test_events_stream_sends_status_and_points(client):
    client.post("/api/model", json={"data": "tiny", "spec": MNIST_SPEC})
    client.lab._on_point({"kind": "train", "step": 1, "loss": 2.0, "acc": 0.1, "time": time.time()})
    client.lab.closed = True  # the stream sends one message and ends
    with client.stream("GET", "/api/events") as r:
        first = next(line for line in r.iter_lines() if line.startswith("data: "))
    msg = json.loads(first[len("data: "):])
    assert msg["status"]["model"] == "layer list" and msg["points"][0]["loss"] == 2.0


def test_conv_explained_dot_product_equals_the_layers_output():
    model = spec.build(json.loads(MNIST_SPEC), input_size=(1, 28, 28), num_classes=10).eval()
    x = torch.randn(1, 1, 28, 28)
    r = views.conv_explained(model, x, layer=1, channel=5, oy=7, ox=3, in_channel=2)
    assert r["agree"] and r["kernel"] == [5, 5] and r["in_channels"] == 8
    assert r["total"] == pytest.approx(r["actual"], abs=1e-4)
    assert sum(t["w"] * t["x"] for t in r["terms"]) == pytest.approx(r["partial_sums"][2], abs=1e-2)
    assert len(r["input"]) == 12 + 2 * 2  # the padded 12x12 map


def test_drawings_are_made_like_mnist_digits():
    pixels = [[0.0] * 100 for _ in range(100)]
    for i in range(10, 90):  # a tall bar near the left edge
        pixels[i][5] = pixels[i][6] = pixels[i][7] = 1.0
    digit = views.mnist_like(pixels).float()
    rows, cols = digit.sum(1), digit.sum(0)
    assert (rows > 0).sum() == 20  # the long side scaled to 20 pixels
    com = (cols * torch.arange(28)).sum() / cols.sum()
    assert abs(float(com) - 13.5) <= 1.0  # centered by its center of mass
    with pytest.raises(Exception, match="the canvas is empty"):
        views.mnist_like([[0.0] * 50 for _ in range(50)])


@pytest.mark.slow
def test_ctrl_c_stops_training_and_leaves_no_half_written_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "lab", "--port", "0", "--dir", str(tmp_path / "runs")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("cnnlab lab: http://127.0.0.1:"), line
        url = line.split()[2]
        import httpx

        with httpx.Client(base_url=url, timeout=60) as c:
            assert c.post("api/model", json={"data": "mnist", "spec": MNIST_SPEC}).status_code == 200
            assert c.post("api/train/start", json={}).status_code == 200
            time.sleep(2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "cnnlab lab: stopped" in err and "Traceback" not in err
    assert list((tmp_path / "runs").iterdir()) == []
