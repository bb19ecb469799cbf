"""Optimizers: the ravine, Reddi et al.'s counterexample, and a smoke run."""
from __future__ import annotations

from cnnlab.experiments.optimizers import crossings, ravine_loss, ravine_path, reddi_run
from test_experiments import check_files, one_thread, run_smoke  # noqa: F401 (fixture)
import torch


def test_crossings_count_sign_changes():
    assert crossings([1, -1, 1, -1]) == 3
    assert crossings([3, 2, 1, 0.5]) == 0


def test_momentum_beats_gradient_descent_in_the_ravine():
    sgd = ravine_path("sgd", {"lr": 0.45, "momentum": 0.0}, 60)
    heavy = ravine_path("sgd", {"lr": 0.3, "momentum": 0.9}, 60)
    assert crossings([p[1] for p in sgd]) >= 30  # bounces across the valley
    assert ravine_loss(torch.tensor(heavy[-1])) < ravine_loss(torch.tensor(sgd[-1])) / 10


def test_adam_drifts_to_the_wrong_end_and_amsgrad_does_not():
    assert sum(reddi_run("adam", 1500)[-30:]) / 30 > 0.5
    assert sum(reddi_run("amsgrad", 1500)[-30:]) / 30 < -0.5


def test_smoke_run_writes_csv_figures_and_verdict(tmp_path):
    result = run_smoke("optimizers", tmp_path / "opt")
    check_files(result)
    assert len(result.figures) == 3
