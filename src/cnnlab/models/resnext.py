"""ResNeXt (Xie et al. 2017): ResNet whose bottleneck 3x3 is a grouped convolution.

The lecture (Ryu, ch. 3, "ResNext") shows three forms of one block and argues they are equivalent:

    (a) C separate paths, each 1x1 (256->d) -> 3x3 (d->d) -> 1x1 (d->256), outputs summed
    (b) C paths of 1x1 -> 3x3, concatenated (C*d channels), then one 1x1 (C*d->256)
    (c) one 1x1 (256->C*d), one 3x3 grouped conv with C groups, one 1x1 (C*d->256)

(c) is what the zoo builds (``blocks.Bottleneck`` with ``groups=C``); ``PathsSumBlock`` (a) and
``PathsConcatBlock`` (b) are written out here as references, and ``copy_grouped_weights`` loads a
grouped block's weights into them, so a test can check that all three compute the same function.
(a) = (b) because a 1x1 conv on a concatenation is the sum of 1x1 convs on the pieces,
[A_1 ... A_C][x_1; ...; x_C] = A_1 x_1 + ... + A_C x_C; (b) = (c) because a grouped conv is the
concatenation of C independent convs. Cardinality C and width d are the ``32x4d`` in the name.
In (a) each path's last 1x1 could carry its own bias; their sum plays the role of (b)'s single
bias (the lecture's remark); here the BN after the sum supplies it, as in the paper's
implementation.
"""
from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.blocks import Bottleneck, NormLayer, conv1x1, conv3x3
from cnnlab.models.registry import register
from cnnlab.models.resnet import ResNet


def resnext(
    *,
    layers: list[int],
    groups: int,
    width_per_group: int,
    version: str = "1.5",
    se_ratio: int | None = None,
    zero_init_residual: bool = False,
    num_classes: int = 1000,
    in_channels: int = 3,
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> nn.Module:
    """An ImageNet ResNeXt: bottleneck stages of cardinality ``groups``, ``width_per_group``
    channels per group in the first stage (doubling each stage)."""
    return ResNet(block="bottleneck", layers=layers, widths=[64, 128, 256, 512], groups=groups,
                  width_per_group=width_per_group, version=version, se_ratio=se_ratio,
                  zero_init_residual=zero_init_residual, num_classes=num_classes,
                  in_channels=in_channels, norm_layer=norm_layer)


_XIE = "Xie et al. 2017, Aggregated residual transformations for deep neural networks (CVPR)"
register("resnext50-32x4d", family="ResNeXt", paper=_XIE, year=2016, input_size=(3, 224, 224),
         num_classes=1000, params=25_028_904,
         defaults={"layers": [3, 4, 6, 3], "groups": 32, "width_per_group": 4})(resnext)
register("resnext101-32x8d", family="ResNeXt", paper=_XIE, year=2016, input_size=(3, 224, 224),
         num_classes=1000, params=88_791_336,
         defaults={"layers": [3, 4, 23, 3], "groups": 32, "width_per_group": 8})(resnext)


class _Path(nn.Sequential):
    """One path of forms (a)/(b): 1x1 (in->d) -> BN -> ReLU -> 3x3 (d->d) -> BN -> ReLU."""

    def __init__(self, in_channels: int, d: int, norm_layer: NormLayer) -> None:
        super().__init__(conv1x1(in_channels, d), norm_layer(d), nn.ReLU(),
                         conv3x3(d, d), norm_layer(d), nn.ReLU())


class PathsSumBlock(nn.Module):
    """Form (a): ``cardinality`` paths, each ending in its own 1x1 back to ``channels``, summed."""

    def __init__(self, channels: int, *, cardinality: int = 32, d: int = 4,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.paths = nn.ModuleList(_Path(channels, d, norm_layer) for _ in range(cardinality))
        self.restores = nn.ModuleList(conv1x1(d, channels) for _ in range(cardinality))
        self.bn = norm_layer(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = sum(restore(path(x)) for path, restore in zip(self.paths, self.restores))
        out = self.bn(out)
        out = out + x
        return self.relu(out)


class PathsConcatBlock(nn.Module):
    """Form (b): ``cardinality`` paths concatenated, then one 1x1 back to ``channels``."""

    def __init__(self, channels: int, *, cardinality: int = 32, d: int = 4,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.paths = nn.ModuleList(_Path(channels, d, norm_layer) for _ in range(cardinality))
        self.restore = conv1x1(cardinality * d, channels)
        self.bn = norm_layer(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([path(x) for path in self.paths], dim=1)  # (B, C*d, H, W)
        out = self.restore(out)
        out = self.bn(out)
        out = out + x
        return self.relu(out)


@torch.no_grad()
def copy_grouped_weights(grouped: Bottleneck, reference: PathsSumBlock | PathsConcatBlock) -> None:
    """Load the weights of a grouped block, form (c), into form (a) or (b): path i gets the i-th
    slice of d channels of conv1, bn1, the grouped conv2 (group i) and bn2, and the matching
    input columns of conv3."""
    cardinality = len(reference.paths)
    d = grouped.conv1.out_channels // cardinality
    assert grouped.conv2.groups == cardinality and grouped.downsample is None
    for i, path in enumerate(reference.paths):
        rows = slice(i * d, (i + 1) * d)
        conv_a, bn_a, _, conv_b, bn_b, _ = path
        conv_a.weight.copy_(grouped.conv1.weight[rows])
        conv_b.weight.copy_(grouped.conv2.weight[rows])  # group i's filters, (d, d, 3, 3)
        for bn_ref, bn in ((bn_a, grouped.bn1), (bn_b, grouped.bn2)):
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn_ref, key).copy_(getattr(bn, key)[rows])
        if isinstance(reference, PathsSumBlock):
            reference.restores[i].weight.copy_(grouped.conv3.weight[:, rows])
    if isinstance(reference, PathsConcatBlock):
        reference.restore.weight.copy_(grouped.conv3.weight)
    reference.bn.load_state_dict(grouped.bn3.state_dict())
