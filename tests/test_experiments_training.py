"""The training experiments (schedules, depth, regularization, ...): verdict rules on synthetic
numbers, and smoke runs on tiny generated data."""
from __future__ import annotations

import pytest

from cnnlab.experiments.depth import degradation
from test_experiments import check_files, one_thread, run_smoke  # noqa: F401 (fixture)


def test_degradation_is_the_deeper_plain_net_training_worse():
    err = {("plain", 8): 0.05, ("plain", 20): 0.12, ("residual", 8): 0.05, ("residual", 20): 0.03}
    assert degradation(err, 8, 20)[0] == "holds"
    err[("plain", 20)] = 0.04
    assert degradation(err, 8, 20)[0] == "does not hold"
    err[("plain", 20)], err[("residual", 20)] = 0.12, 0.10  # both degrade: inconclusive
    assert degradation(err, 8, 20)[0] == "inconclusive"


@pytest.mark.parametrize("name", ["schedules", "depth"])
def test_smoke_run_writes_csv_figures_and_verdict(tmp_path, name):
    check_files(run_smoke(name, tmp_path / name))
