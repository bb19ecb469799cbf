"""Shift equivariance: exact for a circular conv, broken by stride and pooling by the predicted amount."""
import math

import pytest
import torch
from torch import nn

from cnnlab import inspect, models
from cnnlab.errors import CnnlabError
from cnnlab.inspect.equivariance import layer_strides, shift


def _errors(model, x, shifts):
    r = inspect.shift_equivariance(model, x, shifts)
    return {(row.layer, row.shift): row for row in r.rows}, r


def test_a_single_conv_is_exactly_equivariant_under_circular_shifts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"))
    rows, _ = _errors(model, torch.randn(2, 2, 12, 12), (1, 2, 5))
    assert all(r.exact and r.error < 1e-6 for r in rows.values())
    # zero-filled shifts break it at the border
    z = inspect.shift_equivariance(model, torch.randn(2, 2, 12, 12), (1,), mode="zero")
    assert z.rows[0].error > 1e-3


def _alternating(period_pattern, size=8):
    row = torch.tensor([period_pattern[j % len(period_pattern)] for j in range(size)], dtype=torch.float32)
    return row.expand(size, size).reshape(1, 1, size, size).clone()  # constant down the columns


def test_stride_two_breaks_it_for_odd_shifts_by_exactly_two_on_an_alternating_image():
    conv = nn.Conv2d(1, 1, 1, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)  # plain subsampling
    rows, _ = _errors(nn.Sequential(conv), _alternating([1, -1]), (1, 2))
    assert rows[("0", 1)].stride == (2, 2) and not rows[("0", 1)].exact
    assert rows[("0", 1)].error == pytest.approx(2.0)  # the odd samples (-1) replace the even ones (+1)
    assert rows[("0", 2)].exact and rows[("0", 2)].error == pytest.approx(0.0, abs=1e-7)


def test_max_pooling_adds_invariance_and_breaks_equivariance_by_sqrt_2_on_a_period_4_image():
    pool = nn.Sequential(nn.MaxPool2d(2))
    rows, _ = _errors(pool, _alternating([1, -1]), (1,))
    assert rows[("0", 1)].error == pytest.approx(0.0, abs=1e-7)  # max(1, -1) in either phase: invariant
    rows, _ = _errors(pool, _alternating([1, 1, -1, -1]), (1,))
    assert rows[("0", 1)].error == pytest.approx(math.sqrt(2))  # [1, 1, ...] instead of [1, -1, ...]


def test_lenet_strides_are_read_off_the_feature_maps():
    strides = layer_strides(models.create("lenet5").eval(), torch.zeros(1, 1, 28, 28))
    assert strides == {"features.0": (1, 1), "features.2": (2, 2), "features.3": (2, 2), "features.5": (4, 4)}


def test_logit_change_is_zero_for_no_shift_and_shift_helper_zero_fills():
    model = models.create("lenet5").eval()
    r = inspect.shift_equivariance(model, torch.rand(3, 1, 28, 28), (0, 2))
    assert r.logit_change[0] == 0 and r.prediction_kept[0] == 1 and r.logit_change[2] > 0
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    assert shift(x, 1, 0, "zero")[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [3, 4, 5]]
    with pytest.raises(CnnlabError, match="non-negative whole pixels"):
        inspect.shift_equivariance(model, torch.rand(1, 1, 28, 28), (-1,))
