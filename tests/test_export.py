"""Export to ONNX, safetensors and TorchScript: checked against PyTorch, read back without cnnlab,
metadata, EMA weights, the CLI, and the errors (missing packages, a failed check)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.train import load_model
from cnnlab.train import export as export_mod
from cnnlab.train.checkpoint import load_checkpoint
from cnnlab.train.export import export
from test_predict import write_run


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lenet"
    write_run(out, num_classes=10, meta={"name": "mnist"}, channels_last=True)
    return out


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "resnet20"
    net = write_run(out, model="resnet20", num_classes=4, input_size=(3, 16, 16),
                    meta={"classes": ["a", "b", "c", "d"]})
    g = torch.Generator().manual_seed(0)
    state = load_checkpoint(out / "best.pt")
    for k, v in state["model"].items():  # BN statistics away from (0, 1), so that they matter
        if k.endswith("running_mean"):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
        elif k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
    torch.save(state, out / "best.pt")
    return out


READ_BACK = textwrap.dedent("""
    import json, sys
    import numpy as np, onnxruntime, onnx
    from safetensors import safe_open
    onnx_file, st_file, x_file = sys.argv[1:4]
    x = np.load(x_file)
    session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x})[0]
    props = {p.key: p.value for p in onnx.load(onnx_file).metadata_props}
    with safe_open(st_file, framework="numpy") as f:
        meta = f.metadata()
        sums = {k: float(np.asarray(f.get_tensor(k), dtype=np.float64).sum()) for k in f.keys()}
    print(json.dumps({"logits": logits.tolist(), "onnx_classes": json.loads(props["classes"]),
                      "st_classes": json.loads(meta["classes"]), "st_model": json.loads(meta["config"])["model"],
                      "sums": sums, "cnnlab_imported": "cnnlab" in sys.modules}))
""")


def test_onnx_and_safetensors_load_back_without_cnnlab(lenet_run, tmp_path):
    saved = load_checkpoint(lenet_run / "best.pt")["model"]
    assert not saved["features.3.weight"].is_contiguous()  # channels-last training: safetensors would refuse these
    onnx_result = export(lenet_run, "onnx", tmp_path / "lenet.onnx")
    st_result = export(lenet_run, "safetensors", tmp_path / "lenet.safetensors")
    assert onnx_result["max_abs_diff"] < 1e-4 and onnx_result["bytes"] > 200_000
    model, _ = load_model(lenet_run)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    np.save(tmp_path / "x.npy", x.numpy())
    proc = subprocess.run([sys.executable, "-c", READ_BACK, onnx_result["path"], st_result["path"],
                           str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert not got["cnnlab_imported"]
    with torch.no_grad():
        np.testing.assert_allclose(got["logits"], model(x).numpy(), atol=1e-4)
    assert got["onnx_classes"] == got["st_classes"] == [str(i) for i in range(10)] and got["st_model"] == "lenet5"
    for k, v in model.state_dict().items():
        assert got["sums"][k] == pytest.approx(float(v.double().sum()), rel=1e-6, abs=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load is deprecated in favour of torch.export
def test_resnet_exports_to_onnx_within_tolerance_and_traces_to_torchscript(resnet_run, tmp_path):
    result = export(resnet_run, "onnx", tmp_path)
    assert result["path"] == str(tmp_path / "best.onnx")
    assert 0 <= result["max_abs_diff"] < 1e-4 and result["tolerance"] == 1e-4 * max(1, result["max_abs_logit"])
    ts = export(resnet_run, "torchscript")
    assert ts["path"] == str(resnet_run / "best.torchscript.pt")
    assert ts["method"] == "trace" and "getattr" in ts["script_error"]  # the ResNets do not script
    loaded = torch.jit.load(ts["path"])
    model, _ = load_model(resnet_run)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    extra = {"cnnlab.json": ""}
    torch.jit.load(ts["path"], _extra_files=extra)
    assert json.loads(json.loads(extra["cnnlab.json"])["classes"]) == ["a", "b", "c", "d"]


def test_lenet_is_scripted(lenet_run, tmp_path):
    result = export(lenet_run, "torchscript", tmp_path / "lenet.pt")
    assert result["method"] == "script" and result["max_abs_diff"] < 1e-5


def test_safetensors_metadata_holds_config_dataset_and_classes(resnet_run, tmp_path):
    from safetensors import safe_open

    path = export(resnet_run, "safetensors", tmp_path / "r.safetensors")["path"]
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        assert f.get_tensor("fc.weight").shape == (4, 64)
    dataset = json.loads(meta["dataset"])
    assert json.loads(meta["classes"]) == ["a", "b", "c", "d"] and dataset["input_size"] == [3, 16, 16]
    assert dataset["mean"] == [0.5] * 3 and dataset["preprocess"]["size"] == [16, 16]
    assert json.loads(meta["config"])["model"] == "resnet20" and meta["weights"] == "model"


def test_ema_weights_are_exported_when_asked(tmp_path):
    write_run(tmp_path / "run", ema=True)
    from safetensors.torch import load_file

    own = load_file(export(tmp_path / "run", "safetensors", tmp_path / "own.safetensors")["path"])
    avg = load_file(export(tmp_path / "run", "safetensors", tmp_path / "ema.safetensors", weights="ema")["path"])
    assert not torch.equal(own["features.0.weight"], avg["features.0.weight"])
    ema = load_checkpoint(tmp_path / "run" / "best.pt")["ema"]["weights"]
    assert torch.equal(avg["features.0.weight"], ema["features.0.weight"])


@pytest.mark.parametrize("fmt, module, pip", [
    ("onnx", "onnxruntime", "python -m pip install onnxruntime"),
    ("onnx", "onnx", "python -m pip install onnx"),
    ("safetensors", "safetensors", "python -m pip install safetensors"),
])
def test_a_missing_package_names_the_pip_command_and_writes_nothing(tmp_path, monkeypatch, fmt, module, pip):
    write_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, module, None)  # import fails
    with pytest.raises(CnnlabError, match=f"needs the {module} package.*`{pip}`"):
        export(tmp_path / "run", fmt)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt"]


def test_a_failed_onnx_check_writes_nothing(tmp_path, monkeypatch):
    write_run(tmp_path / "run")
    monkeypatch.setattr(export_mod, "ONNX_TOLERANCE", 0.0)
    with pytest.raises(CnnlabError, match="differ from PyTorch's by up to .*nothing was written"):
        export(tmp_path / "run", "onnx")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt"]


def test_cli_export_reports_the_onnx_difference(tmp_path, capsys):
    write_run(tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {tmp_path / 'm.onnx'}") and "onnxruntime matches PyTorch to" in out
    assert (tmp_path / "m.onnx").is_file()


@pytest.mark.parametrize("argv, message", [
    (["export", "nowhere", "--format", "onnx"], "no such checkpoint or run directory"),
    (["export", "RUN", "--format", "onnx", "--weights", "ema"], "holds no EMA weights"),
])
def test_cli_export_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "RUN")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "RUN").iterdir()) == ["best.pt"]


def test_unknown_format_is_refused():
    with pytest.raises(CnnlabError, match="unknown export format 'tflite'"):
        export("anywhere", "tflite")
    with pytest.raises(SystemExit):
        main(["export", "anywhere", "--format", "tflite"])


def test_the_onnx_limit_grows_with_the_logits_size():
    assert export_mod.tolerance(torch.tensor([[0.5, -0.2]])) == 1e-4
    assert export_mod.tolerance(torch.tensor([[3.0, -2.5e5]])) == pytest.approx(25.0)
