"""Double descent: the detector on synthetic curves, the closed form, and a smoke run."""
from __future__ import annotations

import torch

from cnnlab.experiments.double_descent import detect_double_descent, min_norm_least_squares
from test_experiments import check_files, one_thread, run_smoke  # noqa: F401 (fixture)

X = [100, 200, 400, 800, 1000, 1250, 2000, 4000, 10000]


def test_a_curve_with_a_peak_at_the_threshold_is_double_descent():
    risk = [0.6, 0.5, 0.55, 2.0, 9.0, 1.5, 0.45, 0.35, 0.3]
    status, nums = detect_double_descent(X, risk, threshold=1000)
    assert status == "holds" and nums["peak_at"] == 1000


def test_a_monotone_curve_is_not_double_descent():
    risk = [0.9, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.28]
    assert detect_double_descent(X, risk, threshold=1000)[0] == "does not hold"


def test_a_classical_u_curve_is_not_double_descent():
    risk = [0.9, 0.5, 0.4, 0.45, 0.5, 0.6, 0.8, 1.0, 1.3]
    assert detect_double_descent(X, risk, threshold=1000)[0] == "does not hold"


def test_a_peak_far_from_the_threshold_does_not_count():
    risk = [0.6, 5.0, 0.5, 0.4, 0.4, 0.4, 0.35, 0.3, 0.3]
    assert detect_double_descent(X, risk, threshold=1000)[0] == "does not hold"


def test_min_norm_solution_matches_pinv_on_both_sides_of_the_threshold():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(30, 3, generator=g, dtype=torch.float64)
    for p in (10, 80):
        phi = torch.randn(30, p, generator=g, dtype=torch.float64)
        torch.testing.assert_close(min_norm_least_squares(phi, y), torch.linalg.pinv(phi) @ y)


def test_smoke_run_writes_csv_figures_and_verdict(tmp_path):
    result = run_smoke("double-descent", tmp_path / "dd")
    check_files(result)
    assert {r["part"] for r in result.rows} == {"random-relu-features", "trained-mlp"}
