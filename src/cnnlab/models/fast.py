"""Faster kernels as a model transformation that computes the same function.

    >>> from cnnlab.models import fast
    >>> report = fast.apply(model, torch.randn(128, 1, 28, 28))   # measures, keeps only what is faster
    >>> report.chosen, report.lines()
    >>> fast.undo(model)                                           # back to torch's layers

Three rewrites, each exact (same outputs, same gradients; tests check forward and every gradient
against torch in float64 and float32):

- ``pool-before-relu``: ``ReLU -> MaxPool2d`` becomes ``MaxPool2d -> ReLU``. Max and ReLU commute,
  max(relu(x)) = relu(max(x)), and the gradients agree too (a window whose max is <= 0 passes no
  gradient either way; otherwise both pass it to the same first argmax), but the ReLU and its
  backward run on a quarter of the pixels.
- ``slice-pool``: a 2x2, stride-2 max pool as three ``torch.maximum`` of strided slices, with a
  backward that hands δ to the first maximum of each window in row-major order, like torch.
- ``im2col-conv``: a conv through ``cnnlab.manual``'s im2col + matmul (the first conv of a
  1-channel network has a tiny reduction dimension, where torch's CPU kernels are weak).

Like ``cnnlab.manual.convert``, a swap changes a layer's class in place, so parameters, buffers,
``state_dict`` keys and an existing optimizer are untouched. ``apply`` times every candidate on the
shapes the model really sees, alternating it with torch's layer, and keeps it only when its median
is ``margin`` times faster; ``apply(..., enabled=False)`` (the ``--no-fast-kernels`` switch) changes
nothing. On a GPU torch's cuDNN kernels are kept: ``apply`` only rewrites on the CPU.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError

# --------------------------------------------------------------------------------------------
# the kernels
# --------------------------------------------------------------------------------------------


class _SlicePool2x2(torch.autograd.Function):
    """y = max of the four strided slices x[0::2, 0::2], x[0::2, 1::2], x[1::2, 0::2], x[1::2, 1::2]."""

    @staticmethod
    def forward(ctx, x):
        a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
        c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
        y = torch.maximum(torch.maximum(a, b), torch.maximum(c, d))
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, delta):
        x, y = ctx.saved_tensors
        grad = torch.zeros_like(x)
        taken = None
        for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):  # row-major: torch's first argmax wins a tie
            hit = x[..., i::2, j::2] == y
            if taken is None:
                taken = hit
            else:
                hit = hit & ~taken
                taken = taken | hit
            grad[..., i::2, j::2] = delta * hit
        return grad


def _is_plain_2x2(m: nn.MaxPool2d) -> bool:
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    return (pair(m.kernel_size) == (2, 2) and pair(m.stride or m.kernel_size) == (2, 2)
            and pair(m.padding) == (0, 0) and pair(m.dilation) == (1, 1) and not m.return_indices)


class SlicePool2d(nn.MaxPool2d):
    """``nn.MaxPool2d``; a 2x2 stride-2 unpadded pool on an even-sized map runs as strided slices."""

    def forward(self, input: torch.Tensor):
        h, w = input.shape[-2:]
        if _is_plain_2x2(self) and (not self.ceil_mode or (h % 2 == 0 and w % 2 == 0)):
            if h % 2 or w % 2:  # floor mode drops the odd last row/column, as torch does
                input = input[..., : h - h % 2, : w - w % 2]
            return _SlicePool2x2.apply(input)
        return super().forward(input)


class Im2colConv2d(nn.Conv2d):
    """``nn.Conv2d`` through ``cnnlab.manual``'s im2col + matmul (zero padding only)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            return super()._conv_forward(input, weight, bias)
        from cnnlab.manual import functional as MF

        return MF.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


# --------------------------------------------------------------------------------------------
# the rewrites
# --------------------------------------------------------------------------------------------


def reorder_relu_pool(model: nn.Module) -> list[str]:
    """Swap every ``ReLU`` directly followed by a ``MaxPool2d`` inside an ``nn.Sequential``, in place.

    Returns the names of the moved pools. Only exact ``nn.ReLU`` / ``nn.MaxPool2d`` (or
    ``SlicePool2d``) without ``return_indices`` are moved.
    """
    moved = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        keys = list(seq._modules)
        for k0, k1 in zip(keys, keys[1:]):
            a, b = seq._modules[k0], seq._modules[k1]
            if type(a) is nn.ReLU and type(b) in (nn.MaxPool2d, SlicePool2d) and not b.return_indices:
                seq._modules[k0], seq._modules[k1] = b, a
                moved.append(f"{name}.{k0}" if name else k0)
    return moved


_FAST = {nn.MaxPool2d: SlicePool2d, nn.Conv2d: Im2colConv2d}
_TORCH = {fast_cls: torch_cls for torch_cls, fast_cls in _FAST.items()}
KERNELS = ("pool-before-relu", "slice-pool", "im2col-conv")


@dataclass
class Report:
    """What ``apply`` measured and chose: per layer, torch's and the candidate's median ms."""

    chosen: list[str] = field(default_factory=list)  # "features.2: slice-pool"
    measured: list[tuple[str, str, float, float]] = field(default_factory=list)  # (layer, kernel, torch, fast)
    reordered: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"pool-before-relu at {', '.join(self.reordered)}"] if self.reordered else []
        for layer, kernel, t_torch, t_fast in self.measured:
            verdict = "kept" if f"{layer}: {kernel}" in self.chosen else "rejected"
            out.append(f"{layer} {kernel}: {t_fast:.2f} ms against torch's {t_torch:.2f} ms "
                       f"({t_torch / t_fast:.2f}x, {verdict})")
        return out


def _input_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, torch.Size]:
    shapes: dict[str, torch.Size] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            shapes.setdefault(name, args[0].shape)
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules() if type(m) in _FAST]
    try:
        with torch.no_grad():
            was = model.training
            model.train()
            model(example)
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _time_layer(layer: nn.Module, shape: torch.Size, like: torch.Tensor, first_layer: bool, repeats: int,
                timer: Callable[[nn.Module, torch.Tensor, bool], float]) -> float:
    x = torch.randn(shape, dtype=like.dtype, device=like.device)
    if like.is_contiguous(memory_format=torch.channels_last) and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return statistics.median(timer(layer, x, first_layer) for _ in range(repeats))


def time_forward_backward(layer: nn.Module, x: torch.Tensor, first_layer: bool) -> float:
    """Seconds for one forward and backward pass of ``layer`` on ``x`` (no input gradient for a first layer)."""
    x = x.detach().requires_grad_(not first_layer)
    t0 = time.perf_counter()
    y = layer(x)
    y.backward(torch.ones_like(y))
    return time.perf_counter() - t0


def apply(model: nn.Module, example: torch.Tensor, *, enabled: bool = True, kernels: tuple[str, ...] = KERNELS,
          margin: float = 1.05, repeats: int = 7,
          timer: Callable[[nn.Module, torch.Tensor, bool], float] = time_forward_backward) -> Report:
    """Rewrite ``model`` in place with the kernels that measure faster on ``example``'s shapes.

    Args:
        example: a batch like the training batches (its shape, dtype, device and memory format).
        enabled: False changes nothing (returns an empty report): the switch to turn this off.
        kernels: which rewrites to consider, a subset of ``KERNELS``.
        margin: a candidate is kept when torch's median time is at least ``margin`` x its own.
        repeats: timed forward+backward passes of each, alternating.
        timer: ``(layer, x, first_layer) -> seconds``; tests pass a fake one.
    """
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown:
        raise CnnlabError(f"unknown fast kernel {unknown[0][:50]!r}; valid: {', '.join(KERNELS)}")
    report = Report()
    if not enabled or example.device.type != "cpu":
        return report
    if "pool-before-relu" in kernels:
        report.reordered = reorder_relu_pool(model)
    wanted = {nn.MaxPool2d: "slice-pool" in kernels, nn.Conv2d: "im2col-conv" in kernels}
    shapes = _input_shapes(model, example)
    first = next((name for name, m in model.named_modules() if type(m) is nn.Conv2d), None)
    params_before = [p.requires_grad for p in model.parameters()]
    for name, m in model.named_modules():
        torch_cls = type(m)
        if torch_cls not in _FAST or not wanted[torch_cls] or name not in shapes:
            continue
        if torch_cls is nn.Conv2d and m.padding_mode != "zeros":
            continue
        kernel = "slice-pool" if torch_cls is nn.MaxPool2d else "im2col-conv"
        times = {torch_cls: [], _FAST[torch_cls]: []}
        for _ in range(repeats):
            for cls in times:
                m.__class__ = cls
                times[cls].append(_time_layer(m, shapes[name], example, name == first, 1, timer))
        m.__class__ = torch_cls
        t_torch, t_fast = (statistics.median(times[c]) for c in times)
        report.measured.append((name, kernel, 1e3 * t_torch, 1e3 * t_fast))
        if t_torch >= margin * t_fast:
            m.__class__ = _FAST[torch_cls]
            report.chosen.append(f"{name}: {kernel}")
    model.zero_grad(set_to_none=True)  # the timing passes must not leave gradients behind
    assert [p.requires_grad for p in model.parameters()] == params_before
    return report


def undo(model: nn.Module) -> nn.Module:
    """Turn every fast layer back into its torch class (in place). The pool/ReLU order is kept:
    it computes the same function."""
    for m in model.modules():
        cls = _TORCH.get(type(m))
        if cls is not None:
            m.__class__ = cls
    return model


__all__ = ["KERNELS", "Im2colConv2d", "Report", "SlicePool2d", "apply", "reorder_relu_pool",
           "time_forward_backward", "undo"]
