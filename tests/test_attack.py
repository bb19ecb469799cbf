"""``cnnlab attack`` end to end on a tiny run; bad ε and steps are refused before anything is written."""
import json

import pytest

from cnnlab.cli import main
from tests.test_inspect_cli import _one_error_line, run  # noqa: F401  (the module-scoped run fixture)


@pytest.fixture
def env(run, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("CNNLAB_DATA", str(run[1]))
    monkeypatch.chdir(tmp_path)
    return run[0]


def test_attack_writes_the_curve_csv_png_and_examples(env, tmp_path, capsys):
    out = tmp_path / "atk"
    assert main(["attack", str(env), "--method", "pgd", "--eps", "0,0.1,0.3", "--steps", "3", "--limit", "40",
                 "--examples", "4", "--out", str(out), "--no-progress"]) == 0
    lines = (out / "robustness.csv").read_text().splitlines()
    assert lines[0] == "eps,accuracy,mean_confidence" and len(lines) == 4
    curve = json.loads((out / "attack.json").read_text())["curve"]
    assert curve[0]["accuracy"] >= curve[-1]["accuracy"]
    assert (out / "robustness.png").is_file() and (out / "examples.png").is_file()
    assert "PGD-3 on 40 test images" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--eps", "0,-0.1"], "--eps is in pixel units of a [0, 1] image and must lie in [0, 1]; received -0.1"),
    (["--eps", "1.5"], "received 1.5"),
    (["--eps", "a,b"], "--eps takes numbers"),
    (["--method", "pgd", "--steps", "0"], "--steps must be at least 1"),
    (["--method", "cw"], "unknown attack 'cw'"),
])
def test_bad_attack_input_is_one_line_and_writes_nothing(env, tmp_path, capsys, argv, message):
    out = tmp_path / "atk"
    assert main(["attack", str(env), "--out", str(out), *argv]) == 2
    _one_error_line(capsys, message)
    assert not out.exists()
