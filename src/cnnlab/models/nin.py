"""Network in Network (Lin, Chen and Yan 2013): mlpconv blocks and a global average pool instead
of linear layers (Ryu, ch. 3, "Network in Network (NiN)", "NiN for CIFAR10").

An mlpconv block is an f x f conv followed by two 1x1 convs, each with a ReLU: the lecture's
"small MLP applied to every f x f patch" (conv, then Linear_{A2,b2}, then Linear_{A3,b3} acting
on the channels of each pixel). The last block outputs one map per class and a global average
pool turns each map into a logit, so the network has no linear layer at all.

    nin-cifar   3x32x32   mlpconv(5x5: 192,160,96) -> maxpool f3 s2 ceil -> dropout 0.5      32 -> 16
                          mlpconv(5x5: 192,192,192) -> maxpool f3 s2 ceil -> dropout 0.5     16 -> 8
                          mlpconv(3x3: 192,192,classes) -> global average pool
                          (Lin et al. 2013, Sec. 4.2, the CIFAR-10 model of the authors'
                          released configuration; the lecture: max pool f=3, s=2 with ceil_mode
                          "so that (32-3)/2+1 = 15.5 is rounded up to 16", dropout 0.5 after the
                          pools, weight decay 1e-5)
    nin         3x224x224 mlpconv(11x11/4: 96,96,96) -> maxpool               224 -> 54 -> 27
                          mlpconv(5x5: 256,256,256) -> maxpool                 27 -> 13
                          mlpconv(3x3: 384,384,384) -> maxpool -> dropout 0.5  13 -> 6
                          mlpconv(3x3: 1024,1024,classes) -> global average pool
                          (the paper gives no ImageNet table; this follows the authors'
                          released Caffe model "NIN-Imagenet" as we read it: 7,595,176
                          parameters for 1000 classes, registered without a published count)

Where the released CIFAR model used an average pool after the second block, the lecture's slide
uses max pool for both; we follow the lecture. The paper and the released models also put a ReLU
after the last 1x1 conv, which makes every logit >= 0; we leave it out. With it, a class map that
goes negative everywhere stops receiving gradient, and in our check (MNIST, Adam, lr 1e-3) the
network collapsed within 100 steps to all-zero logits, a constant loss of ln 10.
On MNIST, 1x28x28 needs no padding: 28 -> 14 -> 7 -> global average pool.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import register


@dataclass(frozen=True)
class MlpConv:
    kernel_size: int
    channels: tuple[int, int, int]  # the f x f conv, then the two 1x1 convs; 0 = num_classes
    stride: int = 1
    padding: int = 0
    pool: bool = True  # max pool f=3, s=2, ceil_mode after the block
    dropout: bool = False  # dropout after the (pooled) block


NIN_CIFAR = (
    MlpConv(5, (192, 160, 96), padding=2, dropout=True),
    MlpConv(5, (192, 192, 192), padding=2, dropout=True),
    MlpConv(3, (192, 192, 0), padding=1, pool=False),
)
NIN_IMAGENET = (
    MlpConv(11, (96, 96, 96), stride=4),
    MlpConv(5, (256, 256, 256), padding=2),
    MlpConv(3, (384, 384, 384), padding=1, dropout=True),
    MlpConv(3, (1024, 1024, 0), padding=1, pool=False),
)


def mlpconv(in_channels: int, spec: MlpConv, num_classes: int) -> nn.Sequential:
    """conv f x f -> ReLU -> conv 1x1 -> ReLU -> conv 1x1 -> ReLU (the lecture's NiN block); the
    block that outputs the class maps ends at its last conv (see the module docstring)."""
    c1, c2, c3 = (c or num_classes for c in spec.channels)
    layers = [
        nn.Conv2d(in_channels, c1, spec.kernel_size, stride=spec.stride, padding=spec.padding),
        nn.ReLU(),
        nn.Conv2d(c1, c2, kernel_size=1),
        nn.ReLU(),
        nn.Conv2d(c2, c3, kernel_size=1),
    ]
    if spec.channels[-1]:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class NiN(nn.Module):
    def __init__(self, blocks: tuple[MlpConv, ...], *, num_classes: int, in_channels: int,
                 dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for spec in blocks:
            layers.append(mlpconv(channels, spec, num_classes))
            if spec.pool:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
            if spec.dropout:
                layers.append(nn.Dropout(dropout))
            channels = spec.channels[-1] or num_classes
        self.features = nn.Sequential(*layers)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        nin_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, classes, H', W')
        x = self.gap(x)  # (B, classes, 1, 1)
        return self.flatten(x)  # (B, classes)


@torch.no_grad()
def nin_init(model: nn.Module) -> None:
    """He-normal (fan_in) conv weights, zero biases. The paper does not state its initialization
    (the released models draw each layer from a hand-tuned Gaussian); a He-scaled init is the
    lecture's rule for ReLU networks and trains this 9- or 12-conv net from scratch."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)


def _build(blocks: tuple[MlpConv, ...], num_classes: int, in_channels: int, dropout: float) -> NiN:
    if not 0.0 <= dropout < 1.0:
        raise CnnlabError(f"dropout must be in [0, 1); received dropout={dropout!r}")
    return NiN(blocks, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register("nin", family="NiN", paper="Lin et al. 2013", year=2013, input_size=(3, 224, 224),
          num_classes=1000, params=None)
def nin(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    """The ImageNet NiN: four mlpconv blocks, the last with ``num_classes`` maps, global average pool."""
    return _build(NIN_IMAGENET, num_classes, in_channels, dropout)


@register("nin-cifar", family="NiN", paper="Lin et al. 2013 (lecture's CIFAR10 version)", year=2013,
          input_size=(3, 32, 32), num_classes=10, params=None)
def nin_cifar(*, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    """The lecture's CIFAR-10 NiN: three mlpconv blocks, max pools f=3 s=2 with ceil_mode, dropout 0.5."""
    return _build(NIN_CIFAR, num_classes, in_channels, dropout)
