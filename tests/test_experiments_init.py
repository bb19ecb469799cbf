"""Initialization: the variance rule on synthetic curves, the derivation's gain, and a smoke run."""
from __future__ import annotations

import pytest
import torch

from cnnlab.experiments.init import build, gain, preserved, variances
from test_experiments import check_files, one_thread, run_smoke  # noqa: F401 (fixture)


def test_flat_variances_are_preserved_and_geometric_ones_are_not():
    flat = [1.0, 0.9, 1.1, 1.0, 0.8, 5.0]  # the last (classifier) layer is left out
    assert preserved(flat, flat)
    vanishing = [0.5 ** i for i in range(20)]
    assert not preserved(vanishing, [1.0] * 20)
    assert not preserved([1.0] * 20, [4.0 ** -i for i in range(20)][::-1])  # gradients explode going back


def test_the_gain_of_the_matched_scalings_is_one():
    assert gain("relu", "he-fan-in", 256) == pytest.approx(1.0)
    assert gain("tanh", "lecun", 256) == pytest.approx(1.0)
    assert gain("relu", "small", 256) == pytest.approx(256 * 1e-4 / 2)


def test_he_keeps_relu_activations_and_small_init_loses_them():
    torch.manual_seed(0)
    x, y = torch.randn(256, 1, 8, 8), torch.randint(0, 10, (256,))
    fwd, bwd = variances(build("relu", "he-fan-in", 12, 128, 64), x, y)
    assert 0.3 < fwd[-2] / fwd[0] < 3
    fwd, bwd = variances(build("relu", "small", 12, 128, 64), x, y)
    assert fwd[-2] / fwd[0] < 1e-10


def test_smoke_run_writes_csv_figures_and_verdict(tmp_path):
    check_files(run_smoke("init", tmp_path / "init"))
