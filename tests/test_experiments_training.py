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


def test_gap_verdict_needs_every_regularizer_to_shrink_the_gap():
    from cnnlab.experiments.regularization import gap_verdict

    gaps = {"none": 0.10, "a": 0.05, "b": 0.08}
    assert gap_verdict(gaps, ("a", "b"))[0] == "holds"
    assert gap_verdict({**gaps, "b": 0.12}, ("a", "b"))[0] == "inconclusive"
    assert gap_verdict({"none": 0.1, "a": 0.2, "b": 0.3}, ("a", "b"))[0] == "does not hold"


def test_tuned_ensemble_weights_pick_the_better_member():
    import torch

    from cnnlab.experiments.ensembles import tune_weights

    y = torch.arange(4).repeat(25)  # 100 labels over 4 classes
    good = torch.nn.functional.one_hot(y, 4).double() * 0.9 + 0.025
    bad = torch.full((100, 4), 0.25, dtype=torch.float64)
    theta = tune_weights([bad, good], y)
    assert theta[1] > 0.9 and abs(sum(theta) - 1) < 1e-9


@pytest.mark.parametrize("name", ["regularization", "ensembles-tta"])
def test_smoke_run_of_more_experiments(tmp_path, name):
    check_files(run_smoke(name, tmp_path / name))


def test_sharp_verdict_needs_sharper_and_worse():
    from cnnlab.experiments.sharpness import sharp_verdict

    small = {"sharpness": 0.1, "test_err": 0.02}
    assert sharp_verdict(small, {"sharpness": 0.5, "test_err": 0.03}) == "holds"
    assert sharp_verdict(small, {"sharpness": 0.05, "test_err": 0.01}) == "does not hold"
    assert sharp_verdict(small, {"sharpness": 0.5, "test_err": 0.01}) == "inconclusive"


def test_filter_normalized_direction_matches_each_filter_norm_and_restores_weights():
    import torch

    from cnnlab import models
    from cnnlab.experiments.sharpness import filter_normalized_direction, loss_along

    model = models.create("lenet5")
    d = filter_normalized_direction(model, torch.Generator().manual_seed(0))
    conv = model.features[0].weight
    torch.testing.assert_close(d[0].flatten(1).norm(dim=1), conv.detach().flatten(1).norm(dim=1))
    assert all((di == 0).all() for di, p in zip(d, model.parameters()) if p.dim() == 1)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    curve = loss_along(model, d, [-1.0, 0.0, 1.0], x, y)
    assert len(curve) == 3 and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("name", ["wide-vs-sharp", "batchnorm"])
def test_smoke_run_of_the_last_experiments(tmp_path, name):
    check_files(run_smoke(name, tmp_path / name))


def test_epoch_double_descent_detector_on_synthetic_curves():
    from cnnlab.experiments.epoch_double_descent import detect_epoch_double_descent

    dd = [0.5, 0.2, 0.1, 0.12, 0.18, 0.2, 0.15, 0.1, 0.08]
    assert detect_epoch_double_descent(dd)[0] == "holds"
    overfit = [0.5, 0.2, 0.1, 0.12, 0.15, 0.18, 0.2, 0.2, 0.21]
    assert detect_epoch_double_descent(overfit)[0] == "does not hold"
    falling = [0.5, 0.3, 0.2, 0.15, 0.12, 0.1]
    assert detect_epoch_double_descent(falling)[0] == "does not hold"


def test_label_noise_flips_the_asked_fraction_to_wrong_classes():
    from cnnlab.experiments.epoch_double_descent import noisy
    from conftest import tiny_dataset

    ds = tiny_dataset(2000, 10)
    out, actual = noisy(ds, 0.2, seed=0)
    changed = (out.train_y != ds.train_y).float().mean().item()
    assert abs(changed - 0.2) < 0.03 and changed == pytest.approx(actual)


def test_smoke_run_of_epoch_double_descent(tmp_path):
    check_files(run_smoke("epoch-double-descent", tmp_path / "edd"))


def test_one_noisy_epoch_is_not_a_second_descent():
    import random

    from cnnlab.experiments.epoch_double_descent import detect_epoch_double_descent

    rng = random.Random(0)
    overfit = [0.6 * 0.8 ** e + 0.1 if e < 14 else 0.1 + 0.002 * (e - 14) for e in range(60)]
    noisy = [v + rng.uniform(-0.02, 0.02) for v in overfit]
    assert detect_epoch_double_descent(noisy)[0] == "does not hold"
