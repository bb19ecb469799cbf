"""AlexNet (Krizhevsky, Sutskever and Hinton 2012) in the three forms the lectures use (Ryu, ch. 3,
"AlexNet", "AlexNet for ImageNet", "AlexNet CIFAR10").

    name              conv channels            towers  LRN  input     parameters (1000 classes)
    alexnet           64-192-384-256-256       one     no   3x224x224  61,100,840
    alexnet-original  96-256-384-384-256       two     yes  3x227x227  60,965,224
    alexnet-cifar     96-256-384-384-256       one     no   3x32x32    29,978,506 (10 classes)

``alexnet`` is the single-tower layout of torchvision (after Krizhevsky 2014, "One weird
trick"), the network whose split the lecture gives: 2,469,696 conv + 58,631,144 linear
parameters ("Linear layers have too many parameters").

``alexnet-original`` is the 2012 paper's Fig. 2. The two GPU towers are grouped convolutions:
conv2, conv4 and conv5 see only the 48/128/192 maps of their own tower (``groups=2``), while
conv3 and the linear layers connect across both towers. Grouping halves the weights of those
three layers, which is why the original, with wider layers, has fewer parameters (60,965,224 =
2,334,080 conv + 58,631,144 linear) than the single tower; the linear layers are identical. The
paper says "224x224" but its 55x55 first feature map needs 227x227 with no padding
((227 - 11) / 4 + 1 = 55), as the Caffe reference model uses.

``alexnet-cifar`` is the lecture's CIFAR-10 version: "Network not split into 2", "No local
response normalization", overlapping max pool f=3, s=2. The slide's figure is not in the text we
have; we keep the paper's widths, replace the 11x11/4 stem with a 3x3/1 conv for 32x32 images
(32 -> pool 15 -> pool 7 -> pool 3), and keep the 4096-wide classifier with dropout. MNIST
1x28x28 is zero-padded to 32x32 as the lecture pads LeNet's input.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.blocks import PadToSize
from cnnlab.models.registry import register


@dataclass(frozen=True)
class ConvSpec:
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1  # 2 = the paper's two GPU towers
    lrn: bool = False  # local response normalization after the ReLU (paper Sec. 3.3)
    pool: bool = False  # overlapping max pool f=3, s=2 after it (paper Sec. 3.4)
    bias_one: bool = False  # bias initialized to 1 (paper Sec. 5)


@dataclass(frozen=True)
class Variant:
    convs: tuple[ConvSpec, ...]
    final_size: int  # spatial size of the last pool's output on the native input
    hidden: int  # width of the two hidden linear layers
    # torchvision drops out the inputs of fc6 and fc7; the paper (Sec. 4.2, "dropout in the first
    # two fully-connected layers") drops out their outputs, i.e. the inputs of fc7 and fc8.
    dropout_on_fc6_input: bool


VARIANTS: dict[str, Variant] = {
    "single": Variant(
        (
            ConvSpec(64, 11, stride=4, padding=2, pool=True),
            ConvSpec(192, 5, padding=2, pool=True, bias_one=True),
            ConvSpec(384, 3, padding=1),
            ConvSpec(256, 3, padding=1, bias_one=True),
            ConvSpec(256, 3, padding=1, pool=True, bias_one=True),
        ),
        final_size=6, hidden=4096, dropout_on_fc6_input=True,
    ),
    "original": Variant(
        (
            ConvSpec(96, 11, stride=4, lrn=True, pool=True),
            ConvSpec(256, 5, padding=2, groups=2, lrn=True, pool=True, bias_one=True),
            ConvSpec(384, 3, padding=1),
            ConvSpec(384, 3, padding=1, groups=2, bias_one=True),
            ConvSpec(256, 3, padding=1, groups=2, pool=True, bias_one=True),
        ),
        final_size=6, hidden=4096, dropout_on_fc6_input=False,
    ),
    "cifar": Variant(
        (
            ConvSpec(96, 3, padding=1, pool=True),
            ConvSpec(256, 5, padding=2, pool=True),
            ConvSpec(384, 3, padding=1),
            ConvSpec(384, 3, padding=1),
            ConvSpec(256, 3, padding=1, pool=True),
        ),
        final_size=3, hidden=4096, dropout_on_fc6_input=False,
    ),
}


def local_response_norm() -> nn.LocalResponseNorm:
    """The paper's LRN, b = a / (k + alpha * sum_{n neighbours} a^2)^beta with k=2, n=5,
    alpha=1e-4, beta=0.75 (Sec. 3.3). torch divides alpha by n, hence alpha = 5 * 1e-4 here."""
    return nn.LocalResponseNorm(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0)


class AlexNet(nn.Module):
    def __init__(
        self,
        variant: Variant,
        *,
        num_classes: int,
        in_channels: int,
        dropout: float,
        pad_to: int | None = None,
    ) -> None:
        super().__init__()
        self.pad = PadToSize(pad_to) if pad_to else nn.Identity()
        layers: list[nn.Module] = []
        channels = in_channels
        for spec in variant.convs:
            layers.append(nn.Conv2d(channels, spec.out_channels, spec.kernel_size, stride=spec.stride,
                                    padding=spec.padding, groups=spec.groups))
            layers.append(nn.ReLU())
            if spec.lrn:
                layers.append(local_response_norm())
            if spec.pool:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
            channels = spec.out_channels
        self.features = nn.Sequential(*layers)
        # torchvision's adaptive pool: the identity on the native input; lets 224 and 227 both run.
        size, hidden = variant.final_size, variant.hidden
        self.avgpool = nn.AdaptiveAvgPool2d((size, size))
        self.flatten = nn.Flatten()
        fc6 = [nn.Linear(channels * size * size, hidden), nn.ReLU()]
        fc7 = [nn.Linear(hidden, hidden), nn.ReLU()]
        if variant.dropout_on_fc6_input:  # torchvision's order, so its state_dict keys match
            head = [nn.Dropout(dropout), *fc6, nn.Dropout(dropout), *fc7]
        else:
            head = [*fc6, nn.Dropout(dropout), *fc7, nn.Dropout(dropout)]
        self.classifier = nn.Sequential(*head, nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pad(x)
        x = self.features(x)  # (B, 256, 6, 6) on the ImageNet input
        x = self.avgpool(x)
        x = self.flatten(x)  # (B, 256 * 6 * 6)
        return self.classifier(x)


@torch.no_grad()
def krizhevsky_init(model: AlexNet, variant: Variant) -> None:
    """Paper Sec. 5: every weight ~ N(0, 0.01^2); biases 1 in conv2, conv4, conv5 and the hidden
    linear layers ("accelerates the early stages of learning by providing the ReLUs with positive
    inputs"), 0 elsewhere."""
    conv_layers = [m for m in model.features if isinstance(m, nn.Conv2d)]
    linear_layers = [m for m in model.classifier if isinstance(m, nn.Linear)]
    for layer, spec in zip(conv_layers, variant.convs, strict=True):
        nn.init.normal_(layer.weight, mean=0.0, std=0.01)
        nn.init.constant_(layer.bias, 1.0 if spec.bias_one else 0.0)
    for i, layer in enumerate(linear_layers):
        nn.init.normal_(layer.weight, mean=0.0, std=0.01)
        nn.init.constant_(layer.bias, 1.0 if i < len(linear_layers) - 1 else 0.0)


def _build(variant: str, *, num_classes: int, in_channels: int, dropout: float,
           pad_to: int | None = None, paper_init: bool = True) -> AlexNet:
    if not 0.0 <= dropout < 1.0:
        raise CnnlabError(f"dropout must be in [0, 1); received dropout={dropout!r}")
    spec = VARIANTS[variant]
    model = AlexNet(spec, num_classes=num_classes, in_channels=in_channels, dropout=dropout,
                    pad_to=pad_to)
    if paper_init:
        krizhevsky_init(model, spec)
    return model


@register("alexnet", family="AlexNet", paper="Krizhevsky 2014 (single tower, torchvision layout)",
          year=2012, input_size=(3, 224, 224), num_classes=1000, params=61_100_840)
def alexnet(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    """Single-tower AlexNet, 64-192-384-256-256, no LRN (torchvision's layout), paper init."""
    return _build("single", num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register("alexnet-original", family="AlexNet", paper="Krizhevsky et al. 2012", year=2012,
          input_size=(3, 227, 227), num_classes=1000, params=60_965_224)
def alexnet_original(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    """The 2012 network: 96-256-384-384-256, two towers as ``groups=2``, LRN, overlapping pools."""
    return _build("original", num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register("alexnet-cifar", family="AlexNet", paper="Krizhevsky et al. 2012 (lecture's CIFAR10 version)",
          year=2012, input_size=(3, 32, 32), num_classes=10, params=None)
def alexnet_cifar(*, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    """One tower, no LRN, 3x3 stem for 32x32 images (28x28 are padded to 32).

    Initialized with torch's defaults, not the paper's N(0, 0.01): with a 3x3 stem (fan-in 27)
    those small weights shrink the signal about a hundredfold per layer.
    """
    return _build("cifar", num_classes=num_classes, in_channels=in_channels, dropout=dropout,
                  pad_to=32, paper_init=False)
