"""Architectures and their registry.

    >>> from cnnlab import models
    >>> models.names()[:2]
    ['lenet5', 'mlp']
    >>> m = models.create("lenet5", num_classes=10, in_channels=1)

Each family lives in its own module here and registers itself with ``@register``; every
non-private module of this package is imported on first use, so adding a model is one file.
"""
from cnnlab.models.registry import ModelInfo, count_params, create, info, names, register
from cnnlab.models.surgery import deepen

__all__ = ["ModelInfo", "count_params", "create", "deepen", "info", "names", "register"]
