"""Autocast for the hand-written autograd Functions: ``amp_forward`` and ``amp_backward``.

Under ``torch.autocast`` a ``Function.forward`` runs its matmuls in bfloat16, but autograd calls
``backward`` outside the autocast region, so a hand-written backward would meet bfloat16 saved
tensors and float32 sensitivities and a matmul of the two fails ("expected m1 and m2 to have the
same dtype"). ``torch.amp.custom_fwd`` / ``custom_bwd`` fix exactly that: the backward re-enters
the autocast state the forward ran under. They are bound to one device type when they decorate,
so these two decorators keep one decorated copy per device type and pick the one of the tensors
the forward receives (the backward then uses the forward's choice).

    class _Op(torch.autograd.Function):
        @staticmethod
        @amp_forward
        def forward(ctx, x): ...

        @staticmethod
        @amp_backward
        @once_differentiable
        def backward(ctx, delta): ...
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch

DEVICE_TYPES = ("cpu", "cuda")


def _device_type(args: tuple) -> str | None:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device.type
    return None


def amp_forward(fwd: Callable) -> Callable:
    """``torch.amp.custom_fwd`` for the device type of the forward's first tensor argument."""
    by_device = {d: torch.amp.custom_fwd(fwd, device_type=d) for d in DEVICE_TYPES}

    @functools.wraps(fwd)
    def forward(ctx, *args):
        device_type = _device_type(args)
        ctx._amp_device_type = device_type if device_type in by_device else None
        return by_device.get(device_type, fwd)(ctx, *args)

    return forward


def amp_backward(bwd: Callable) -> Callable:
    """``torch.amp.custom_bwd`` for the device type ``amp_forward`` recorded."""
    by_device = {d: torch.amp.custom_bwd(bwd, device_type=d) for d in DEVICE_TYPES}

    @functools.wraps(bwd)
    def backward(ctx, *grads):
        return by_device.get(getattr(ctx, "_amp_device_type", None), bwd)(ctx, *grads)

    return backward


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``, False for device types autocast does not know
    (the meta device, on which shapes are checked before training, raises there)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False
