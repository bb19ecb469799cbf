"""Will an input of this size go through this model? Answered before any real computation.

``check_input_size`` runs the model on a ``meta`` tensor (shapes only, no data, no FLOPs) with a
forward pre-hook on every convolution and pooling layer that computes the layer's output size with
``cnnlab.shapes`` and stops at the first layer whose output would be smaller than 1x1:

    >>> from cnnlab import models
    >>> check_input_size(models.create("lenet5"), (1, 4, 4), name="lenet5")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    cnnlab.errors.CnnlabError: input 1x4x4 is too small for lenet5: at features.3 (Conv2d) ...

The message goes on: "the spatial size would be 0x0 (a 5x5 window, stride 1x1, padding 0x0 on a
2x2 input)".

Also here, shared with ``summary``: ``Window`` (a layer's kernel, stride, padding, dilation as
data) and ``meta_forward`` (run a model on meta copies of its parameters).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab import shapes
from cnnlab.errors import CnnlabError

InputSize = Sequence[int] | str


MAX_SIDE = 2 ** 31 - 1  # torch's sizes are 32-bit in many kernels; no real input comes near


def parse_input_size(input_size: InputSize) -> tuple[int, ...]:
    """``"3x224x224"`` or ``(3, 224, 224)`` -> ``(3, 224, 224)``, every entry a positive integer."""
    shown = repr(input_size) if len(repr(input_size)) <= 60 else repr(input_size)[:60] + "..."
    if isinstance(input_size, str):
        parts = input_size.lower().split("x")
        if len(input_size) > 100 or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
            raise CnnlabError(f"input size must look like 3x224x224 (C x H x W); received {shown}")
        parsed = tuple(int(part) for part in parts)
    else:
        try:
            parsed = tuple(input_size)
        except TypeError:
            raise CnnlabError(f"input size must be a sequence such as (3, 224, 224) or a string such as "
                              f"'3x224x224'; received {shown}") from None
    if not parsed or any(not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= MAX_SIDE for s in parsed):
        raise CnnlabError(f"input size must be positive integers such as 3x224x224; received {shown}")
    return parsed


def format_size(size: Sequence[int]) -> str:
    return "x".join(str(s) for s in size)


@dataclass(frozen=True)
class Window:
    """A sliding window (convolution or pooling) along each spatial dimension."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str  # per dimension, or "same"
    dilation: tuple[int, ...]
    ceil_mode: bool
    pool: bool  # pooling layers validate padding <= window / 2, as PyTorch does

    def output_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """The output's spatial size for an input of spatial ``size``, by ``cnnlab.shapes``."""
        if self.padding == "same":
            return tuple(size)
        formula = shapes.pool_output_size if self.pool else shapes.conv_output_size
        return tuple(
            formula(s, k, st, p, d, self.ceil_mode)
            for s, k, st, p, d in zip(size, self.kernel, self.stride, self.padding, self.dilation)
        )

    def describe(self) -> str:
        padding = self.padding if isinstance(self.padding, str) else format_size(self.padding)
        return f"a {format_size(self.kernel)} window, stride {format_size(self.stride)}, padding {padding}"


def _tuple(value: object, n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    return tuple(value)  # type: ignore[arg-type]


_WINDOW_LAYERS = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                  nn.modules.pooling._LPPoolNd)


def window_of(module: nn.Module, ndim: int) -> Window | None:
    """The sliding window of a convolution or pooling module over ``ndim`` spatial dimensions,
    or None for any other module.

    Recognized: torch.nn's (non-transposed) Conv and Max/Avg/LP pools, and any module whose class
    name contains "Conv" or "Pool" and that has ``kernel_size`` and ``stride`` attributes (such
    as cnnlab.manual's). Transposed convolutions and adaptive pools never shrink below 1, so they
    have no window here.
    """
    duck = any(key in type(module).__name__ for key in ("Conv", "Pool")) and hasattr(module, "stride")
    if not (isinstance(module, _WINDOW_LAYERS) or duck) or not hasattr(module, "kernel_size"):
        return None
    if getattr(module, "transposed", False) or (
            not isinstance(module, nn.modules.conv._ConvNd) and hasattr(module, "output_padding")):
        return None
    kernel = module.kernel_size
    n = ndim if isinstance(kernel, int) else len(kernel)
    padding = getattr(module, "padding", 0)
    if padding == "valid":
        padding = 0
    stride = module.stride if module.stride is not None else kernel
    pool = "Pool" in type(module).__name__
    return Window(
        kernel=_tuple(kernel, n),
        stride=_tuple(stride, n),
        padding=padding if padding == "same" else _tuple(padding, n),
        dilation=_tuple(getattr(module, "dilation", 1), n),
        ceil_mode=bool(getattr(module, "ceil_mode", False)),
        pool=pool,
    )


@contextlib.contextmanager
def training_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put every module of ``model`` in train or eval mode, restoring each one's flag after."""
    flags = {m: m.training for m in model.modules()}
    model.train(training)
    try:
        yield model
    finally:
        for m, flag in flags.items():
            m.training = flag


def meta_forward(model: nn.Module, x: torch.Tensor) -> object:
    """``model(x)`` on meta tensors: the parameters and buffers are swapped for meta copies for
    this one call (``torch.func.functional_call``), so nothing is computed and the model is left
    untouched. ``x`` must be on the meta device."""
    state = {name: torch.empty_like(t, device="meta") for name, t in model.named_parameters()}
    state.update({name: torch.empty_like(t, device="meta") for name, t in model.named_buffers()})
    return torch.func.functional_call(model, state, (x,))


class _CallStack:
    """Forward (pre-)hooks that remember which module is running, to name it in an error.

    The exit hook is not ``always_call``: when a layer raises, the stack keeps it on top.
    """

    def __init__(self, model: nn.Module) -> None:
        self.names = {m: name for name, m in model.named_modules()}
        self.stack: list[nn.Module] = []
        self.handles = []
        for m in model.modules():
            self.handles.append(m.register_forward_pre_hook(self._enter))
            self.handles.append(m.register_forward_hook(self._exit))

    def _enter(self, module: nn.Module, args: tuple) -> None:
        self.stack.append(module)

    def _exit(self, module: nn.Module, args: tuple, output: object) -> None:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()

    def where(self) -> str:
        if not self.stack:
            return "the model's input"
        module = self.stack[-1]
        return f"{self.names[module] or '(root)'} ({type(module).__name__})"

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def check_input_size(
    model: nn.Module | str, input_size: InputSize, *, name: str | None = None, batch_size: int = 2
) -> tuple[int, ...]:
    """Raise ``CnnlabError`` if an input of ``input_size`` (C, H, W) cannot go through ``model``;
    otherwise return the shape of the (first) output for a batch of ``batch_size``.

    ``model`` is a module or a registered model name (built on the meta device with its native
    class count and ``input_size``'s channel count). The model runs in its current train/eval
    mode, so branches used only in training (auxiliary classifiers) are checked too; the batch
    defaults to 2 because BatchNorm refuses a single value per channel in training mode. A layer
    whose window does not fit is reported with its output size from ``cnnlab.shapes``; any other
    shape error inside the model (a linear layer sized for another input, a wrong channel count)
    is reported with the layer where it happened. Models that the meta device cannot run
    (NotImplementedError) pass.
    """
    size = parse_input_size(input_size)
    if isinstance(model, str):
        from cnnlab import models

        entry = models.info(model)
        name = name or model
        with torch.device("meta"):
            model = models.create(model, num_classes=entry.num_classes, in_channels=size[0])
    label = name or type(model).__name__
    shown = format_size(size)

    def check_window(module: nn.Module, args: tuple) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        window = window_of(module, len(size) - 1)
        if window is None:
            return
        spatial = tuple(args[0].shape[-len(window.kernel):])
        out = window.output_size(spatial)
        if min(out) < 1:
            raise CnnlabError(
                f"input {shown} is too small for {label}: at {calls.where()} the spatial size "
                f"would be {format_size(out)} ({window.describe()} on a {format_size(spatial)} input)"
            )

    calls = _CallStack(model)
    handles = [m.register_forward_pre_hook(check_window) for m in model.modules()]
    try:
        out = meta_forward(model, torch.empty((batch_size, *size), device="meta"))
    except CnnlabError:
        raise
    except NotImplementedError:
        return ()
    except (RuntimeError, ValueError, IndexError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CnnlabError(f"input {shown} does not fit {label}: at {calls.where()}: {reason}") from None
    finally:
        calls.remove()
        for handle in handles:
            handle.remove()
    first = out
    while isinstance(first, (tuple, list)) and first:
        first = first[0]
    return tuple(first.shape) if isinstance(first, torch.Tensor) else ()
