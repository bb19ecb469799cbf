"""The experiments' common machinery: registry, output directory rules, resume, files and verdict form."""
from __future__ import annotations

import json

import pytest
import torch

from cnnlab import experiments
from cnnlab.errors import CnnlabError
from cnnlab.experiments.base import STATUSES, Verdict, combine
from conftest import tiny_dataset


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_smoke(name, out, **kw):
    return experiments.run(name, out=out, smoke=True, data=tiny_dataset(256, 128), **kw)


def check_files(result):
    assert (result.out / "results.csv").is_file()
    lines = (result.out / "results.csv").read_text().splitlines()
    assert len(lines) >= 2 and len(lines) == len(result.rows) + 1
    verdict = (result.out / "verdict.md").read_text()
    for heading in ("**Claim.**", "**Source.**", "**Measured**", "**Verdict.**", "Overall:"):
        assert heading in verdict
    assert "seed 0" not in verdict.lower().replace("seed(s)", "")
    assert result.status in STATUSES and f"Overall: **{result.status}**" in verdict
    assert result.verdicts and all(v.status in STATUSES for v in result.verdicts)
    assert result.figures and all(f.is_file() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in result.figures)


def test_every_experiment_names_its_claim_source_and_times():
    names = experiments.names()
    assert names[0] == "double-descent"
    for name in names:
        s = experiments.spec(name)
        assert s.claim and s.source and s.quick_time and s.full_time
        assert "seed 0" not in s.source and "issue" not in s.source


def test_unknown_experiment_lists_the_valid_names():
    with pytest.raises(CnnlabError, match="double-descent"):
        experiments.spec("double-decent")


def test_seeds_below_one_are_refused(tmp_path):
    with pytest.raises(CnnlabError, match="seeds"):
        experiments.run("double-descent", out=tmp_path / "x", seeds=0, smoke=True, data=tiny_dataset(64, 64))
    assert not (tmp_path / "x").exists()  # nothing written before the check


def test_out_dir_of_another_experiment_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "experiment.json").write_text(json.dumps({"experiment": "init"}))
    with pytest.raises(CnnlabError, match="holds the experiment 'init'"):
        run_smoke("double-descent", out)
    result = run_smoke("double-descent", out, overwrite=True)
    assert json.loads((out / "experiment.json").read_text())["experiment"] == "double-descent"
    check_files(result)


def test_a_non_empty_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CnnlabError, match="not empty"):
        run_smoke("double-descent", tmp_path)


def test_finished_configurations_are_not_recomputed(tmp_path):
    done = []
    first = run_smoke("double-descent", tmp_path / "dd", progress=done.append)
    marker = next((tmp_path / "dd" / ".done").glob("*rf-N=*"))
    marker.write_text(marker.read_text().replace('"test_risk": ', '"test_risk": 1e6 + 0 * '))  # tamper: invalid JSON
    # A step whose file is unreadable is recomputed; the others are read back.
    again = run_smoke("double-descent", tmp_path / "dd")
    assert [r["test_risk"] for r in again.rows] == pytest.approx([r["test_risk"] for r in first.rows])
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "dd" / ".done").iterdir()}
    run_smoke("double-descent", tmp_path / "dd")
    assert stamp == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "dd" / ".done").iterdir()}


def test_combine_needs_every_part_to_agree():
    holds, fails = Verdict("a", "holds", ""), Verdict("b", "does not hold", "")
    assert combine([holds, holds]) == "holds"
    assert combine([fails]) == "does not hold"
    assert combine([holds, fails]) == "inconclusive"


def test_cifar_absent_says_which_files_go_where(tmp_path, monkeypatch):
    from cnnlab.experiments.base import _require_local

    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    with pytest.raises(CnnlabError, match=r"cifar-10-python.tar.gz .*cifar10"):
        _require_local("cifar10")
