"""VGG (Simonyan and Zisserman 2015): the paper's Table 1, configurations A to E, as data, and the
lecture's 13-layer CIFAR-10 version (Ryu, ch. 3, "VGGNet-CIFAR10"; Hu, lecture 5, the VGG table).

    name        config  weight layers  parameters   (-bn: BatchNorm2d after every conv)
    vgg-a       A       11             132,863,336  alias vgg11   vgg11-bn 132,868,840
    vgg-a-lrn   A-LRN   11             132,863,336  (LRN has no parameters)
    vgg-b       B       13             133,047,848  alias vgg13   vgg13-bn 133,053,736
    vgg-c       C       16             133,638,952  (three of its convs are 1x1)
    vgg-d       D       16             138,357,544  alias vgg16   vgg16-bn 138,365,992
    vgg-e       E       19             143,667,240  alias vgg19   vgg19-bn 143,678,248
    vgg-cifar   B's convs + 3 linear   13             9,935,434  (10 classes)

VGG19 splits into 20,024,384 conv and 123,642,856 linear parameters, the lecture's example of
"Linear layers have too many parameters". Every conv is 3x3 with padding 1 (or 1x1 in C), every
pool is max f=2, s=2, and the classifier is 4096-4096-classes with dropout 0.5 (paper Sec. 2.1,
3.1).

The CIFAR version: the slide says only "13-layer modification of VGGNet for CIFAR10, 3x3 conv
p=1, max pool f=2, s=2"; its figure is not in our text. We read "13 layers" as the paper's
13-weight-layer configuration B with its classifier shrunk to fit 512x1x1 features: ten 3x3 convs
in five pooled blocks (32 -> 1), then linear 512-512-classes with dropout. MNIST 1x28x28 is
zero-padded to 32x32 (five halvings would take 28 to 0).
"""
from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.alexnet import local_response_norm
from cnnlab.models.blocks import PadToSize
from cnnlab.models.registry import register

# The paper's Table 1, one list per column: an int is a 3x3 conv with that many filters ("conv3-64"),
# a (channels, 1) tuple a 1x1 conv ("conv1-256"), "M" a 2x2 max pool, "LRN" local response
# normalization (A-LRN; the paper's Sec. 4.1 finds it does not help).
Layer = int | tuple[int, int] | str
CONFIGS: dict[str, list[Layer]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (256, 1), "M", 512, 512, (512, 1), "M",
          512, 512, (512, 1), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}


def make_features(config: list[Layer], *, in_channels: int, batch_norm: bool) -> nn.Sequential:
    """The convolutional part for one column of Table 1 (conv -> [BN] -> ReLU, as torchvision)."""
    layers: list[nn.Module] = []
    channels = in_channels
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif item == "LRN":
            layers.append(local_response_norm())  # "the normalisation of Krizhevsky et al. (2012)"
        else:
            out, kernel = item if isinstance(item, tuple) else (item, 3)
            layers.append(nn.Conv2d(channels, out, kernel_size=kernel, padding=kernel // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            channels = out
    return nn.Sequential(*layers)


def out_channels(config: list[Layer]) -> int:
    last = [item for item in config if item not in ("M", "LRN")][-1]
    return last[0] if isinstance(last, tuple) else last


class VGG(nn.Module):
    def __init__(
        self,
        config: list[Layer],
        *,
        num_classes: int,
        in_channels: int,
        batch_norm: bool,
        dropout: float,
        hidden: int,
        final_size: int,
        pad_to: int | None = None,
        linear_std: float | None = 0.01,
    ) -> None:
        super().__init__()
        self.pad = PadToSize(pad_to) if pad_to else nn.Identity()
        self.features = make_features(config, in_channels=in_channels, batch_norm=batch_norm)
        # Identity on the native input (224 -> 7x7); other sizes are pooled to the same grid,
        # as torchvision does.
        self.avgpool = nn.AdaptiveAvgPool2d((final_size, final_size))
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(out_channels(config) * final_size * final_size, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        vgg_init(self, linear_std=linear_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pad(x)
        x = self.features(x)  # (B, 512, 7, 7) on 224x224
        x = self.avgpool(x)
        x = self.flatten(x)  # (B, 512 * 7 * 7)
        return self.classifier(x)


@torch.no_grad()
def vgg_init(model: nn.Module, *, linear_std: float | None = 0.01) -> None:
    """torchvision's VGG initialization: conv weights He-normal (fan_out), linear N(0, 0.01^2),
    biases 0, BN gamma 1. ``linear_std=None`` makes the linear layers He-normal (fan_in) too: the
    CIFAR version's 512-wide layers would scale the signal by 0.01 * sqrt(512) ~ 0.23 each with
    N(0, 0.01^2) (the 4096-wide ones by 0.64), and its convs would barely receive a gradient.

    The paper (Sec. 3.1) trained A from N(0, 0.01^2) weights and zero biases, then initialized the
    deeper nets from A's layers, and notes that Glorot & Bengio's random initialization works
    without pre-training; a He-scaled init is that idea for ReLU, and is what makes the lecture's
    remark "good weight initialization is still necessary" concrete.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is None:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            else:
                nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


def _check(config: str, dropout: float) -> None:
    if config not in CONFIGS:
        raise CnnlabError(f"unknown VGG config {config!r}; valid: {', '.join(CONFIGS)}")
    if not 0.0 <= dropout < 1.0:
        raise CnnlabError(f"dropout must be in [0, 1); received dropout={dropout!r}")


_PAPER = "Simonyan & Zisserman 2015"
# (name, config, batch_norm, published count, aliases)
_TABLE = [
    ("vgg-a", "A", False, 132_863_336, ("vgg11",)),
    ("vgg-a-lrn", "A-LRN", False, 132_863_336, ()),
    ("vgg-b", "B", False, 133_047_848, ("vgg13",)),
    ("vgg-c", "C", False, 133_638_952, ()),
    ("vgg-d", "D", False, 138_357_544, ("vgg16",)),
    ("vgg-e", "E", False, 143_667_240, ("vgg19",)),
    ("vgg11-bn", "A", True, 132_868_840, ()),
    ("vgg13-bn", "B", True, 133_053_736, ()),
    ("vgg16-bn", "D", True, 138_365_992, ()),
    ("vgg19-bn", "E", True, 143_678_248, ()),
]


def vgg(
    *,
    config: str = "D",
    num_classes: int = 1000,
    in_channels: int = 3,
    batch_norm: bool = False,
    dropout: float = 0.5,
) -> nn.Module:
    """VGG for 224x224 images; ``config`` is a column of the paper's Table 1 (A, A-LRN, B, C, D, E)."""
    _check(config, dropout)
    return VGG(CONFIGS[config], num_classes=num_classes, in_channels=in_channels,
               batch_norm=batch_norm, dropout=dropout, hidden=4096, final_size=7)


for _name, _config, _bn, _params, _aliases in _TABLE:
    register(_name, family="VGG", paper=_PAPER + (" (+BatchNorm)" if _bn else ""), year=2014,
             input_size=(3, 224, 224), num_classes=1000, params=_params,
             defaults={"config": _config, "batch_norm": _bn}, aliases=_aliases)(vgg)


@register("vgg-cifar", family="VGG", paper=_PAPER + " (lecture's 13-layer CIFAR10 version)",
          year=2014, input_size=(3, 32, 32), num_classes=10, params=None)
def vgg_cifar(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    batch_norm: bool = False,
    dropout: float = 0.5,
    hidden: int = 512,
) -> nn.Module:
    """Configuration B's ten 3x3 convs (32x32 -> 512x1x1), then linear ``hidden``-``hidden``-classes."""
    _check("B", dropout)
    if hidden < 1:
        raise CnnlabError(f"hidden must be a positive integer; received hidden={hidden!r}")
    return VGG(CONFIGS["B"], num_classes=num_classes, in_channels=in_channels, batch_norm=batch_norm,
               dropout=dropout, hidden=hidden, final_size=1, pad_to=32, linear_std=None)
