"""The command line, end to end on a tiny MNIST in the cache format; bad input exits 2, one line."""
import json
import subprocess
import sys

import pytest

from cnnlab.cli import main


def test_train_then_eval_end_to_end(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy:" in printed and str(out) in printed
    assert main(["eval", str(out)]) == 0
    assert "top-1" in capsys.readouterr().out


def test_console_entry_point_runs_as_a_module(tmp_path, data_root):
    proc = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--epochs", "1", "--batch-size", "256",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy:" in proc.stdout
    assert "epoch 1 |" in proc.stderr and "\r" not in proc.stderr  # epoch lines; no progress bar in a pipe


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "resnet"], "unknown model 'resnet'"),
    (["train", "--data", "svhn"], "unknown dataset 'svhn'"),
    (["train", "--optimizer", "lion"], "unknown optimizer 'lion'"),
    (["train", "--lr", "-1"], "learning rate must be positive"),
    (["train", "--epochs", "0"], "epochs must be at least 1"),
    (["train", "--batch-size", "0"], "batch size must be at least 1"),
    (["train", "--resume", "nowhere"], "holds no last.pt"),
    (["train", "--epochs", "x"], "needs an integer"),
    (["eval", "missing-run"], "no such checkpoint or run directory"),
    (["train", "--config", "missing.yaml"], "cannot read the config file"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("cnnlab")]) == 1


def test_argparse_mistakes_are_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cnnlab: error:" in err


def test_corrupt_data_file_is_a_clear_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "mnist.pkl.gz").write_bytes(b"\x1f\x8b broken")
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    assert main(["train", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and "delete it" in err
    assert not (tmp_path / "r" / "last.pt").exists()


def test_default_run_directory_is_numbered_when_taken(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "1", "--no-progress"]) == 0
    assert main(["train", "--epochs", "1", "--no-progress"]) == 0
    assert (tmp_path / "runs" / "lenet5-mnist" / "summary.json").is_file()
    assert (tmp_path / "runs" / "lenet5-mnist-2" / "summary.json").is_file()


def test_zoo_lists_models_with_parameter_counts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    assert main(["zoo", "lenet5", "mlp", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "lenet5" in out and "61,706" in out


def test_zoo_counts_are_cached_checked_and_recounted_when_the_cache_is_bad(tmp_path, monkeypatch, capsys):
    import cnnlab.inspect

    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    assert main(["zoo", "lenet5", "--no-progress"]) == 0
    first = capsys.readouterr().out
    cache, = (tmp_path / "zoo").glob("counts-*.json")
    counted = []
    real = cnnlab.inspect.zoo_table
    monkeypatch.setattr(cnnlab.inspect, "zoo_table", lambda names: counted.extend(names) or real(names))
    assert main(["zoo", "lenet5", "mlp", "--no-progress"]) == 0  # lenet5 from the cache, mlp counted
    assert counted == ["mlp"] and "61,706" in capsys.readouterr().out
    rows = json.loads(cache.read_text())
    for row in rows:
        row["params"] = str(row["params"])  # a tampered cache: each bad row is counted again
    cache.write_text(json.dumps(rows))
    counted.clear()
    assert main(["zoo", "lenet5", "--no-progress"]) == 0
    assert counted == ["lenet5"] and capsys.readouterr().out == first
    cache.write_text("not json")
    counted.clear()
    assert main(["zoo", "lenet5", "--recount", "--no-progress"]) == 0 and counted == ["lenet5"]


def test_lr_find_saves_a_plot_and_prints_a_suggestion(tmp_path, data_root, capsys):
    png = tmp_path / "lr.png"
    assert main(["lr-find", "--steps", "12", "--out", str(png), "--no-progress", "--batch-size", "32"]) == 0
    assert "suggested learning rate" in capsys.readouterr().out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_augment_saves_a_contact_sheet(tmp_path, data_root, capsys):
    png = tmp_path / "sheet.png"
    assert main(["augment", "--augment", "crop:2,cutout:6", "--out", str(png), "--n", "4", "--rows", "2"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["augment", "--augment", "crop:-1", "--out", str(png)]) == 2


def test_eval_of_two_runs_reports_members_and_the_weighted_ensemble(tmp_path, data_root, capsys):
    for seed in ("0", "1"):
        assert main(["train", "--epochs", "1", "--seed", seed, "--out", str(tmp_path / seed), "--no-progress"]) == 0
    capsys.readouterr()
    png = tmp_path / "cm.png"
    assert main(["eval", str(tmp_path / "0"), str(tmp_path / "1"), "--weights", "0.7,0.3", "--tta", "flip",
                 "--confusion", str(png)]) == 0
    out = capsys.readouterr().out
    assert "ensemble" in out and "most confused" in out and png.is_file()
    assert main(["eval", str(tmp_path / "0"), "--weights", "0.5,0.5"]) == 2


def test_eval_top_losses_prints_a_table_and_saves_the_grid_beside_the_run(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-progress", "--limit-batches", "2"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--top-losses", "4"]) == 0
    text = capsys.readouterr().out
    assert "top 4 losses" in text and "predicted" in text
    assert (out / "top-losses.png").read_bytes()[:4] == b"\x89PNG"
    for k in ("0", "1000"):
        assert main(["eval", str(out), "--top-losses", k, "--top-losses-out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("top losses" in err or "--top-losses" in err)
    assert not (tmp_path / "x.png").exists()


def test_train_with_the_manual_backend_runs_end_to_end(tmp_path, data_root, capsys):
    # The shapes are checked on the meta device first, where autocast's state cannot be asked.
    out = tmp_path / "m"
    assert main(["train", "--backend", "manual", "--max-steps", "3", "--out", str(out), "--no-progress"]) == 0
    assert (out / "summary.json").is_file() and "test accuracy" in capsys.readouterr().out
