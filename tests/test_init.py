"""cnnlab.models.init: each scheme's empirical weight statistics match its formula (Ryu, ch. 3)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnnlab import models
from cnnlab.errors import CnnlabError
from cnnlab.models.init import SCHEMES, apply_init, expected_std

# Big enough that the sample std is within ~0.5% of the true one (n >= 70k weights).
LAYERS = {
    "linear": (lambda: nn.Linear(1000, 600), 1000, 600),
    "conv": (lambda: nn.Conv2d(64, 128, 3), 64 * 9, 128 * 9),  # n_in = C_in f1 f2, n_out = C_out f1 f2
}
FORMULA_SCHEMES = [s for s in SCHEMES if s != "torch-default"]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("scheme", FORMULA_SCHEMES)
def test_weight_std_matches_the_schemes_formula_and_biases_are_zero(scheme, layer):
    torch.manual_seed(0)
    build, fan_in, fan_out = LAYERS[layer]
    module = apply_init(build(), scheme)
    w = module.weight.detach()
    assert w.std().item() == pytest.approx(expected_std(scheme, fan_in, fan_out), rel=0.03)
    assert abs(w.mean().item()) < 0.05 * w.std().item()
    assert torch.count_nonzero(module.bias) == 0


def test_the_formulas_are_the_lectures():
    assert expected_std("lecun", 100, 7) == pytest.approx(math.sqrt(1 / 100))
    assert expected_std("xavier-normal", 100, 300) == pytest.approx(math.sqrt(2 / 400))
    assert expected_std("he-fan-in", 50, 7) == pytest.approx(math.sqrt(2 / 50))
    assert expected_std("he-fan-out", 7, 50) == pytest.approx(math.sqrt(2 / 50))


def test_xavier_uniform_stays_within_its_bound():
    torch.manual_seed(0)
    module = apply_init(nn.Linear(1000, 600), "xavier-uniform")
    bound = math.sqrt(6 / (1000 + 600))
    assert module.weight.abs().max().item() <= bound
    assert module.weight.abs().max().item() > 0.99 * bound


def test_torch_default_initializes_biases_randomly():
    # Ryu, ch. 3: "the default initialization of Linear and Conv2d layers in PyTorch initializes the
    # biases randomly" - uniform in +-1/sqrt(fan_in), weights kaiming_uniform(a=sqrt(5)).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 128, 3), nn.Flatten(), nn.Linear(1000, 600))
    apply_init(model, "he-fan-in")
    apply_init(model, "torch-default")
    conv, linear = model[0], model[2]
    assert torch.count_nonzero(conv.bias) == 128
    assert linear.bias.abs().max().item() <= 1 / math.sqrt(1000)
    assert linear.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 1000), rel=0.03)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_batchnorm_gets_weight_one_bias_zero_and_fresh_statistics(scheme):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    bn = model[1]
    with torch.no_grad():
        bn.weight.fill_(3.0)
        bn.bias.fill_(2.0)
        bn.running_mean.fill_(5.0)
    apply_init(model, scheme)
    assert torch.equal(bn.weight, torch.ones(8))
    assert torch.equal(bn.bias, torch.zeros(8))
    assert torch.equal(bn.running_mean, torch.zeros(8))


def test_create_passes_init_to_every_layer():
    model = models.create("lenet5", init="xavier-normal")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(torch.count_nonzero(m.bias) == 0 for m in layers)


def test_apply_init_returns_the_model_and_works_on_the_meta_device():
    with torch.device("meta"):
        model = nn.Linear(10, 3)
    assert apply_init(model, "he-fan-out") is model


def test_an_unknown_scheme_is_refused_listing_the_valid_ones():
    with pytest.raises(CnnlabError, match="unknown init scheme 'kaiming'.*" + ".*".join(SCHEMES)):
        apply_init(nn.Linear(3, 2), "kaiming")
    with pytest.raises(CnnlabError, match="'xavier'"):
        models.create("lenet5", init="xavier")
