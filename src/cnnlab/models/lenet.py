"""LeNet-5, the lecture's modern instance (seed 000, "Modern instances of LeNet5 use ReLU,
MaxPool instead of AvgPool, full connection instead of Gaussian connections, complete C3
connections").

    conv 6@5x5 pad 2 -> ReLU -> maxpool 2 -> conv 16@5x5 -> ReLU -> maxpool 2 -> FC 120 -> 84 -> classes

On a 1x28x28 input with 10 classes it has 61,706 parameters.
"""
from __future__ import annotations

from torch import nn

from cnnlab.models.registry import register


class LeNet5(nn.Module):
    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        # C1 keeps the size (pad 2), S2 halves it, C3 (5x5, no pad) takes 4 off, S4 halves again.
        flat = (input_size // 2 - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),  # (B, 6, 28, 28)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 6, 14, 14)
            nn.Conv2d(6, 16, kernel_size=5),  # (B, 16, 10, 10)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 16, 5, 5)
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(16 * flat * flat, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = self.flatten(x)
        return self.classifier(x)


@register("lenet5", family="LeNet", paper="LeCun et al. 1998 (modern instance)", year=1998,
          input_size=(1, 28, 28), num_classes=10, params=61_706)
def lenet5(*, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """The modern LeNet-5 for ``in_channels x input_size x input_size`` images (28 for MNIST)."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
