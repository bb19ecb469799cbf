"""Weight decay vs l2: the equivalences and the difference, on tiny data."""
from __future__ import annotations

from cnnlab.experiments.weight_decay import trajectories
from conftest import tiny_dataset
from test_experiments import check_files, one_thread, run_smoke  # noqa: F401 (fixture)


def test_sgd_weight_decay_equals_the_l2_term_and_adamw_differs():
    r = trajectories(tiny_dataset(128, 32), steps=8, seed=0, hidden=16)
    gap = lambda a, b: ((r[a]["points"] - r[b]["points"]).norm(dim=1).max() / r[a]["points"][-1].norm()).item()
    assert gap("sgd+wd", "sgd+l2") < 1e-12
    assert gap("adam+wd", "adam+l2") < 1e-12
    assert gap("adam+l2", "adamw") > 1e-4


def test_smoke_run_writes_csv_figures_and_verdict(tmp_path):
    result = run_smoke("weight-decay-vs-l2", tmp_path / "wd")
    check_files(result)
    assert result.verdicts[0].status == "holds"
