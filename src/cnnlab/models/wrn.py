"""Wide residual networks (Zagoruyko & Komodakis 2016), WRN-d-k; WRN-68-3 was in the lecture's
2016 ImageNet-winning ensemble (Ryu, ch. 3, "2016 ImageNet Challenge ensemble").

    3x3 conv (16) -> 3 stages of n = (d - 4) / 6 wide basic blocks, widths 16k, 32k, 64k
    -> BN -> ReLU -> global average pool -> fc

A wide basic block is the pre-activation basic block (BN-ReLU-3x3 conv, twice) with optional
dropout between the two convs (their Fig. 1d, Sec. 2.3: 0.3 on CIFAR); a block that changes
shape has a 1x1 conv shortcut fed with the pre-activated input, as in the authors' code. The
paper's depths are d = 6n + 4 (WRN-28-10: n = 4 blocks per stage, 10x the width of ResNet's
16-32-64 channels).
"""
from __future__ import annotations

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.blocks import NormLayer
from cnnlab.models.registry import register
from cnnlab.models.resnet import ResNet


def wrn(
    *,
    depth: int,
    width: int,
    dropout: float = 0.0,
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> nn.Module:
    """WRN-``depth``-``width`` for 32x32 inputs (any size works: the pool is global)."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise CnnlabError(
            f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...); received depth={depth}"
        )
    if width < 1:
        raise CnnlabError(f"WRN width must be a positive integer; received width={width}")
    n = (depth - 4) // 6
    return ResNet(block="basic", layers=[n, n, n], widths=[16 * width, 32 * width, 64 * width],
                  stem="cifar", stem_width=16, version="2", dropout=dropout,
                  num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer)


# The paper rounds (36.5M, Table 4); 36,479,194 is this construction's count at 10 classes,
# the same as the authors' released code.
register("wrn-28-10", family="WRN", paper="Zagoruyko & Komodakis 2016, Wide residual networks (BMVC)",
         year=2016, input_size=(3, 32, 32), num_classes=10, params=36_479_194,
         defaults={"depth": 28, "width": 10})(wrn)
