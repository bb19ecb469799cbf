"""Elementwise layers, forward and backward by hand: ReLU, leaky ReLU, sigmoid, tanh, dropout.

An elementwise layer y = f(x) passes the sensitivity down multiplied by its own derivative,
δ^(l-1) = f'(x) ⊙ δ^(l) (seed 002's chain rule for one layer; seed 000, "Backprop"). Each
derivative is written in terms of what the forward pass already computed:

    relu        f' = 1[x > 0]                     (0 at x = 0, as in PyTorch)
    leaky_relu  f' = 1 if x > 0 else slope
    sigmoid     f' = σ(x) (1 - σ(x)) = y (1 - y)
    tanh        f' = 1 - tanh²(x)  = 1 - y²
    dropout     y = m ⊙ x / (1 - p),  m_i ~ Bernoulli(1 - p);   δx = m ⊙ δ / (1 - p)

Dropout is the "inverted" form of seed 002 ("Remarks": a_train = f(Wx + b) / (1 - p), unchanged at
test time), so E[y] = x and the test network needs no rescaling. p is the probability of
*dropping* a unit, as in PyTorch (seed 002 warns that some texts use the keep probability).

``inplace=True`` is accepted for signature compatibility and computes out of place: the result is
the same tensor values, and a hand-written backward stays simple.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from cnnlab.errors import CnnlabError


class _ReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = x.clamp(min=0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, delta):
        (y,) = ctx.saved_tensors
        return delta * (y > 0)  # f' = 1[x > 0]; y > 0 exactly where x > 0


class _LeakyReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, slope):
        positive = x > 0
        ctx.save_for_backward(positive)
        ctx.slope = slope
        return torch.where(positive, x, x * slope)

    @staticmethod
    @once_differentiable
    def backward(ctx, delta):
        (positive,) = ctx.saved_tensors
        return torch.where(positive, delta, delta * ctx.slope), None


class _Sigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.sigmoid(x)  # 1 / (1 + e^-x), computed without overflow for large |x|
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, delta):
        (y,) = ctx.saved_tensors
        return delta * y * (1 - y)


class _Tanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, delta):
        (y,) = ctx.saved_tensors
        return delta * (1 - y * y)


class _Dropout(torch.autograd.Function):
    """y = x ⊙ scale, with scale = m / (1 - p) drawn by the caller; δx = δ ⊙ scale."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.save_for_backward(scale)
        return x * scale

    @staticmethod
    @once_differentiable
    def backward(ctx, delta):
        (scale,) = ctx.saved_tensors
        return delta * scale, None


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``torch.nn.functional.relu``: max(x, 0)."""
    return _ReLU.apply(input)


def leaky_relu(input: torch.Tensor, negative_slope: float = 0.01, inplace: bool = False) -> torch.Tensor:
    """``torch.nn.functional.leaky_relu``: x if x > 0 else negative_slope · x."""
    return _LeakyReLU.apply(input, negative_slope)


def sigmoid(input: torch.Tensor) -> torch.Tensor:
    """``torch.sigmoid``: 1 / (1 + e^-x)."""
    return _Sigmoid.apply(input)


def tanh(input: torch.Tensor) -> torch.Tensor:
    """``torch.tanh``."""
    return _Tanh.apply(input)


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """``torch.nn.functional.dropout``, inverted: E[output] = input, identity when not training.

    The mask is drawn exactly as PyTorch's CPU kernel draws it (``bernoulli_(1 - p)`` on a tensor
    like the input), so with the same seed both give the same output.

    >>> x = torch.ones(10_000)
    >>> round(dropout(x, 0.3).mean().item(), 1)  # E[h'] = h
    1.0
    """
    if not 0.0 <= p <= 1.0:
        raise CnnlabError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        scale = torch.zeros_like(input)  # every unit dropped; 1 / (1 - p) would be 0 / 0
    else:
        scale = torch.empty_like(input).bernoulli_(1 - p).div_(1 - p)
    return _Dropout.apply(input, scale)


__all__ = ["relu", "leaky_relu", "sigmoid", "tanh", "dropout"]
