"""`cnnlab compare` and ``plot_runs``: several runs' metrics.csv on one figure."""
from __future__ import annotations

from cnnlab.cli import main


def fake_run(path, values):
    path.mkdir()
    rows = "\n".join(f"{i + 1},{v},{1 - v}" for i, v in enumerate(values))
    (path / "metrics.csv").write_text("epoch,test_top1,train_loss\n" + rows + "\n")
    return str(path)


def test_compare_draws_several_runs(tmp_path, capsys):
    a, b = fake_run(tmp_path / "a", [0.5, 0.7, 0.8]), fake_run(tmp_path / "b", [0.4, 0.6])
    out = tmp_path / "cmp.png"
    assert main(["compare", a, b, "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert main(["compare", a, b, "--metric", "train_loss", "--label", "x", "--label", "y", "--out", str(out)]) == 0


def test_compare_refuses_missing_runs_columns_and_labels(tmp_path, capsys):
    a = fake_run(tmp_path / "a", [0.5])
    out = str(tmp_path / "c.png")
    assert main(["compare", str(tmp_path / "nope"), "--out", out]) == 2
    assert "holds no metrics.csv" in capsys.readouterr().err
    assert main(["compare", a, "--metric", "val_top1", "--out", out]) == 2
    assert "no column 'val_top1'; it has: epoch, test_top1, train_loss" in capsys.readouterr().err
    assert main(["compare", a, "--label", "x", "--label", "y", "--out", out]) == 2
    assert main(["compare", a, "--out", str(tmp_path / "c.txt")]) == 2
    assert not (tmp_path / "c.png").exists()
