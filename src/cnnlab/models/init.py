"""Weight initialization schemes, selected by name (``create(name, init=...)``, ``cnnlab train --init``).

Ryu, ch. 3, "Weight initialization": for a layer with n_in = C_in f1 f2 inputs and n_out = C_out f1 f2
outputs per weight (conv; n_in, n_out for linear), weights are drawn with

    scheme          distribution            variance                  paper's motivation
    lecun           normal                  1 / n_in                  tanh, forward pass
    xavier-normal   normal                  2 / (n_in + n_out)        tanh, forward and backward
    xavier-uniform  U(-a, a)                2 / (n_in + n_out)        (a = sqrt(6 / (n_in + n_out)))
    he-fan-in       normal                  2 / n_in                  ReLU, forward pass
    he-fan-out      normal                  2 / n_out                 ReLU, backward pass
    torch-default   each module's reset_parameters()  (kaiming_uniform with a=sqrt(5), random biases)

and biases set to 0, as in the original descriptions of Xavier and He. ``torch-default`` is the
lecture's counterpoint: "the default initialization of Linear and Conv2d layers in PyTorch
initializes the biases randomly". Normalization layers (BatchNorm, GroupNorm, LayerNorm) get
weight 1, bias 0 and fresh running statistics under every scheme.

    >>> from torch import nn
    >>> layer = apply_init(nn.Linear(100, 50), "he-fan-in")
    >>> bool((layer.bias == 0).all())
    True
"""
from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from cnnlab.errors import CnnlabError

SCHEMES = ("lecun", "xavier-normal", "xavier-uniform", "he-fan-in", "he-fan-out", "torch-default")

# The weight initializers, as data. ``nonlinearity="linear"`` makes kaiming's gain 1, which is
# LeCun's N(0, 1/n_in); "relu" gives He's gain sqrt(2).
_WEIGHT_INIT: dict[str, Callable[[Tensor], object]] = {
    "lecun": lambda w: nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="linear"),
    "xavier-normal": nn.init.xavier_normal_,
    "xavier-uniform": nn.init.xavier_uniform_,
    "he-fan-in": lambda w: nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu"),
    "he-fan-out": lambda w: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"),
}

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def expected_std(scheme: str, fan_in: int, fan_out: int) -> float:
    """The standard deviation of a weight under ``scheme`` (the table above), for tests and docs."""
    variance = {
        "lecun": 1 / fan_in,
        "xavier-normal": 2 / (fan_in + fan_out),
        "xavier-uniform": 2 / (fan_in + fan_out),
        "he-fan-in": 2 / fan_in,
        "he-fan-out": 2 / fan_out,
    }
    if scheme not in variance:
        raise CnnlabError(f"scheme {scheme!r} has no closed-form std; valid: {', '.join(variance)}")
    return math.sqrt(variance[scheme])


def _is_weighted_layer(module: nn.Module) -> bool:
    """Conv and linear layers, and anything shaped like them (cnnlab.manual's modules): a module
    whose own ``weight`` parameter is a matrix or a filter bank."""
    if isinstance(module, _NORM_LAYERS):
        return False
    weight = module._parameters.get("weight")
    return weight is not None and weight.dim() >= 2


def apply_init(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialize ``model`` in place with ``scheme`` (one of ``SCHEMES``) and return it."""
    if scheme not in SCHEMES:
        raise CnnlabError(f"unknown init scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    for module in model.modules():
        if scheme == "torch-default":
            if hasattr(module, "reset_parameters") and module._parameters:
                module.reset_parameters()
        elif isinstance(module, _NORM_LAYERS):
            module.reset_parameters()  # weight 1, bias 0, running statistics 0 and 1
        elif _is_weighted_layer(module):
            _WEIGHT_INIT[scheme](module.weight)
            if module._parameters.get("bias") is not None:
                nn.init.zeros_(module.bias)
    return model
