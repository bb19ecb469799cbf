"""A multilayer perceptron: flatten, then ``Linear -> ReLU`` for each hidden size, then a linear
classifier. The baseline the lectures compare convolutions against.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import register


@register("mlp", family="MLP", paper="Rumelhart et al. 1986", year=1986,
          input_size=(1, 28, 28), num_classes=10, params=None)
def mlp(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 28,
    hidden: Sequence[int] = (512, 256),
    dropout: float = 0.0,
) -> nn.Module:
    """``hidden`` lists the hidden layer widths, e.g. ``hidden=(512, 256)``; ``()`` is softmax regression."""
    hidden = [hidden] if isinstance(hidden, int) else list(hidden)
    if any(not isinstance(h, int) or h < 1 for h in hidden):
        raise CnnlabError(f"hidden sizes must be positive integers; received hidden={hidden!r}")
    if not 0.0 <= dropout < 1.0:
        raise CnnlabError(f"dropout must be in [0, 1); received dropout={dropout!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * input_size * input_size
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
