"""The modules a layer list is built into: ``SpecNet`` and its input layer ``InputCrop``."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from cnnlab.models.blocks import BasicBlock
from cnnlab.models.googlenet import Inception

_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class InputCrop(nn.Module):
    """The input layer: crops images of ``data_size`` (C, H, W) to the declared ``size``.

    In training each image gets its own random crop (the convnetjs MNIST demo trained on random
    24x24 crops of the 28x28 digits); in eval mode the center crop, so that evaluation is
    deterministic. With equal sizes it passes the input through.
    """

    def __init__(self, size: tuple[int, int, int], data_size: tuple[int, int, int]) -> None:
        super().__init__()
        self.size = tuple(size)
        self.data_size = tuple(data_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.size[1:]
        dh, dw = x.shape[-2] - h, x.shape[-1] - w
        if dh == 0 and dw == 0:
            return x
        if not self.training or x.device.type == "meta":
            top, left = dh // 2, dw // 2
            return x[..., top:top + h, left:left + w]
        b = x.shape[0]
        top = torch.randint(0, dh + 1, (b, 1, 1), device=x.device)  # one offset per image
        left = torch.randint(0, dw + 1, (b, 1, 1), device=x.device)
        rows = top + torch.arange(h, device=x.device).view(1, h, 1)  # (B, h, 1)
        cols = left + torch.arange(w, device=x.device).view(1, 1, w)  # (B, 1, w)
        batch = torch.arange(b, device=x.device).view(b, 1, 1)
        out = x.permute(0, 2, 3, 1)[batch, rows, cols]  # (B, h, w, C)
        return out.permute(0, 3, 1, 2).contiguous(memory_format=_format_of(x))

    def extra_repr(self) -> str:
        return f"size={self.size}, data_size={self.data_size}"


def _format_of(x: torch.Tensor) -> torch.memory_format:
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _with_activation(main: nn.Module, activation: str | None, *, flatten: bool = False,
                     name: str = "conv") -> nn.Module:
    parts: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())] if flatten else []
    parts.append((name, main))
    if activation:
        parts.append(("act", _ACTIVATIONS[activation]()))
    return nn.Sequential(OrderedDict(parts))


def layer_module(kind: str, args: dict[str, Any], in_shape: tuple[int, ...], out_shape: tuple[int, ...]
                 ) -> nn.Module:
    """The module of one spec layer, given its checked arguments and its input and output sizes."""
    maps = len(in_shape) == 3
    if kind == "conv":
        conv = nn.Conv2d(in_shape[0], args["filters"], args["sx"], stride=args["stride"], padding=args["pad"])
        return _with_activation(conv, args["activation"])
    if kind == "pool":
        pool = nn.MaxPool2d if args["kind"] == "max" else nn.AvgPool2d
        return pool(args["sx"], stride=args["stride"], padding=args["pad"])
    if kind in ("fc", "softmax"):
        linear = nn.Linear(int(torch.tensor(in_shape).prod()), out_shape[0])
        return _with_activation(linear, args.get("activation"), flatten=maps, name="fc")
    if kind in _ACTIVATIONS:
        return _ACTIVATIONS[kind]()
    if kind == "dropout":
        return nn.Dropout(args["drop_prob"])
    if kind == "bn":
        return nn.BatchNorm2d(in_shape[0]) if maps else nn.BatchNorm1d(in_shape[0])
    if kind == "lrn":
        return nn.LocalResponseNorm(args["n"], alpha=args["alpha"], beta=args["beta"], k=args["k"])
    if kind == "residual":
        return BasicBlock(in_shape[0], args["filters"], stride=args["stride"])
    if kind == "inception":
        return Inception(in_shape[0], args["n1x1"], args["n3x3red"], args["n3x3"], args["n5x5red"],
                         args["n5x5"], args["pool_proj"])
    raise AssertionError(f"unhandled layer kind {kind}")  # validate() admits only the kinds above


class SpecNet(nn.Module):
    """A network built from a layer list; ``layers[i]`` is the module of spec layer ``i``. (A spec
    without an input layer takes the data's size as it is, so it needs no crop.)

    ``spec`` holds the layer list and ``plan`` the table of ``cnnlab.spec.table`` it was built
    from. The output is the logits of the final softmax layer.
    """

    def __init__(self, spec: list[dict[str, Any]], plan: dict[str, Any]) -> None:
        super().__init__()
        from cnnlab.spec import _layer_args

        self.spec = spec
        self.plan = plan
        declared, actual = tuple(plan["declared_input"]), tuple(plan["input"])
        mods: list[nn.Module] = []
        for i, (layer, row) in enumerate(zip(spec, plan["rows"])):
            kind, args = _layer_args(i, layer)
            if kind == "input":
                mods.append(InputCrop(declared, actual))
            else:
                mods.append(layer_module(kind, args, tuple(row["input"]), tuple(row["output"])))
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
