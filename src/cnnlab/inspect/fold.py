"""Folding BatchNorm into the convolution or linear layer before it (the lecture's homework).

In eval mode BatchNorm is a fixed affine map per channel (Ryu, ch. 3, "BN during testing": the
stored estimates mu, var replace the batch statistics):

    BN(z) = gamma (z - mu) / sqrt(var + eps) + beta,   with z = W x + b,

so with s = gamma / sqrt(var + eps) it is absorbed into the layer before it:

    W' = s W   (each output channel's filter scaled by its s),   b' = s (b - mu) + beta.

``fold_bn(model)`` returns a deep copy in eval mode in which each foldable BatchNorm is replaced by
``nn.Identity`` and its conv or linear layer carries W' and b': the same outputs as
``model.eval()``, fewer layers. The module structure (and so every other state_dict key) is kept.

Which BatchNorm is foldable is read from the data flow, found with ``torch.fx.symbolic_trace``:
a BatchNorm module whose input is the output of a Conv1d/2d/3d or Linear module that nothing else
uses, each module called once, and the BatchNorm tracking running statistics. This finds the
pairs of ResNet blocks (``conv1``/``bn1`` called in ``forward``) as well as those in
``nn.Sequential``. When a model cannot be traced (data-dependent control flow), pairs are taken
from ``nn.Sequential`` containers only: a conv or linear layer immediately followed by a
BatchNorm, where the order of the children is the order of computation. A BatchNorm before its
conv (pre-activation ResNet v2, DenseNet's BN-ReLU-conv) is not folded. The layers are
recognized by their torch.nn classes, so fold a torch-backend model (before ``convert``).
"""
from __future__ import annotations

import copy

import torch
import torch.fx
from torch import nn

_FOLDS_INTO = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCHNORMS = nn.modules.batchnorm._BatchNorm


def _foldable_bn(module: nn.Module) -> bool:
    return isinstance(module, _BATCHNORMS) and module.track_running_stats and module.running_mean is not None


def _pairs_by_tracing(model: nn.Module) -> list[tuple[str, str]]:
    graph = torch.fx.symbolic_trace(model).graph
    nodes = [n for n in graph.nodes if n.op == "call_module"]
    calls: dict[str, int] = {}
    for node in nodes:
        calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in nodes:
        source = node.args[0] if node.args else None
        if not (_foldable_bn(model.get_submodule(node.target)) and isinstance(source, torch.fx.Node)):
            continue
        if source.op != "call_module" or not isinstance(model.get_submodule(source.target), _FOLDS_INTO):
            continue
        if len(source.users) == 1 and calls[source.target] == 1 and calls[node.target] == 1:
            pairs.append((source.target, node.target))
    return pairs


def _pairs_in_sequentials(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for prefix, container in model.named_modules():
        if not isinstance(container, nn.Sequential):
            continue
        children = list(container.named_children())
        for (name_a, a), (name_b, b) in zip(children, children[1:]):
            if isinstance(a, _FOLDS_INTO) and _foldable_bn(b):
                pairs.append((f"{prefix}.{name_a}".lstrip("."), f"{prefix}.{name_b}".lstrip(".")))
    return pairs


@torch.no_grad()
def fold_into(layer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` (eval-mode statistics) into ``layer``'s weight and bias, in place."""
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    weight = layer.weight
    # The output channel is dim 0 of a conv filter bank (C_out, C_in/groups, k...) and of a linear W.
    weight.copy_(weight.double() * scale.view(-1, *[1] * (weight.dim() - 1)))
    bias = layer.bias.double() * scale + shift if layer.bias is not None else shift
    layer.bias = nn.Parameter(bias.to(weight.dtype), requires_grad=weight.requires_grad)


def fold_bn(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``, in eval mode, with every BatchNorm that directly follows a conv or
    linear layer folded into that layer and replaced by ``nn.Identity``."""
    folded = copy.deepcopy(model).eval()
    try:
        pairs = _pairs_by_tracing(folded)
    except Exception:  # noqa: BLE001  symbolic tracing fails in many model-specific ways
        pairs = _pairs_in_sequentials(folded)
    for layer_name, bn_name in pairs:
        fold_into(folded.get_submodule(layer_name), folded.get_submodule(bn_name))
        parent_name, _, attr = bn_name.rpartition(".")
        setattr(folded.get_submodule(parent_name), attr, nn.Identity())
    return folded
