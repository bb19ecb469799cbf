"""LeNet-5 as LeCun, Bottou, Bengio and Haffner published it in 1998, the way the lectures show it
(Hu, lecture 5, "LeNet-5"; Ryu, ch. 3, "LeNet5").

    input 1x32x32 (MNIST 1x28x28 is zero-padded by 2, Ryu, ch. 3: "with p = 2 => 1x32x32")
    C1  conv 6@5x5                  -> 6x28x28     156 parameters
    S2  subsampling 2x2             -> 6x14x14      12   y = f(w * sum(2x2 patch) + b), one w, b per map
    C3  conv 16@5x5, partial table  -> 16x10x10  1,516   Table I: which S2 maps feed each C3 map
    S4  subsampling 2x2             -> 16x5x5       32
    C5  conv 120@5x5                -> 120x1x1  48,120
    F6  linear 84                   -> 84       10,164
    output: Euclidean RBF units ("Gaussian connections"), y_i = sum_j (x_j - w_ij)^2, with fixed
            +-1 prototypes (a 7x12 bitmap of each digit); not trainable, not counted
                                                ------
                                                60,000 trainable parameters

Every C, S and F6 unit is squashed by the paper's scaled tanh f(a) = 1.7159 tanh(2a/3)
(LeCun et al. 1998, Appendix A: f(1) = 1, f(-1) = -1).

The logits are the negative RBF distances, -y_i, so that cross-entropy is the training loss.
That is the paper's discriminative criterion (Sec. II-C, its Eq. 9),
E = y_D + log(e^{-j} + sum_i e^{-y_i}), without the constant "rubbish class" term e^{-j}
(j -> infinity): the second term pushes the wrong classes' distances up, the competition between
classes that the plain criterion (Eq. 8, minimize y_D) lacks. It is sensitive to the step size
(the paper trained with a diagonal Levenberg-Marquardt method): on MNIST, SGD with lr 0.01 and no
momentum, or Adam with lr 1e-3, reach about 80-85% test accuracy within 125 steps of 64 images,
while SGD with lr 0.01 and momentum 0.9 saturated the tanh units and stalled.

Training as in the paper's table (Sec. III-C: 0.95% test error without distortions after 20
passes): the paper runs stochastic diagonal Levenberg-Marquardt, one example per update, with a
global step falling from 0.0005 to 0.00001 over the passes. ``recipes/lenet5-classic-mnist.yaml``
substitutes Adam (also a per-parameter step size) on batches of 64 with a one-cycle schedule over
20 epochs; its header records what it measured. This model fits MNIST slowly: in the measured runs
the training accuracy was still below 99% after 15 epochs, and the last epochs of low learning
rate bring most of the final gain.

    >>> from cnnlab import models
    >>> m = models.create("lenet5-classic")
    >>> models.count_params(m, trainable_only=True)
    60000

``PadToSize``, the lecture's "pad MNIST by 2", also lets the CIFAR-sized models of the zoo run on
1x28x28 images.
"""
from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.blocks import PadToSize
from cnnlab.models.registry import register


class ScaledTanh(nn.Module):
    """f(a) = A tanh(S a) with A = 1.7159 and S = 2/3 (LeCun et al. 1998, Sec. II-B, Appendix A)."""

    def __init__(self, amplitude: float = 1.7159, slope: float = 2 / 3) -> None:
        super().__init__()
        self.amplitude = amplitude
        self.slope = slope
        self.tanh = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.amplitude * self.tanh(self.slope * x)

    def extra_repr(self) -> str:
        return f"amplitude={self.amplitude}, slope={self.slope:.4f}"


class Subsampling(nn.Module):
    """S2/S4: each unit adds the four inputs of its 2x2 window, multiplies by the map's trainable
    coefficient, adds the map's trainable bias and squashes, y = f(w * sum(x) + b) (Hu, lecture 5).

    The window sum is computed as an average (``AvgPool2d``), so ``scale.weight`` holds 4w: the
    same family of functions, written with layers that every backend has. ``scale`` is a
    per-map 1x1 conv (``groups=channels``): exactly one weight and one bias per map.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2)  # sum(x) / 4
        self.scale = nn.Conv2d(channels, channels, kernel_size=1, groups=channels)  # 4w, b
        self.act = ScaledTanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)  # (B, C, H/2, W/2)
        x = self.scale(x)
        return self.act(x)


# Table I of LeCun et al. 1998 (Hu, lecture 5): row = S2 map, column = C3 map, X = connected.
# Maps 0-5 read 3 contiguous S2 maps, 6-11 read 4 contiguous, 12-14 read 4 non-contiguous, and
# 15 reads all 6: 6*(3*25+1) + 9*(4*25+1) + (6*25+1) = 1,516 parameters.
C3_TABLE = (
    "X   XXX  XXXX XX",
    "XX   XXX  XXXX X",
    "XXX   XXX  X XXX",
    " XXX  XXXX  X XX",
    "  XXX  XXXX XX X",
    "   XXX  XXXX XXX",
)


def c3_inputs(table: tuple[str, ...] = C3_TABLE) -> list[list[int]]:
    """For each C3 map, the S2 maps it reads: ``c3_inputs()[0] == [0, 1, 2]``."""
    return [[row for row in range(len(table)) if table[row][col] == "X"] for col in range(len(table[0]))]


class PartialConv(nn.Module):
    """C3: a 5x5 convolution in which output map ``j`` sees only the input maps ``inputs[j]``.

    Output maps with the same number of inputs form one grouped conv over the gathered input
    maps (for Table I: six maps reading 3, nine reading 4, one reading 6, so three convs), so the
    layer holds exactly the connected weights: the paper's 1,516 parameters, where a masked full
    conv would hold 2,416.
    """

    def __init__(self, inputs: list[list[int]], kernel_size: int = 5) -> None:
        super().__init__()
        self.inputs = [list(cols) for cols in inputs]
        fan_ins = sorted({len(cols) for cols in self.inputs})
        # maps[k] = the output maps that read k inputs, in table order
        self.groups = [[j for j, cols in enumerate(self.inputs) if len(cols) == k] for k in fan_ins]
        self.convs = nn.ModuleList(
            nn.Conv2d(k * len(maps), len(maps), kernel_size, groups=len(maps))
            for k, maps in zip(fan_ins, self.groups)
        )
        for i, maps in enumerate(self.groups):
            gather = [c for j in maps for c in self.inputs[j]]
            self.register_buffer(f"gather{i}", torch.tensor(gather, device="cpu"), persistent=False)
        order = [j for maps in self.groups for j in maps]
        self.register_buffer("order", torch.tensor(order, device="cpu").argsort(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i, conv in enumerate(self.convs):
            gathered = x.index_select(1, getattr(self, f"gather{i}"))  # (B, k * maps, H, W)
            outs.append(conv(gathered))  # (B, maps, H', W')
        out = torch.cat(outs, dim=1)  # (B, 16, H', W'), grouped by fan-in
        return out.index_select(1, self.order)  # (B, 16, H', W'), in table order

    def map_weight(self, j: int) -> torch.Tensor:
        """The (len(inputs[j]), k, k) kernel of output map ``j``, for checking the table."""
        for maps, conv in zip(self.groups, self.convs):
            if j in maps:
                return conv.weight[maps.index(j)]
        raise IndexError(j)


# The fixed RBF prototypes: each digit drawn on a 7x12 bitmap, "#" = +1 and "." = -1 (LeCun et al.
# 1998, Sec. II-B: "the components of those parameters vectors were set to -1 or +1 ... designed
# to represent a stylized image of the corresponding character class drawn on a 7x12 bitmap").
# The paper's own bitmaps (its Fig. 3) are not reproduced here; these are drawn in the same spirit.
DIGIT_BITMAPS = (
    "..###.. ...#... .#####. .#####. .....#. ####### ..####. ####### .#####. .#####.",
    ".#...#. ..##... #.....# #.....# ....##. #...... .#..... ......# #.....# #.....#",
    "#.....# .#.#... ......# ......# ...#.#. #...... #...... ......# #.....# #.....#",
    "#.....# ...#... ......# ......# ..#..#. #...... #...... .....#. #.....# #.....#",
    "#.....# ...#... .....#. ......# .#...#. ######. #.####. .....#. #.....# #.....#",
    "#.....# ...#... ....#.. ..####. #....#. ......# ##....# ....#.. .#####. #....##",
    "#.....# ...#... ...#... ......# ####### ......# #.....# ....#.. #.....# .####.#",
    "#.....# ...#... ..#.... ......# .....#. ......# #.....# ...#... #.....# ......#",
    "#.....# ...#... .#..... ......# .....#. ......# #.....# ...#... #.....# ......#",
    "#.....# ...#... #...... ......# .....#. ......# #.....# ..#.... #.....# ......#",
    ".#...#. ...#... #...... #.....# .....#. #.....# #.....# ..#.... #.....# .....#.",
    "..###.. .#####. ####### .#####. .....#. .#####. .#####. ..#.... .#####. .####..",
)


def rbf_prototypes(num_classes: int = 10, *, seed: int = 0) -> torch.Tensor:
    """The (num_classes, 84) matrix of +-1 prototypes: the digit bitmaps for 10 classes, else
    fixed random +-1 codes (the paper allows codes "chosen at random with equal probabilities")."""
    if num_classes == 10:
        glyphs = [[row[8 * d: 8 * d + 7] for row in DIGIT_BITMAPS] for d in range(10)]
        bits = [[1.0 if ch == "#" else -1.0 for line in glyph for ch in line] for glyph in glyphs]
        return torch.tensor(bits, device="cpu")
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2, (num_classes, 84), generator=generator, device="cpu")
    return codes.float() * 2 - 1


class GaussianConnections(nn.Module):
    """The output layer: Euclidean RBF units y_i = sum_j (x_j - w_ij)^2 with fixed prototypes w_i.

    Returns the logits -y_i (the nearest prototype wins); ``prototypes`` is a buffer, so it is
    saved with the model but never trained or counted as a parameter.
    """

    def __init__(self, prototypes: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("prototypes", prototypes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        diff = x.unsqueeze(1) - self.prototypes  # (B, classes, 84)
        distances = (diff * diff).sum(dim=-1)  # (B, classes)
        return -distances


class LeNet5Classic(nn.Module):
    def __init__(self, *, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.pad = PadToSize(32)  # (B, C, 32, 32)
        self.c1 = nn.Conv2d(in_channels, 6, kernel_size=5)  # (B, 6, 28, 28)
        self.act1 = ScaledTanh()
        self.s2 = Subsampling(6)  # (B, 6, 14, 14)
        self.c3 = PartialConv(c3_inputs())  # (B, 16, 10, 10)
        self.act3 = ScaledTanh()
        self.s4 = Subsampling(16)  # (B, 16, 5, 5)
        self.c5 = nn.Conv2d(16, 120, kernel_size=5)  # (B, 120, 1, 1)
        self.act5 = ScaledTanh()
        self.flatten = nn.Flatten()
        self.f6 = nn.Linear(120, 84)
        self.act6 = ScaledTanh()
        self.output = GaussianConnections(rbf_prototypes(num_classes))
        lecun_uniform_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pad(x)  # (B, C, 32, 32)
        x = self.c1(x)  # (B, 6, 28, 28)
        x = self.act1(x)
        x = self.s2(x)  # (B, 6, 14, 14)
        x = self.c3(x)  # (B, 16, 10, 10)
        x = self.act3(x)
        x = self.s4(x)  # (B, 16, 5, 5)
        x = self.c5(x)  # (B, 120, 1, 1)
        x = self.act5(x)
        x = self.flatten(x)  # (B, 120)
        x = self.f6(x)  # (B, 84)
        x = self.act6(x)
        return self.output(x)  # (B, classes)


@torch.no_grad()
def lecun_uniform_init(model: nn.Module) -> None:
    """LeCun et al. 1998, Appendix A: weights ~ U(-2.4/F, 2.4/F) with F the unit's fan-in; biases 0.

    A subsampling unit has fan-in 4 (its 2x2 window), and its stored weight is 4w (see
    ``Subsampling``), so that weight is drawn from U(-2.4, 2.4).
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            nn.init.uniform_(m.weight, -2.4 / fan_in, 2.4 / fan_in)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, Subsampling):
            nn.init.uniform_(m.scale.weight, -2.4, 2.4)


@register("lenet5-classic", family="LeNet", paper="LeCun et al. 1998", year=1998,
          input_size=(1, 32, 32), num_classes=10, params=60_000)
def lenet5_classic(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """The 1998 LeNet-5 on 32x32 images (28x28 inputs are padded by 2 inside the model).

    The output is ``-distance`` to each class's fixed prototype: train it with cross-entropy.
    """
    return LeNet5Classic(num_classes=num_classes, in_channels=in_channels)
