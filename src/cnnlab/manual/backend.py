"""The manual backend: swap a model's ``torch.nn`` layers for their hand-written twins, in place.

``convert(model)`` walks the module tree and changes the class of every layer whose exact type
has a manual equivalent (``modules.MANUAL_EQUIVALENTS``), e.g. ``nn.Conv2d`` -> ``manual.Conv2d``.
Changing the class keeps the very same parameter and buffer tensors, hooks and training flag, so
``state_dict`` keys and values are unchanged and an optimizer built before the swap still points
at the right tensors. ``to_torch(model)`` swaps them back.

Left as they are (no manual equivalent, or not a layer with its own math):

- containers and pure reshapes: ``nn.Sequential``, ``nn.ModuleList``, ``nn.Flatten``, ``nn.Identity``;
- layers the lectures do not derive: ``nn.Dropout2d``, ``nn.BatchNorm3d``, ``nn.GroupNorm``,
  ``nn.ConvTranspose2d``, ``nn.MaxPool1d``, ``nn.AvgPool1d``, ``nn.Softmax``, ``nn.GELU``,
  ``nn.SiLU``, ``nn.Hardswish``, and anything else not in the table;
- subclasses of the torch layers (``class StdConv(nn.Conv2d)``): their ``forward`` may differ;
- functional calls and tensor arithmetic inside a model's own ``forward`` (``F.relu(x)``,
  ``x + identity``, ``torch.flatten``): those keep PyTorch's autograd.

    >>> from cnnlab import models
    >>> m = convert(models.create("lenet5"))
    >>> type(m.features[0]).__module__
    'cnnlab.manual.modules'
"""
from __future__ import annotations

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.manual.modules import MANUAL_EQUIVALENTS, Dropout

_TORCH_EQUIVALENTS = {manual: torch_cls for torch_cls, manual in MANUAL_EQUIVALENTS.items()}


def _swap(model: nn.Module, table: dict[type[nn.Module], type[nn.Module]]) -> nn.Module:
    for module in model.modules():  # includes model itself
        new_cls = table.get(type(module))
        if new_cls is not None:
            module.__class__ = new_cls  # same object, same tensors; only forward changes
    return model


def convert(model: nn.Module) -> nn.Module:
    """Make ``model`` use the manual layers (in place); returns ``model`` for chaining."""
    return _swap(model, MANUAL_EQUIVALENTS)


def to_torch(model: nn.Module) -> nn.Module:
    """Undo ``convert`` (in place): every manual layer becomes its ``torch.nn`` class again.

    A ``manual.Dropout(mode="scale-at-test")`` has no ``torch.nn`` twin (torch's dropout is the
    inverted kind) and is refused, before anything is changed."""
    for name, m in model.named_modules():
        if isinstance(m, Dropout) and getattr(m, "mode", "inverted") != "inverted":
            raise CnnlabError(f"layer {name or 'model'!r} is a scale-at-test dropout, which torch.nn.Dropout "
                              f"cannot express; only mode='inverted' converts back to torch")
    return _swap(model, _TORCH_EQUIVALENTS)


def manual_layers(model: nn.Module) -> list[str]:
    """Names of the submodules that run a hand-written backward (``""`` is the model itself)."""
    return [name for name, m in model.named_modules() if type(m) in _TORCH_EQUIVALENTS]


__all__ = ["convert", "to_torch", "manual_layers"]
