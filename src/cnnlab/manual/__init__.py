"""``cnnlab.manual``: every layer's forward and backward derived by hand, a second backend, and
reference optimizers (Hu, lecture 5: "Implement each type of layer as a class and provide
functions for forward calculation and backward calculation").

- ``cnnlab.manual.functional``: ``conv2d``, ``max_pool2d``, ``batch_norm``, ``cross_entropy``, ...
  with ``torch.nn.functional``'s signatures; each a ``torch.autograd.Function`` with a
  hand-written ``backward``.
- Layer classes ``Conv2d``, ``Linear``, ``MaxPool2d``, ``BatchNorm2d``, ... : ``torch.nn`` layers
  whose ``forward`` uses those ops (same parameter names and ``state_dict`` keys).
- ``convert(model)`` / ``to_torch(model)``: swap a model's layers between the backends, in place;
  ``cnnlab.models.create(name, backend="manual")`` calls ``convert``.
- ``cnnlab.manual.optim``: ``SGD``, ``Adagrad``, ``RMSprop``, ``Adam``, ``AdamW`` written out.

    >>> import torch
    >>> from cnnlab import manual, models
    >>> model = models.create("lenet5", backend="manual")
    >>> model(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

from cnnlab.manual import functional, optim
from cnnlab.manual.backend import convert, manual_layers, to_torch
from cnnlab.manual.modules import (
    MANUAL_EQUIVALENTS,
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv1d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    LayerNorm,
    LeakyReLU,
    Linear,
    LocalResponseNorm,
    MaxPool2d,
    MSELoss,
    ReLU,
    Sigmoid,
    Tanh,
)

__all__ = [
    "functional", "optim", "convert", "to_torch", "manual_layers", "MANUAL_EQUIVALENTS",
    "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv1d",
    "Conv2d", "CrossEntropyLoss", "Dropout", "LayerNorm", "LeakyReLU", "Linear",
    "LocalResponseNorm", "MaxPool2d", "MSELoss", "ReLU", "Sigmoid", "Tanh",
]
