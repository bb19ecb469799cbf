"""LeNet-5: the lecture's modern instance, and the CSE 471 lecture's d2l-style original.

Ryu, ch. 3: "Modern instances of LeNet5 use ReLU, MaxPool instead of AvgPool, full connection
instead of Gaussian connections, complete C3 connections". CSE 471, "Modern CNN architectures",
keeps LeCun et al.'s sigmoid and average pooling and initializes with Xavier-uniform
(``nn.init.xavier_uniform_`` on every Conv2d and Linear weight, d2l's ``init_cnn``).

    conv 6@5x5 pad 2 -> act -> pool 2 -> conv 16@5x5 -> act -> pool 2 -> FC 120 -> act -> 84 -> act -> classes

On a 1x28x28 input with 10 classes it has 61,706 parameters, whatever the activation and pooling.

    >>> m = lenet5(activation="sigmoid", pool="avg")   # the d2l LeNet, without its init
    >>> from cnnlab import models
    >>> m = models.create("lenet5-d2l")                # sigmoid, avg pool, Xavier-uniform
"""
from __future__ import annotations

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import register

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
POOLS: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class LeNet5(nn.Module):
    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
                 activation: str = "relu", pool: str = "max") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise CnnlabError(f"unknown activation {str(activation)[:50]!r}; valid: {', '.join(ACTIVATIONS)}")
        if pool not in POOLS:
            raise CnnlabError(f"unknown pool {str(pool)[:50]!r}; valid: {', '.join(POOLS)}")
        act, pooling = ACTIVATIONS[activation], POOLS[pool]
        # C1 keeps the size (pad 2), S2 halves it, C3 (5x5, no pad) takes 4 off, S4 halves again.
        flat = (input_size // 2 - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),  # (B, 6, 28, 28)
            act(),
            pooling(2),  # (B, 6, 14, 14)
            nn.Conv2d(6, 16, kernel_size=5),  # (B, 16, 10, 10)
            act(),
            pooling(2),  # (B, 16, 5, 5)
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(16 * flat * flat, 120),
            act(),
            nn.Linear(120, 84),
            act(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = self.flatten(x)
        return self.classifier(x)


@register("lenet5", family="LeNet", paper="LeCun et al. 1998 (modern instance)", year=1998,
          input_size=(1, 28, 28), num_classes=10, params=61_706)
def lenet5(*, num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
           activation: str = "relu", pool: str = "max") -> nn.Module:
    """LeNet-5 for ``in_channels x input_size x input_size`` images (28 for MNIST); ``activation``
    is relu, sigmoid or tanh, ``pool`` max or avg (the defaults are the modern instance)."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                  activation=activation, pool=pool)


@register("lenet5-d2l", family="LeNet", paper="LeCun et al. 1998, as in CSE 471's d2l-style code", year=1998,
          input_size=(1, 28, 28), num_classes=10, params=61_706)
def lenet5_d2l(*, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """Sigmoid activations, average pooling and Xavier-uniform weights (CSE 471, "Modern CNN
    architectures"). Biases keep PyTorch's default initialization, as d2l's ``init_cnn`` leaves them."""
    model = LeNet5(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                   activation="sigmoid", pool="avg")
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight)
    return model
