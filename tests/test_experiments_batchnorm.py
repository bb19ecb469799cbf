"""Batch norm and dropout (Li et al. 2019): the variance-shift measurement and the verdict rule."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnnlab.experiments.base import FAILS, HOLDS, INCONCLUSIVE
from cnnlab.experiments.batchnorm import dropout_bn_net, dropout_bn_verdict, variance_shift
from test_experiments import one_thread  # noqa: F401 (fixture)


def _fit_running_stats(model: nn.Module, x: torch.Tensor) -> None:
    """Running statistics from one batch in train mode (cumulative average: exactly that batch's)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)


def test_no_dropout_means_no_variance_shift():
    torch.manual_seed(0)
    model, x = dropout_bn_net(8, 2, 0.0, 1, 10), torch.randn(256, 1, 16, 16)
    _fit_running_stats(model, x)
    shift = variance_shift(model, x)
    assert len(shift) == 2
    assert shift == pytest.approx([1.0, 1.0], abs=0.03)  # only the batch-vs-running normalization differs
    assert model.training  # the mode is restored


def test_dropout_before_bn_inflates_the_running_variance_by_about_one_over_keep():
    torch.manual_seed(0)
    model, x = dropout_bn_net(8, 2, 0.5, 1, 10), torch.randn(256, 1, 16, 16)
    _fit_running_stats(model, x)
    shift = variance_shift(model, x)
    # the first BN's input is a zero-bias conv of ReLU outputs: dropout(0.5) raises its training
    # variance to 2 E[x^2] - E[x]^2, at least twice the variance for a mean near 0
    assert shift[0] > 1.6
    assert all(s > 1.3 for s in shift)


def test_dropout_bn_verdict_on_synthetic_results():
    assert dropout_bn_verdict(0.96, 0.43, 0.97, 6.6, 0.5).status == HOLDS
    assert dropout_bn_verdict(0.96, 0.97, 0.97, 6.6, 0.5).status == FAILS  # shifted, but no worse
    assert dropout_bn_verdict(0.96, 0.955, 0.97, 6.6, 0.5).status == FAILS  # within the margin
    assert dropout_bn_verdict(0.96, 0.43, 0.97, 1.02, 0.5).status == INCONCLUSIVE  # no visible shift
    assert dropout_bn_verdict(0.96, 0.43, 1.5, 6.6, 0.5).status == INCONCLUSIVE  # shift without dropout too
    assert dropout_bn_verdict(0.96, math.nan, 0.97, 6.6, 0.5).status == INCONCLUSIVE  # diverged
    v = dropout_bn_verdict(0.96, 0.43, 0.97, 6.6, 0.5)
    assert "0.430" in v.numbers and "6.60" in v.numbers
