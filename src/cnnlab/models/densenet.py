"""DenseNet (Huang et al. 2017): every layer of a block reads all the feature maps before it.

    stem -> dense block -> transition -> dense block -> ... -> BN -> ReLU -> global pool -> fc

A dense layer is BN-ReLU-1x1 conv (4k channels, the "bottleneck", B) -> BN-ReLU-3x3 conv (k
channels), and its k new maps are concatenated onto its input (Hu, lecture 5, "Each layer takes all
preceding feature-maps as input, which are concatenated together"; k is the growth rate). A
transition is BN-ReLU-1x1 conv-2x2 average pool and keeps ``compression`` (0.5, C) of the
channels. DenseNet-BC is the version with both.

ImageNet stem: 7x7/2 conv (2k channels) -> BN -> ReLU -> 3x3/2 max pool. CIFAR stem
(``densenet-bc-100-12``): one 3x3 conv with 2k channels (the paper's Sec. 3, "Implementation
Details"). The state_dict names follow torchvision (``features.denseblock1.denselayer1.conv1``).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.blocks import NormLayer, he_init
from cnnlab.models.registry import register


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 (``bn_size * growth_rate``) -> BN-ReLU-3x3 (``growth_rate``); returns only
    the new maps, the block concatenates them."""

    def __init__(self, in_channels: int, *, growth_rate: int, bn_size: int, drop_rate: float,
                 norm_layer: NormLayer) -> None:
        super().__init__()
        self.norm1 = norm_layer(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, 1, bias=False)
        self.norm2 = norm_layer(bn_size * growth_rate)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm1(x)
        out = self.relu1(out)
        out = self.conv1(out)
        out = self.norm2(out)
        out = self.relu2(out)
        out = self.conv2(out)
        return self.dropout(out)  # (B, growth_rate, H, W)


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; layer i sees ``in_channels + i * growth_rate`` channels."""

    def __init__(self, num_layers: int, in_channels: int, *, growth_rate: int, bn_size: int,
                 drop_rate: float, norm_layer: NormLayer) -> None:
        super().__init__()
        for i in range(num_layers):
            self[f"denselayer{i + 1}"] = DenseLayer(
                in_channels + i * growth_rate, growth_rate=growth_rate, bn_size=bn_size,
                drop_rate=drop_rate, norm_layer=norm_layer,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.values():
            new = layer(x)
            x = torch.cat([x, new], dim=1)  # (B, C + growth_rate, H, W)
        return x


def transition(in_channels: int, out_channels: int, norm_layer: NormLayer) -> nn.Sequential:
    """BN-ReLU-1x1 conv-2x2 average pool: fewer channels, half the grid."""
    return nn.Sequential(OrderedDict(
        norm=norm_layer(in_channels),
        relu=nn.ReLU(),
        conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
        pool=nn.AvgPool2d(2, stride=2),
    ))


class DenseNet(nn.Module):
    """A DenseNet described by data.

    Args:
        block_config: dense layers per block, e.g. ``[6, 12, 24, 16]`` for DenseNet-121.
        growth_rate: k, the maps each dense layer adds.
        num_init_features: channels of the stem conv (2k in the paper).
        bn_size: the bottleneck 1x1 has ``bn_size * k`` channels (4k in the paper).
        compression: the fraction of channels a transition keeps (theta = 0.5 for -BC).
        stem: ``"imagenet"`` or ``"cifar"``.
        drop_rate: dropout after each dense layer (the paper: 0.2 on CIFAR without augmentation).
    """

    def __init__(
        self,
        *,
        block_config: Sequence[int],
        growth_rate: int,
        num_init_features: int,
        bn_size: int = 4,
        compression: float = 0.5,
        stem: str = "imagenet",
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        in_channels: int = 3,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if not 0 < compression <= 1:
            raise CnnlabError(f"compression must be in (0, 1]; received compression={compression}")
        if stem not in ("imagenet", "cifar"):
            raise CnnlabError(f"unknown stem {stem!r}; valid: imagenet, cifar")
        if stem == "imagenet":
            layers = OrderedDict(
                conv0=nn.Conv2d(in_channels, num_init_features, 7, stride=2, padding=3, bias=False),
                norm0=norm_layer(num_init_features),
                relu0=nn.ReLU(),
                pool0=nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            layers = OrderedDict(conv0=nn.Conv2d(in_channels, num_init_features, 3, padding=1, bias=False))
        channels = num_init_features
        for i, num_layers in enumerate(block_config):
            layers[f"denseblock{i + 1}"] = DenseBlock(
                num_layers, channels, growth_rate=growth_rate, bn_size=bn_size,
                drop_rate=drop_rate, norm_layer=norm_layer,
            )
            channels += num_layers * growth_rate
            if i < len(block_config) - 1:
                out = int(channels * compression)
                layers[f"transition{i + 1}"] = transition(channels, out, norm_layer)
                channels = out
        layers["norm5"] = norm_layer(channels)  # the final BN; "norm5" is torchvision's name for it
        self.features = nn.Sequential(layers)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)
        # The authors' code builds on fb.resnet.torch and initializes as ResNet does.
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.relu(x)
        x = self.avgpool(x)  # (B, C, 1, 1)
        x = self.flatten(x)
        return self.classifier(x)


def densenet(
    *,
    block_config: list[int],
    growth_rate: int,
    num_init_features: int,
    stem: str = "imagenet",
    drop_rate: float = 0.0,
    num_classes: int = 1000,
    in_channels: int = 3,
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> nn.Module:
    """DenseNet-BC: bottleneck 1x1 of 4k channels, transitions with compression 0.5."""
    return DenseNet(block_config=block_config, growth_rate=growth_rate,
                    num_init_features=num_init_features, stem=stem, drop_rate=drop_rate,
                    num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer)


_HUANG = "Huang et al. 2017, Densely connected convolutional networks (CVPR)"
_IMAGENET = {  # name: (block_config, growth rate k, published count at 1000 classes)
    "densenet121": ([6, 12, 24, 16], 32, 7_978_856),
    "densenet169": ([6, 12, 32, 32], 32, 14_149_480),
    "densenet201": ([6, 12, 48, 32], 32, 20_013_928),
    "densenet161": ([6, 12, 36, 24], 48, 28_681_000),
}
for _name, (_config, _k, _params) in _IMAGENET.items():
    register(_name, family="DenseNet", paper=_HUANG, year=2016, input_size=(3, 224, 224),
             num_classes=1000, params=_params,
             defaults={"block_config": _config, "growth_rate": _k, "num_init_features": 2 * _k})(densenet)

# L = 100 layers, k = 12: (100 - 4) / 6 = 16 dense layers in each of 3 blocks (each dense layer is
# two convs). The paper rounds to 0.8M (Table 2); 769,162 is this construction's count at 10 classes.
register("densenet-bc-100-12", family="DenseNet", paper=_HUANG + ", Table 2 (CIFAR)", year=2016,
         input_size=(3, 32, 32), num_classes=10, params=769_162,
         defaults={"block_config": [16, 16, 16], "growth_rate": 12, "num_init_features": 24,
                   "stem": "cifar", "num_classes": 10})(densenet)
