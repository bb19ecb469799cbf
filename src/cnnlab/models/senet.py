"""SENet (Hu et al. 2018): residual networks whose blocks reweight their channels.

The squeeze-and-excitation module itself is ``blocks.SqueezeExcite`` (global average pool ->
1x1 conv to C/16 -> ReLU -> 1x1 conv to C -> sigmoid -> scale each channel; Ryu, ch. 3,
"Squeeze-and-excitation"). Every residual block of the zoo takes ``se_ratio``, which puts one on
the residual branch just before the addition (Hu et al. 2018, Fig. 3, "SE-ResNet module"), so
``create("resnet18", se_ratio=16)`` works as well as the registered names here.

Interpretation: the SE-ResNets keep the zoo's default ``version="1.5"`` (stride in the 3x3); the
authors' Caffe SE-ResNet-50 strides the first 1x1 (``version="1"``). The count is the same.
"""
from __future__ import annotations

from torch import nn

from cnnlab.models.blocks import NormLayer
from cnnlab.models.registry import register
from cnnlab.models.resnet import ResNet


def se_resnet(
    *,
    layers: list[int],
    groups: int = 1,
    width_per_group: int = 64,
    se_ratio: int = 16,
    version: str = "1.5",
    zero_init_residual: bool = False,
    num_classes: int = 1000,
    in_channels: int = 3,
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> nn.Module:
    """An ImageNet bottleneck ResNet (or ResNeXt, with ``groups > 1``) with SE in every block."""
    return ResNet(block="bottleneck", layers=layers, widths=[64, 128, 256, 512], groups=groups,
                  width_per_group=width_per_group, se_ratio=se_ratio, version=version,
                  zero_init_residual=zero_init_residual, num_classes=num_classes,
                  in_channels=in_channels, norm_layer=norm_layer)


_HU = "Hu et al. 2018, Squeeze-and-excitation networks (CVPR)"
register("se-resnet50", family="SENet", paper=_HU, year=2017, input_size=(3, 224, 224),
         num_classes=1000, params=28_088_024, defaults={"layers": [3, 4, 6, 3]})(se_resnet)
register("se-resnext50-32x4d", family="SENet", paper=_HU, year=2017, input_size=(3, 224, 224),
         num_classes=1000, params=27_559_896,
         defaults={"layers": [3, 4, 6, 3], "groups": 32, "width_per_group": 4})(se_resnet)
