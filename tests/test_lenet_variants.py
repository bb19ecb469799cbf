"""LeNet-5's activation and pooling choices, and the CSE 471 lecture's d2l LeNet."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnnlab import models
from cnnlab.errors import CnnlabError


def test_default_lenet5_is_unchanged():
    m = models.create("lenet5")
    assert models.count_params(m) == 61_706
    assert sum(isinstance(x, nn.ReLU) for x in m.modules()) == 4
    assert sum(isinstance(x, nn.MaxPool2d) for x in m.modules()) == 2


@pytest.mark.parametrize("activation,cls", [("relu", nn.ReLU), ("sigmoid", nn.Sigmoid), ("tanh", nn.Tanh)])
@pytest.mark.parametrize("pool,pool_cls", [("max", nn.MaxPool2d), ("avg", nn.AvgPool2d)])
def test_activation_and_pool_are_used_everywhere(activation, cls, pool, pool_cls):
    m = models.create("lenet5", activation=activation, pool=pool)
    assert sum(isinstance(x, cls) for x in m.modules()) == 4
    assert sum(isinstance(x, pool_cls) for x in m.modules()) == 2
    assert models.count_params(m) == 61_706
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_unknown_activation_or_pool_is_refused():
    with pytest.raises(CnnlabError, match="valid: relu, sigmoid, tanh"):
        models.create("lenet5", activation="gelu")
    with pytest.raises(CnnlabError, match="valid: max, avg"):
        models.create("lenet5", pool="min")


def test_d2l_lenet_is_sigmoid_avgpool_with_xavier_uniform_weights():
    torch.manual_seed(0)
    m = models.create("lenet5-d2l")
    assert models.count_params(m) == models.info("lenet5-d2l").params == 61_706
    assert sum(isinstance(x, nn.Sigmoid) for x in m.modules()) == 4
    assert sum(isinstance(x, nn.AvgPool2d) for x in m.modules()) == 2
    fc = m.classifier[0]  # 400 -> 120: Xavier's bound sqrt(6 / (fan_in + fan_out))
    bound = math.sqrt(6 / (400 + 120))
    assert fc.weight.abs().max() <= bound
    assert fc.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    # torch's default for this layer would be U(-1/sqrt(400), 1/sqrt(400)): a clearly smaller spread
    assert fc.weight.abs().max() > 1 / math.sqrt(400) * 1.2
