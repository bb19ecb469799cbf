"""GoogLeNet, Inception v1 (Szegedy et al. 2015, "Going deeper with convolutions"), as in the
paper's Table 1 and Fig. 3, and the lecture's CIFAR-10 version (Ryu, ch. 3, "GoogLeNet (Inception
v1)", "GoogLeNet for CIFAR10"; CSE 471, "Modern CNN architectures", "Inception Block").

An inception block runs four branches on the same input and concatenates their maps:
1x1 | 1x1 reduce -> 3x3 | 1x1 reduce -> 5x5 | 3x3 max pool (s=1) -> 1x1 projection, every conv
with a bias and a ReLU. The 1x1 reductions are the lecture's point: they cut the channels before
the expensive 3x3 and 5x5 convs.

    googlenet         3x224x224  conv 7x7/2 -> maxpool -> LRN -> conv 1x1 -> conv 3x3 -> LRN -> maxpool
                                 -> 3a 3b -> maxpool -> 4a 4b 4c 4d 4e -> maxpool -> 5a 5b
                                 -> global avg pool -> dropout 0.4 -> linear
                                 6,998,552 parameters (+6,379,728 for the two auxiliary heads)
    googlenet-cifar   3x32x32    conv 3x3 192 -> 3a 3b -> maxpool -> 4a..4e -> maxpool -> 5a 5b -> ...
                                 (32 -> 16 -> 8; MNIST 28 -> 14 -> 7), 5,864,762 parameters

Every max pool between stages is f=3, s=2 with ``ceil_mode=True`` (Ryu, ch. 3; the paper's Caffe
model rounds up).

The auxiliary classifiers (paper Sec. 5) sit on the outputs of 4a and 4d: 5x5/3 average pool,
1x1 conv 128, linear 1024, dropout 0.7, linear to the classes. Their losses are added with weight
0.3 during training and they are discarded at inference. So with ``aux_logits=True`` the model
returns, in training mode, ``GoogLeNetOutputs(logits, aux1, aux2)`` (a named tuple; use
``googlenet_loss`` for the weighted sum), and in eval mode only the logits tensor.

torchvision's ``googlenet`` has 6,624,904 parameters, not 6,998,552: it puts BatchNorm after
every conv instead of conv biases and LRN (the Inception v2 recipe), and its "5x5" branch keeps a
3x3 kernel, a known bug it preserves for its pretrained weights (pytorch/vision#906). Here the
5x5 branch is a true 5x5 conv, as in the paper's table.

The CIFAR version's figure is not in our text: we replace the ImageNet stem (which shrinks
224 -> 28 before the first inception block) with one 3x3 conv of 192 channels, so 32x32 images
reach 3a at full resolution, and drop LRN (as the lecture's AlexNet-CIFAR10 does).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import register

AUX_WEIGHT = 0.3  # paper Sec. 5: "their loss gets added to the total loss ... with a discount weight"

# The paper's Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTION_TABLE: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def out_channels(name: str) -> int:
    n1x1, _, n3x3, _, n5x5, pool_proj = INCEPTION_TABLE[name]
    return n1x1 + n3x3 + n5x5 + pool_proj


def conv_relu(in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1) -> nn.Sequential:
    """A conv with bias and 'same' padding (for odd kernels), then ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2),
        nn.ReLU(),
    )


class Inception(nn.Module):
    """The inception module with dimension reductions (paper Fig. 2b)."""

    def __init__(self, in_channels: int, n1x1: int, n3x3red: int, n3x3: int, n5x5red: int,
                 n5x5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1 = conv_relu(in_channels, n1x1, 1)
        self.branch2 = nn.Sequential(conv_relu(in_channels, n3x3red, 1), conv_relu(n3x3red, n3x3, 3))
        self.branch3 = nn.Sequential(conv_relu(in_channels, n5x5red, 1), conv_relu(n5x5red, n5x5, 5))
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            conv_relu(in_channels, pool_proj, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1(x)  # (B, n1x1, H, W)
        b2 = self.branch2(x)  # (B, n3x3, H, W)
        b3 = self.branch3(x)  # (B, n5x5, H, W)
        b4 = self.branch4(x)  # (B, pool_proj, H, W)
        return torch.cat([b1, b2, b3, b4], dim=1)  # (B, n1x1 + n3x3 + n5x5 + pool_proj, H, W)


class AuxClassifier(nn.Module):
    """Paper Sec. 5: 5x5/3 avg pool (4x4 on 14x14), 1x1 conv 128 + ReLU, linear 1024 + ReLU,
    dropout 0.7, linear to the classes."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size=5, stride=3)
        self.conv = conv_relu(in_channels, 128, 1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.7)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)  # (B, C, 4, 4)
        x = self.conv(x)  # (B, 128, 4, 4)
        x = self.flatten(x)  # (B, 2048)
        x = self.fc1(x)  # (B, 1024)
        x = self.relu(x)
        x = self.dropout(x)
        return self.fc2(x)  # (B, classes)


class GoogLeNetOutputs(NamedTuple):
    """What a GoogLeNet with auxiliary heads returns in training mode."""

    logits: torch.Tensor
    aux1: torch.Tensor  # the head on inception 4a
    aux2: torch.Tensor  # the head on inception 4d


def googlenet_loss(outputs: GoogLeNetOutputs | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the main head plus 0.3 x each auxiliary head's (paper Sec. 5); a plain
    logits tensor (eval mode, or ``aux_logits=False``) gives plain cross-entropy."""
    if isinstance(outputs, torch.Tensor):
        return F.cross_entropy(outputs, target)
    main = F.cross_entropy(outputs.logits, target)
    aux = F.cross_entropy(outputs.aux1, target) + F.cross_entropy(outputs.aux2, target)
    return main + AUX_WEIGHT * aux


def imagenet_stem(in_channels: int) -> nn.Sequential:
    """Table 1's first rows: conv 7x7/2 64, max pool, LRN, conv 1x1 64, conv 3x3 192, LRN, max pool.

    LRN as in the Caffe model of the paper (size 5, alpha 1e-4, beta 0.75, k 1; torch and Caffe
    both divide alpha by the size)."""
    return nn.Sequential(
        conv_relu(in_channels, 64, 7, stride=2),  # (B, 64, 112, 112)
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),  # (B, 64, 56, 56)
        nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0),
        conv_relu(64, 64, 1),
        conv_relu(64, 192, 3),  # (B, 192, 56, 56)
        nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),  # (B, 192, 28, 28)
    )


def cifar_stem(in_channels: int) -> nn.Sequential:
    """One 3x3 conv to 192 channels at full resolution (32x32, or 28x28 for MNIST)."""
    return conv_relu(in_channels, 192, 3)


class GoogLeNet(nn.Module):
    def __init__(self, stem: nn.Module, *, num_classes: int, aux_logits: bool, dropout: float) -> None:
        super().__init__()
        self.aux_logits = aux_logits
        self.stem = stem

        def block(name: str, in_channels: int) -> Inception:
            return Inception(in_channels, *INCEPTION_TABLE[name])

        self.inception3a = block("3a", 192)
        self.inception3b = block("3b", out_channels("3a"))
        self.maxpool3 = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        self.inception4a = block("4a", out_channels("3b"))
        self.inception4b = block("4b", out_channels("4a"))
        self.inception4c = block("4c", out_channels("4b"))
        self.inception4d = block("4d", out_channels("4c"))
        self.inception4e = block("4e", out_channels("4d"))
        self.maxpool4 = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        self.inception5a = block("5a", out_channels("4e"))
        self.inception5b = block("5b", out_channels("5a"))
        # The paper's 7x7 average pool is global on 224x224 inputs; adaptive keeps it global on 32x32.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(out_channels("5b"), num_classes)
        if aux_logits:
            self.aux1 = AuxClassifier(out_channels("4a"), num_classes)
            self.aux2 = AuxClassifier(out_channels("4d"), num_classes)
        xavier_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        x = self.stem(x)  # (B, 192, 28, 28) on 224x224
        x = self.inception3a(x)  # (B, 256, 28, 28)
        x = self.inception3b(x)  # (B, 480, 28, 28)
        x = self.maxpool3(x)  # (B, 480, 14, 14)
        x = self.inception4a(x)  # (B, 512, 14, 14)
        a1 = x
        x = self.inception4b(x)  # (B, 512, 14, 14)
        x = self.inception4c(x)  # (B, 512, 14, 14)
        x = self.inception4d(x)  # (B, 528, 14, 14)
        a2 = x
        x = self.inception4e(x)  # (B, 832, 14, 14)
        x = self.maxpool4(x)  # (B, 832, 7, 7)
        x = self.inception5a(x)  # (B, 832, 7, 7)
        x = self.inception5b(x)  # (B, 1024, 7, 7)
        x = self.avgpool(x)  # (B, 1024, 1, 1)
        x = self.flatten(x)  # (B, 1024)
        x = self.dropout(x)
        logits = self.fc(x)  # (B, classes)
        if self.aux_logits and self.training:
            return GoogLeNetOutputs(logits, self.aux1(a1), self.aux2(a2))
        return logits


@torch.no_grad()
def xavier_init(model: nn.Module) -> None:
    """Glorot & Bengio 2010 (the "xavier" filler of the paper's Caffe model) for conv and linear
    weights, zero biases."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def _check(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise CnnlabError(f"dropout must be in [0, 1); received dropout={dropout!r}")


@register("googlenet", family="GoogLeNet", paper="Szegedy et al. 2015", year=2014,
          input_size=(3, 224, 224), num_classes=1000, params=6_998_552 + 6_379_728, aux_params=6_379_728)
def googlenet(*, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = True,
              dropout: float = 0.4) -> nn.Module:
    """GoogLeNet as in the paper; ``aux_logits=False`` drops the two auxiliary heads (6,998,552
    parameters left). In training mode with the heads it returns ``GoogLeNetOutputs``."""
    _check(dropout)
    return GoogLeNet(imagenet_stem(in_channels), num_classes=num_classes, aux_logits=aux_logits,
                     dropout=dropout)


@register("googlenet-cifar", family="GoogLeNet", paper="Szegedy et al. 2015 (lecture's CIFAR10 version)",
          year=2014, input_size=(3, 32, 32), num_classes=10, params=None)
def googlenet_cifar(*, num_classes: int = 10, in_channels: int = 3, aux_logits: bool = False,
                    dropout: float = 0.4) -> nn.Module:
    """Inception blocks 3a-5b after a 3x3 conv stem, for 32x32 (and 28x28) images."""
    _check(dropout)
    return GoogLeNet(cifar_stem(in_channels), num_classes=num_classes, aux_logits=aux_logits,
                     dropout=dropout)
