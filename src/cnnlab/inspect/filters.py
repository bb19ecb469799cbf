"""What a trained ConvNet holds: its filters and its feature maps (Saremi 2024, "visualizing
trained ConvNets": "the first layer is easy to visualize since the filters are images themselves").

    >>> from cnnlab import inspect, models
    >>> model = models.create("lenet5")
    >>> inspect.conv_layer_names(model)
    ['features.0', 'features.3']
    >>> inspect.filters(model).shape                 # the first conv layer by default
    torch.Size([6, 1, 5, 5])
    >>> maps = inspect.activations(model, torch.zeros(1, 1, 28, 28))
    >>> list(maps)[:3]
    ['features.0', 'features.2', 'features.3']

Nothing here changes the model's mode or device: the caller picks both.
"""
from __future__ import annotations

import difflib

import torch
from torch import Tensor, nn

from cnnlab.errors import CnnlabError

_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
          nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
_CONVS = (nn.modules.conv._ConvNd,)
_LINEARS = (nn.Linear,)


def conv_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every convolution of ``model`` by its module path, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _CONVS)}


def conv_layer_names(model: nn.Module) -> list[str]:
    return list(conv_layers(model))


def _list_names(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def find_conv(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module]:
    """The conv layer called ``layer`` (default: the first one), or one clear error naming them."""
    convs = conv_layers(model)
    if not convs:
        raise CnnlabError(f"{type(model).__name__} has no convolution layer, so it has no filters to show")
    if layer is None:
        return next(iter(convs.items()))
    if layer not in convs:
        names = list(convs)
        close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise CnnlabError(f"no convolution layer named {layer[:80]!r}; {hint}the conv layers are: {_list_names(names)}")
    return layer, convs[layer]


def filters(model: nn.Module, layer: str | None = None) -> Tensor:
    """A detached float copy of a conv layer's weights, (C_out, C_in / groups, kH, kW).

    ``layer`` is a module path as in ``conv_layer_names(model)``; the default is the first conv.
    """
    _, conv = find_conv(model, layer)
    return conv.weight.detach().float().cpu().clone()


def normalize_each(w: Tensor) -> Tensor:
    """Scale each filter (dim 0) on its own to [0, 1], so weak and strong filters are equally visible."""
    flat = w.reshape(len(w), -1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(w.shape)


def activations(model: nn.Module, x: Tensor, *, kinds: tuple[str, ...] = ("conv", "pool", "linear")
                ) -> dict[str, Tensor]:
    """The output of every conv, pooling and linear layer for the batch ``x``, by module path.

    Forward hooks record each layer's output (detached) in the order the layers run; a layer that
    runs twice keeps its last output. Runs under ``torch.no_grad()`` in the model's current mode.
    """
    types = {"conv": _CONVS, "pool": _POOLS, "linear": _LINEARS}
    for kind in kinds:
        if kind not in types:
            raise CnnlabError(f"unknown layer kind {kind[:40]!r}; valid: conv, pool, linear")
    wanted = tuple(t for kind in kinds for t in types[kind])
    out: dict[str, Tensor] = {}

    def hook(name):
        def record(module, inputs, output):
            if isinstance(output, Tensor):
                out.pop(name, None)  # re-insert so the order is the order of (last) execution
                out[name] = output.detach()
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if isinstance(m, wanted) and name]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return out
