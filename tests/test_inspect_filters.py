"""Filters, feature maps and Gabor fits of first-layer filters."""
import math

import pytest
import torch
from torch import nn

from cnnlab import inspect, models
from cnnlab.errors import CnnlabError
from cnnlab.inspect import plots
from cnnlab.inspect.filters import normalize_each
from cnnlab.inspect.gabor import _coords, gabor


def test_filters_default_to_the_first_conv_and_are_a_detached_copy():
    model = models.create("lenet5")
    w = inspect.filters(model)
    assert w.shape == (6, 1, 5, 5)
    assert torch.equal(w, model.features[0].weight.detach())
    w.zero_()
    assert model.features[0].weight.abs().sum() > 0
    assert inspect.filters(model, "features.3").shape == (16, 6, 5, 5)


def test_a_wrong_layer_name_lists_the_conv_layers():
    with pytest.raises(CnnlabError, match=r"no convolution layer named 'features\.1'.*features\.0, features\.3"):
        inspect.filters(models.create("lenet5"), "features.1")


def test_a_model_without_conv_has_no_filters():
    with pytest.raises(CnnlabError, match="has no convolution layer"):
        inspect.filters(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_activations_record_every_conv_pool_and_linear_output_in_order():
    model = models.create("lenet5").eval()
    x = torch.randn(2, 1, 28, 28)
    maps = inspect.activations(model, x)
    shapes = {k: tuple(v.shape) for k, v in maps.items()}
    assert shapes == {"features.0": (2, 6, 28, 28), "features.2": (2, 6, 14, 14), "features.3": (2, 16, 10, 10),
                      "features.5": (2, 16, 5, 5), "classifier.0": (2, 120), "classifier.2": (2, 84),
                      "classifier.4": (2, 10)}
    assert torch.allclose(maps["classifier.4"], model(x))
    assert list(inspect.activations(model, x, kinds=("conv",))) == ["features.0", "features.3"]
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed


def test_each_filter_is_normalized_on_its_own():
    w = torch.stack([torch.randn(1, 3, 3), 100 * torch.randn(1, 3, 3)])
    n = normalize_each(w)
    for f in n:
        assert f.min() == 0 and f.max() == pytest.approx(1)


def _synthetic_gabor(c1, c2, sigma, omega, theta, phi, size=7):
    x1, x2 = _coords(size, size)
    p = [torch.tensor(v, dtype=torch.float64) for v in (c1, c2, sigma, omega, theta, phi)]
    return gabor(x1, x2, *p).reshape(size, size)


def test_gabor_fit_recovers_a_gabor_function():
    true = (0.4, -0.3, 1.5, 1.2, 0.6, 0.3)
    f = 3.0 * _synthetic_gabor(*true) - 0.2
    fit = inspect.gabor_fit(f[None].float())
    assert fit.r2[0] > 0.99
    a, c1, c2, sigma, omega, theta, phi, b = fit.params[0].tolist()
    assert a == pytest.approx(3.0, rel=0.05) and b == pytest.approx(-0.2, abs=0.05)
    assert sigma == pytest.approx(1.5, rel=0.05) and omega == pytest.approx(1.2, rel=0.05)
    # (theta, phi) and (theta + pi, -phi) describe the same function
    assert min(abs(theta - 0.6), abs(theta - 0.6 - math.pi)) < 0.05


def test_noise_is_not_gabor_like_but_a_noisy_gabor_is():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(8, 1, 5, 5, generator=g)
    fit = inspect.gabor_fit(noise)
    assert fit.fraction_gabor_like(0.8) <= 0.25
    clean = torch.stack([_synthetic_gabor(0, 0, 1.2, 1.5, t, 0.0, size=5) for t in (0.0, 0.8, 1.6, 2.4)])
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    assert inspect.gabor_fit(noisy).fraction_gabor_like(0.8) == 1.0


def test_gabor_fit_refuses_a_bad_shape():
    with pytest.raises(CnnlabError, match="received shape"):
        inspect.gabor_fit(torch.randn(5, 5))


def test_filter_figure_shows_fits_beside_first_layer_filters_and_tiles_deeper_ones(tmp_path):
    w = torch.randn(6, 1, 5, 5)
    fit = inspect.gabor_fit(w, refine_steps=0)
    fig = plots.filter_figure(w, fitted=fit.fitted, r2=fit.r2)
    assert len(fig.axes) == 12
    fig = plots.filter_figure(torch.randn(4, 6, 3, 3))
    assert len(fig.axes) == 24
    plots.save_png(fig, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
