"""ResNet (He et al. 2015/2016): the ImageNet networks, the CIFAR networks, and v1 / v1.5 / v2.

    stem -> layer1 -> layer2 -> ... -> [BN -> ReLU, v2 only] -> global average pool -> fc

ImageNet stem: 7x7/2 conv -> BN -> ReLU -> 3x3/2 max pool. CIFAR stem: 3x3/1 conv -> BN -> ReLU,
no pool (Ryu, ch. 3, "ResNet18 for cifar10"). Each stage halves the grid in its first block
(stride 2), except the first stage, which keeps it.

``version`` (Ryu, ch. 3, "ResNet v1.5", "ResNet v2"):

- ``"1"``: a downsampling bottleneck strides its first 1x1 conv (He et al. 2016, the original).
- ``"1.5"`` (default): the stride moves to the 3x3, because a strided 1x1 "simply ignores 75% of
  the neurons"; the lecture recommends it. Basic blocks have no 1x1, so v1 and v1.5 coincide.
- ``"2"``: pre-activation (He et al. 2016b, "Identity mappings in deep residual networks"):
  BN-ReLU-conv inside the branch, nothing after the addition, and a final BN-ReLU before the
  pool. Interpretation: the stem keeps only its conv (and max pool) since every block now
  normalizes its own input (as in Keras' ResNetV2); the v2 stride follows ``"1.5"``.

The CIFAR family ``resnet20 ... resnet110`` is He et al. 2016's 6n+2 networks (Sec. 4.2): 16-32-64
channels, n basic blocks per stage, option A shortcuts (zero-padding, no parameters).
``shortcut=False`` removes every skip connection, giving the "noshort" plain networks of Li et al.
2018's loss-landscape figure (the optimization notes and Saremi's lecture).

    >>> from cnnlab import models
    >>> m = models.create("resnet20", num_classes=10)            # 269,722 parameters
    >>> m = models.create("resnet50", version="1")               # stride in the first 1x1
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.blocks import (
    SHORTCUT_KINDS,
    BasicBlock,
    Bottleneck,
    NormLayer,
    PreActBasicBlock,
    PreActBottleneck,
    he_init,
)
from cnnlab.models.registry import register

VERSIONS = ("1", "1.5", "2")
BLOCKS = ("basic", "bottleneck")
STEMS = ("imagenet", "cifar")
EXPANSION = {"basic": 1, "bottleneck": 4}  # block output channels per stage width


def check_version(version: str) -> str:
    """Normalize ``version`` to one of ``VERSIONS`` (1.5 and "1.5" are the same)."""
    normalized = str(version)
    if normalized not in VERSIONS:
        raise CnnlabError(f"unknown ResNet version {version!r}; valid: {', '.join(VERSIONS)}")
    return normalized


class ResNet(nn.Module):
    """A residual network described by data: block type, blocks per stage, stage widths.

    Args:
        block: ``"basic"`` (two 3x3) or ``"bottleneck"`` (1x1-3x3-1x1, output 4x the width).
        layers: blocks per stage, e.g. ``[3, 4, 6, 3]`` for ResNet-34/50.
        widths: each stage's width ("planes"), e.g. ``[64, 128, 256, 512]``.
        stem: ``"imagenet"`` (7x7/2 conv + max pool) or ``"cifar"`` (3x3/1 conv, no pool).
        stem_width: output channels of the stem conv.
        version: ``"1"``, ``"1.5"`` or ``"2"``, see the module docstring.
        groups, width_per_group: the ResNeXt cardinality C and bottleneck width d per group
            (``groups=32, width_per_group=4`` is 32x4d); 1 and 64 give the plain ResNet.
        se_ratio: add a squeeze-and-excitation module with this reduction to every block.
        shortcut: ``False`` drops every skip connection (the "noshort" plain network).
        shortcut_kind: ``"projection"`` (option B) or ``"zeropad"`` (option A).
        dropout: dropout between the two convs of a pre-activation basic block (WRN).
        zero_init_residual: start every residual branch at zero (Goyal et al. 2017).
    """

    def __init__(
        self,
        *,
        block: str,
        layers: Sequence[int],
        widths: Sequence[int],
        stem: str = "imagenet",
        stem_width: int = 64,
        version: str = "1.5",
        groups: int = 1,
        width_per_group: int = 64,
        se_ratio: int | None = None,
        shortcut: bool = True,
        shortcut_kind: str = "projection",
        dropout: float = 0.0,
        zero_init_residual: bool = False,
        num_classes: int = 1000,
        in_channels: int = 3,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.version = check_version(version)
        if block not in BLOCKS:
            raise CnnlabError(f"unknown block {block!r}; valid: {', '.join(BLOCKS)}")
        if stem not in STEMS:
            raise CnnlabError(f"unknown stem {stem!r}; valid: {', '.join(STEMS)}")
        if shortcut_kind not in SHORTCUT_KINDS:
            raise CnnlabError(f"unknown shortcut_kind {shortcut_kind!r}; valid: {', '.join(SHORTCUT_KINDS)}")
        if len(layers) != len(widths) or not layers or min(layers) < 1:
            raise CnnlabError(
                f"layers and widths must be equally long lists of positive counts; "
                f"received layers={list(layers)}, widths={list(widths)}"
            )
        preact = self.version == "2"
        if dropout > 0 and not (preact and block == "basic"):
            raise CnnlabError(
                f"dropout is only used by pre-activation basic blocks (version='2', block='basic'); "
                f"received dropout={dropout} with version={self.version!r}, block={block!r}"
            )

        # Stem. A pre-activation network leaves BN-ReLU to the first block.
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.Identity() if preact else norm_layer(stem_width)
        self.relu = nn.Identity() if preact else nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()

        channels = stem_width
        self.num_stages = len(layers)
        for i, (count, width) in enumerate(zip(layers, widths)):
            stage = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                out_channels = width * EXPANSION[block]
                common = dict(stride=stride, shortcut=shortcut, shortcut_kind=shortcut_kind,
                              se_ratio=se_ratio, norm_layer=norm_layer)
                if block == "basic" and preact:
                    stage.append(PreActBasicBlock(channels, out_channels, dropout=dropout, **common))
                elif block == "basic":
                    stage.append(BasicBlock(channels, out_channels, **common))
                else:
                    # ResNeXt's bottleneck width: d channels per group times C groups (Xie et al.
                    # 2017, Table 1: 32x4d has 128 channels in conv2 of the first stage).
                    mid = int(width * width_per_group / 64) * groups
                    kind = PreActBottleneck if preact else Bottleneck
                    stage.append(kind(channels, mid, out_channels, groups=groups,
                                      stride_in_1x1=self.version == "1", **common))
                channels = out_channels
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))

        # v2 ends with the BN-ReLU that the last block's output has not had yet.
        self.bn_final = norm_layer(channels) if preact else nn.Identity()
        self.relu_final = nn.ReLU() if preact else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # any input size works, 28x28 MNIST included
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        he_init(self, zero_init_residual=zero_init_residual)

    def stages(self) -> list[nn.Sequential]:
        """The stages ``layer1, layer2, ...`` in order."""
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        for stage in self.stages():
            x = stage(x)
        x = self.bn_final(x)
        x = self.relu_final(x)
        x = self.avgpool(x)  # (B, C, 1, 1)
        x = self.flatten(x)  # (B, C)
        return self.fc(x)


_HE = "He et al. 2016, Deep residual learning for image recognition (CVPR)"
_IMAGENET = {  # name: (block, layers, published parameter count at 1000 classes)
    "resnet18": ("basic", [2, 2, 2, 2], 11_689_512),
    "resnet34": ("basic", [3, 4, 6, 3], 21_797_672),
    "resnet50": ("bottleneck", [3, 4, 6, 3], 25_557_032),
    "resnet101": ("bottleneck", [3, 4, 23, 3], 44_549_160),
    "resnet152": ("bottleneck", [3, 8, 36, 3], 60_192_808),
}


def resnet(
    *,
    block: str,
    layers: list[int],
    version: str = "1.5",
    se_ratio: int | None = None,
    zero_init_residual: bool = False,
    num_classes: int = 1000,
    in_channels: int = 3,
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> nn.Module:
    """An ImageNet ResNet: 64-128-256-512 stage widths, 7x7 stem, projection shortcuts (option B)."""
    return ResNet(block=block, layers=layers, widths=[64, 128, 256, 512], version=version,
                  se_ratio=se_ratio, zero_init_residual=zero_init_residual,
                  num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer)


for _name, (_block, _layers, _params) in _IMAGENET.items():
    register(_name, family="ResNet", paper=_HE, year=2015, input_size=(3, 224, 224),
             num_classes=1000, params=_params, defaults={"block": _block, "layers": _layers})(resnet)


def resnet_cifar(
    *,
    layers: list[int],
    widths: list[int],
    shortcut: bool = True,
    shortcut_kind: str = "zeropad",
    version: str = "1.5",
    zero_init_residual: bool = False,
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> nn.Module:
    """A CIFAR ResNet of basic blocks: 3x3 stem of ``widths[0]`` channels, no max pool.

    ``shortcut=False`` gives the plain "noshort" network of the same depth.
    """
    return ResNet(block="basic", layers=layers, widths=widths, stem="cifar", stem_width=widths[0],
                  version=version, shortcut=shortcut, shortcut_kind=shortcut_kind,
                  zero_init_residual=zero_init_residual, num_classes=num_classes,
                  in_channels=in_channels, norm_layer=norm_layer)


# The lecture's ResNet18 for CIFAR10: ResNet18's stages behind a 3x3/1 stem and no max pool.
# Its count (11,173,962 at 10 classes) is this construction's; the lecture gives none.
register("resnet18-cifar", family="ResNet", paper=_HE + ", as adapted to CIFAR10 in the lecture",
         year=2015, input_size=(3, 32, 32), num_classes=10, params=11_173_962,
         defaults={"layers": [2, 2, 2, 2], "widths": [64, 128, 256, 512],
                   "shortcut_kind": "projection"})(resnet_cifar)

# He et al.'s 6n+2 networks (Sec. 4.2, Table 6). The paper gives rounded counts (0.27M, 0.46M,
# 0.66M, 0.85M, 1.7M); the exact counts below are this option-A construction's at 10 classes.
# With option B projections resnet20 would have 272,474 (2,752 more: two 1x1 convs + BN).
_CIFAR = {"resnet20": (3, 269_722), "resnet32": (5, 464_154), "resnet44": (7, 658_586),
          "resnet56": (9, 853_018), "resnet110": (18, 1_727_962)}
for _name, (_n, _params) in _CIFAR.items():
    register(_name, family="ResNet", paper=_HE + ", Sec. 4.2 (CIFAR-10)", year=2015,
             input_size=(3, 32, 32), num_classes=10, params=_params,
             defaults={"layers": [_n, _n, _n], "widths": [16, 32, 64]})(resnet_cifar)
