"""`cnnlab experiment`: the list, and bad input refused in one line with exit 2."""
from __future__ import annotations

import json

from cnnlab.cli import main


def test_list_names_each_experiment_with_claim_source_and_time(capsys):
    assert main(["experiment", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("double-descent", "init", "optimizers", "weight-decay-vs-l2"):
        assert f"{name}\n  claim:" in out
    assert "source: Ryu" in out and "quick about" in out


def test_unknown_name_lists_the_valid_ones(capsys):
    assert main(["experiment", "double-decent", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'double-descent'" in err


def test_seeds_below_one_are_refused(capsys, tmp_path):
    assert main(["experiment", "init", "--seeds", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_out_dir_holding_another_experiment_is_refused(capsys, tmp_path):
    (tmp_path / "experiment.json").write_text(json.dumps({"experiment": "init"}))
    assert main(["experiment", "optimizers", "--quick", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "holds the experiment 'init'" in capsys.readouterr().err


def test_a_dataset_the_experiment_does_not_take_is_refused(capsys, tmp_path):
    assert main(["experiment", "init", "--data", "cifar10", "--out", str(tmp_path / "o")]) == 2
    assert "runs on mnist" in capsys.readouterr().err
