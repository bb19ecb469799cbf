"""cnnlab: the lectures on convolutional neural networks, runnable and tested.

    >>> import cnnlab
    >>> model = cnnlab.models.create("lenet5", num_classes=10)

Subpackages: ``models`` (registry and architectures), ``data`` (datasets and loaders),
``train`` (trainer, checkpoints, metrics). They are imported on first use, so that
``import cnnlab`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

from cnnlab.errors import CnnlabError

__version__ = "0.1.0"
__all__ = ["CnnlabError", "__version__"]

_SUBPACKAGES = {"models", "data", "train", "inspect", "manual", "autodiff", "shapes"}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"cnnlab.{name}")
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
