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


def test_he_keeps_relu_cnn_activations_and_small_init_loses_them():
    from cnnlab.experiments.init import build_cnn

    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,))
    model = build_cnn("relu", "he-fan-in", 8, 16)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 8
    fwd, bwd = variances(model, x, y)
    assert len(fwd) == 9 and 0.2 < fwd[-2] / fwd[0] < 5
    fwd, bwd = variances(build_cnn("relu", "small", 8, 16), x, y)
    assert fwd[-2] / fwd[0] < 1e-10


def test_cnn_verdict_needs_matched_kept_and_bad_lost():
    from cnnlab.experiments.init import BAD, MATCHED, cnn_verdict

    kept = {(a, s): (True, 1.0, 1.0) for a in MATCHED for s in MATCHED[a]}
    lost = {(a, s): (False, 1e-20, 1e-20) for a in MATCHED for s in BAD}
    assert cnn_verdict({**kept, **lost}, 10).status == "holds"
    assert cnn_verdict({**kept, **lost, ("relu", "he-fan-out"): (False, 1e-3, 1.0)}, 10).status == "does not hold"
    assert cnn_verdict({**kept, **lost, ("tanh", "large"): (True, 5.0, 5.0)}, 10).status == "does not hold"
