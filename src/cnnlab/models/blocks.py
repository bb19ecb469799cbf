"""Blocks shared between the residual-era families (ResNet, ResNeXt, SENet, WRN).

    BasicBlock            conv3x3-BN-ReLU-conv3x3-BN (+ shortcut) -> ReLU          ResNet18/34, CIFAR ResNets
    Bottleneck            conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN (+ shortcut) -> ReLU
                          (``groups > 1`` makes it the ResNeXt block)              ResNet50+, ResNeXt
    PreActBasicBlock      BN-ReLU-conv3x3-BN-ReLU-conv3x3 (+ shortcut)             ResNet v2, WRN
    PreActBottleneck      BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1 (+ shortcut)
    SqueezeExcite         global average pool -> 1x1 -> ReLU -> 1x1 -> sigmoid -> scale channels

Every residual block takes ``se_ratio`` (a ``SqueezeExcite`` on the branch, before the addition,
as in Hu et al. 2018, Fig. 3) and ``shortcut`` (``False`` drops the skip connection, giving the
"noshort" plain networks of Li et al. 2018's loss-landscape figure). ``shortcut_kind`` picks how a
block that changes shape gets to the new shape: ``"projection"`` (He et al. 2016 option B, a
strided 1x1 conv, followed by BN in post-activation blocks) or ``"zeropad"`` (option A:
subsample, then pad the new channels with zeros; parameter-free, used for the CIFAR ResNets).

Each block exposes ``branch_end()``, the last layer of its residual branch, so that
``zero_init_residual`` (Goyal et al. 2017) and ``surgery.deepen`` can make the block an identity.
The state_dict names follow torchvision's (``conv1``, ``bn1``, ``downsample``), so that weights
trained there map onto these blocks by name (not checked here: torchvision is not a dependency).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]  # e.g. nn.BatchNorm2d, called with the channel count

SHORTCUT_KINDS = ("projection", "zeropad")


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): reweight each channel by a gate in (0, 1).

    Squeeze is a global average pool; excitation is a 1x1-conv bottleneck (``channels // ratio``)
    ending in a sigmoid (Ryu, ch. 3, "Squeeze-and-excitation"). The 1x1 convs carry biases as in
    the released SENet models, which is what gives SE-ResNet-50 its 28,088,024 parameters.
    """

    def __init__(self, channels: int, *, ratio: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // ratio)
        self.pool = nn.AdaptiveAvgPool2d(1)  # squeeze: (B, C, 1, 1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.gate = nn.Sigmoid()

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel weights, shape (B, C, 1, 1), each in (0, 1)."""
        s = self.pool(x)
        s = self.fc1(s)
        s = self.act(s)
        s = self.fc2(s)
        return self.gate(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gates(x)


class ZeroPadShortcut(nn.Module):
    """He et al. 2016's option A: identity on a subsampled grid, new channels filled with zeros.

    It has no parameters, which is why the CIFAR ResNets (resnet20 ... resnet110) use it: the
    paper's counts (0.27M for ResNet-20) are for this shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        assert out_channels >= in_channels, "option A only ever widens"
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # the grid a stride-s 3x3 conv with pad 1 visits
        zeros = x.new_zeros(x.shape[0], self.extra, x.shape[2], x.shape[3])
        return torch.cat([x, zeros], dim=1)  # (B, out_channels, H/s, W/s)


def conv3x3(in_channels: int, out_channels: int, *, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 conv with padding 1 and no bias (the BN that follows has one)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def make_shortcut(
    in_channels: int, out_channels: int, stride: int, *, kind: str, norm_layer: NormLayer | None
) -> nn.Module | None:
    """The shortcut of a block: ``None`` (identity) when the shape is kept, else a projection
    (1x1 conv, then ``norm_layer`` unless it is ``None``) or ``ZeroPadShortcut``."""
    if in_channels == out_channels and stride == 1:
        return None
    if kind == "zeropad":
        return ZeroPadShortcut(in_channels, out_channels, stride)
    assert kind == "projection", kind
    if norm_layer is None:
        return conv1x1(in_channels, out_channels, stride=stride)
    return nn.Sequential(conv1x1(in_channels, out_channels, stride=stride), norm_layer(out_channels))


def _squeeze_excite(channels: int, se_ratio: int | None) -> nn.Module:
    return nn.Identity() if se_ratio is None else SqueezeExcite(channels, ratio=se_ratio)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN (He et al. 2016, Fig. 2); the lecture's regular and downsampling
    residual block."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        shortcut: bool = True,
        shortcut_kind: str = "projection",
        se_ratio: int | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.conv1 = conv3x3(in_channels, out_channels, stride=stride)
        self.bn1 = norm_layer(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = norm_layer(out_channels)
        self.se = _squeeze_excite(out_channels, se_ratio)
        self.downsample = (
            make_shortcut(in_channels, out_channels, stride, kind=shortcut_kind, norm_layer=norm_layer)
            if shortcut else None
        )
        self.relu2 = nn.ReLU()

    def branch_end(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu1(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.se(out)
        if self.shortcut:
            identity = x if self.downsample is None else self.downsample(x)
            out = out + identity
        return self.relu2(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 restore (He et al. 2016, Fig. 5); with ``groups > 1`` the 3x3 is a
    grouped conv and this is the ResNeXt block, form (c) of Xie et al. 2017, Fig. 3.

    ``stride_in_1x1=True`` is ResNet v1 (the strided 1x1 conv of a downsampling block reads one
    pixel in four, "ignores 75% of the neurons", Ryu, ch. 3); ``False`` is v1.5, stride in the 3x3.
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        out_channels: int,
        *,
        stride: int = 1,
        groups: int = 1,
        stride_in_1x1: bool = False,
        shortcut: bool = True,
        shortcut_kind: str = "projection",
        se_ratio: int | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.shortcut = shortcut
        self.conv1 = conv1x1(in_channels, width, stride=stride_1x1)
        self.bn1 = norm_layer(width)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(width, width, stride=stride_3x3, groups=groups)
        self.bn2 = norm_layer(width)
        self.relu2 = nn.ReLU()
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = norm_layer(out_channels)
        self.se = _squeeze_excite(out_channels, se_ratio)
        self.downsample = (
            make_shortcut(in_channels, out_channels, stride, kind=shortcut_kind, norm_layer=norm_layer)
            if shortcut else None
        )
        self.relu3 = nn.ReLU()

    def branch_end(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu1(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu2(out)
        out = self.conv3(out)
        out = self.bn3(out)
        out = self.se(out)
        if self.shortcut:
            identity = x if self.downsample is None else self.downsample(x)
            out = out + identity
        return self.relu3(out)


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv twice, nothing after the addition (He et al. 2016b, "Identity mappings",
    Fig. 4e; the lecture's ResNet v2). With ``dropout > 0`` it is the wide basic block of
    Zagoruyko & Komodakis 2016 (dropout between the convs, their Fig. 1d).

    When the block changes shape, the shortcut reads the pre-activated input, as in the authors'
    code (fb.resnet.torch ``preresnet.lua``, "both_preact"); an identity shortcut reads ``x``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        shortcut: bool = True,
        shortcut_kind: str = "projection",
        se_ratio: int | None = None,
        dropout: float = 0.0,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.bn1 = norm_layer(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = conv3x3(in_channels, out_channels, stride=stride)
        self.bn2 = norm_layer(out_channels)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(out_channels, out_channels)
        self.se = _squeeze_excite(out_channels, se_ratio)
        # A pre-activation projection is a bare conv: the next block's BN normalizes the sum.
        self.downsample = (
            make_shortcut(in_channels, out_channels, stride, kind=shortcut_kind, norm_layer=None)
            if shortcut else None
        )

    def branch_end(self) -> nn.Module:
        return self.conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.bn1(x)
        pre = self.relu1(pre)
        out = self.conv1(pre)
        out = self.bn2(out)
        out = self.relu2(out)
        out = self.dropout(out)
        out = self.conv2(out)
        out = self.se(out)
        if self.shortcut:
            identity = x if self.downsample is None else self.downsample(pre)
            out = out + identity
        return out


class PreActBottleneck(nn.Module):
    """The pre-activation bottleneck (He et al. 2016b): BN-ReLU before each of the three convs.

    ``stride_in_1x1`` and ``groups`` mean what they mean in ``Bottleneck``.
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        out_channels: int,
        *,
        stride: int = 1,
        groups: int = 1,
        stride_in_1x1: bool = False,
        shortcut: bool = True,
        shortcut_kind: str = "projection",
        se_ratio: int | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.shortcut = shortcut
        self.bn1 = norm_layer(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = conv1x1(in_channels, width, stride=stride_1x1)
        self.bn2 = norm_layer(width)
        self.relu2 = nn.ReLU()
        self.conv2 = conv3x3(width, width, stride=stride_3x3, groups=groups)
        self.bn3 = norm_layer(width)
        self.relu3 = nn.ReLU()
        self.conv3 = conv1x1(width, out_channels)
        self.se = _squeeze_excite(out_channels, se_ratio)
        self.downsample = (
            make_shortcut(in_channels, out_channels, stride, kind=shortcut_kind, norm_layer=None)
            if shortcut else None
        )

    def branch_end(self) -> nn.Module:
        return self.conv3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.bn1(x)
        pre = self.relu1(pre)
        out = self.conv1(pre)
        out = self.bn2(out)
        out = self.relu2(out)
        out = self.conv2(out)
        out = self.bn3(out)
        out = self.relu3(out)
        out = self.conv3(out)
        out = self.se(out)
        if self.shortcut:
            identity = x if self.downsample is None else self.downsample(pre)
            out = out + identity
        return out


RESIDUAL_BLOCKS = (BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck)


def zero_branch_end(block: nn.Module, *, bias: bool = True) -> None:
    """Make the residual branch of ``block`` output zero from the start.

    A BN at the end of the branch gets gamma = 0 (and beta = 0 if ``bias``); a conv there (the
    pre-activation blocks) gets zero weights. With a zero branch a post-activation block computes
    ReLU(x + 0) = x for x >= 0 and a pre-activation block x + 0 = x: the block is an identity.
    """
    end = block.branch_end()
    with torch.no_grad():
        end.weight.zero_()
        if bias and end.bias is not None:
            end.bias.zero_()


@torch.no_grad()
def he_init(model: nn.Module, *, zero_init_residual: bool = False) -> None:
    """He et al. 2015 initialization as the ResNet paper used it (Sec. 3.4, and the authors'
    fb.resnet.torch): conv weights ~ N(0, 2 / fan_out), BN gamma 1 and beta 0, the classifier's
    bias 0 (its weights keep torch's default).

    ``zero_init_residual`` zeroes the gamma of the last BN of every residual branch (Goyal et al.
    2017, Sec. 5.1), so that each block starts as an identity.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, RESIDUAL_BLOCKS):
                zero_branch_end(m, bias=False)


class PadToSize(nn.Module):
    """Zero-pad H and W symmetrically up to ``size`` (a larger input passes through unchanged).

    With ``size=32`` an MNIST digit, 28x28, gets the lecture's padding of 2 on every side.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dh = max(self.size - x.shape[-2], 0)
        dw = max(self.size - x.shape[-1], 0)
        if dh == 0 and dw == 0:
            return x
        return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))  # (B, C, size, size)

    def extra_repr(self) -> str:
        return f"size={self.size}"
