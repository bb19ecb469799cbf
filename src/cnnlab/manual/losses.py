"""Losses, forward and backward by hand: softmax cross-entropy and mean squared error.

Cross-entropy on logits z with softmax p = e^z / Σ e^z (Ryu, ch. 3 and Hu, lecture 5, the softmax output layer):
every variant PyTorch offers (class-index or probability targets, class weights w,
``ignore_index``, label smoothing ε) is one target matrix q,

    loss_n = -Σ_c q_nc log p_nc,      q_nc = w_c ((1 - ε) t_nc + ε / C)     (t the one-hot target)

and because Σ_c p_nc = 1, its gradient has the famous "p - t" form (Hu, lecture 5, backward of the
softmax output layer):

    ∂loss_n/∂z_nc = p_nc Σ_c' q_nc' - q_nc         (= p - t without weights or smoothing)

``reduction="mean"`` divides by Σ_n w_{t_n} over the non-ignored samples (PyTorch's rule; just the
sample count without weights), or by the number of samples for probability targets.

MSE: loss = mean (x - y)², ∂loss/∂x = 2 (x - y) / numel = -∂loss/∂y (Hu's lecture 5 regression loss).
"""
from __future__ import annotations

import warnings

import torch
from torch.autograd.function import once_differentiable

from cnnlab.errors import CnnlabError
from cnnlab.manual._amp import amp_backward, amp_forward

_REDUCTIONS = ("mean", "sum", "none")


def _reduction(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    """Map PyTorch's deprecated ``size_average``/``reduce`` flags onto ``reduction``."""
    if size_average is not None or reduce is not None:
        if reduce is False:
            return "none"
        return "sum" if size_average is False else "mean"
    if reduction not in _REDUCTIONS:
        raise CnnlabError(f"reduction must be one of {', '.join(_REDUCTIONS)}; received reduction={reduction!r}")
    return reduction


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """Rows of logits z (M, C) against target rows q (M, C); see the module docstring."""

    @staticmethod
    @amp_forward
    def forward(ctx, z, q, denominator, reduction):
        shifted = z - z.amax(1, keepdim=True)  # e^(z - max) cannot overflow
        log_p = shifted - shifted.exp().sum(1, keepdim=True).log()
        per_row = -(q * log_p).sum(1)  # (M,)
        ctx.save_for_backward(log_p, q)
        ctx.conf = (denominator, reduction)
        if reduction == "none":
            return per_row
        total = per_row.sum()
        return total / denominator if reduction == "mean" else total

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, delta):
        log_p, q = ctx.saved_tensors
        denominator, reduction = ctx.conf
        grad = log_p.exp() * q.sum(1, keepdim=True) - q  # p Σq - q
        if reduction == "none":
            grad = grad * delta.unsqueeze(1)
        else:
            grad = grad * (delta / denominator if reduction == "mean" else delta)
        return grad, None, None, None


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  size_average: bool | None = None, ignore_index: int = -100,
                  reduce: bool | None = None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """``torch.nn.functional.cross_entropy`` on logits (N, C), (C,) or (N, C, d1, ...).

    ``target`` holds class indices (N, d1, ...) or class probabilities shaped like ``input``.
    The gradient flows to ``input`` only (not to probability targets).

    >>> z = torch.tensor([[2.0, 0.0, 0.0]])
    >>> round(cross_entropy(z, torch.tensor([0])).item(), 4)  # -log(e² / (e² + 2))
    0.2395
    """
    reduction = _reduction(size_average, reduce, reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    unbatched = input.dim() == 1
    logits = input.unsqueeze(0) if unbatched else input
    probabilities = target.is_floating_point()
    t = target.unsqueeze(0) if unbatched else target
    if logits.dim() < 2:
        raise RuntimeError(f"cross_entropy: expected input of size (N, C, ...); received {list(input.shape)}")
    c = logits.shape[1]
    if weight is not None and tuple(weight.shape) != (c,):
        raise RuntimeError(f"weight tensor should be defined either for all {c} classes or no classes "
                           f"but got weight tensor of shape: {list(weight.shape)}")
    z = logits.movedim(1, -1).reshape(-1, c)  # (M, C), rows ordered like target.reshape(-1)
    w = weight.to(z.dtype) if weight is not None else z.new_ones(c)
    if probabilities:
        if t.shape != logits.shape:
            raise RuntimeError(f"cross_entropy: probability target must have the input's shape "
                               f"{list(logits.shape)}; received {list(target.shape)}")
        soft = t.movedim(1, -1).reshape(-1, c).to(z.dtype)
        q = ((1 - label_smoothing) * soft + label_smoothing / c) * w
        denominator = float(z.shape[0])
    else:
        if t.shape[0] != logits.shape[0]:
            raise CnnlabError(f"Expected input batch_size ({logits.shape[0]}) to match target batch_size ({t.shape[0]}).")
        if t.shape[1:] != logits.shape[2:]:
            raise RuntimeError(f"cross_entropy: target size {list(target.shape)} does not match input "
                               f"size {list(input.shape)} without the class dim")
        labels = t.reshape(-1)
        keep = labels != ignore_index
        bad = keep & ((labels < 0) | (labels >= c))
        if bad.any():
            raise IndexError(f"Target {int(labels[bad][0])} is out of bounds.")
        safe = torch.where(keep, labels, torch.zeros_like(labels))
        one_hot = torch.zeros_like(z).scatter_(1, safe.unsqueeze(1), 1.0)
        q = ((1 - label_smoothing) * one_hot + label_smoothing / c) * w * keep.unsqueeze(1)
        denominator = (w[safe] * keep).sum()  # Σ_n w_{t_n} over the kept samples
    loss = _SoftmaxCrossEntropy.apply(z, q, denominator, reduction)
    if reduction == "none":  # one loss per sample (and per position for (N, C, d1, ...) inputs)
        return loss.reshape(() if unbatched else input.shape[:1] + input.shape[2:])
    return loss


class _MSE(torch.autograd.Function):
    @staticmethod
    @amp_forward
    def forward(ctx, x, y, reduction):
        diff = x - y  # broadcast like torch
        ctx.save_for_backward(diff)
        ctx.conf = (x.shape, y.shape, reduction)
        sq = diff * diff
        if reduction == "none":
            return sq
        return sq.mean() if reduction == "mean" else sq.sum()

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, delta):
        (diff,) = ctx.saved_tensors
        x_shape, y_shape, reduction = ctx.conf
        grad = 2 * diff * delta
        if reduction == "mean":
            grad = grad / diff.numel()
        grad_x = grad.sum_to_size(x_shape) if ctx.needs_input_grad[0] else None
        grad_y = -grad.sum_to_size(y_shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_y, None


def mse_loss(input: torch.Tensor, target: torch.Tensor, size_average: bool | None = None,
             reduce: bool | None = None, reduction: str = "mean",
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.nn.functional.mse_loss``: mean (input - target)² (``weight`` is not supported)."""
    if weight is not None:
        raise CnnlabError("mse_loss: weight is not supported by the manual backend; received a weight tensor")
    reduction = _reduction(size_average, reduce, reduction)
    if input.shape != target.shape:
        warnings.warn(
            f"Using a target size ({target.shape}) that is different to the input size ({input.shape}). "
            "This will likely lead to incorrect results due to broadcasting. Please ensure they have the same size.",
            stacklevel=2,
        )
        torch.broadcast_shapes(input.shape, target.shape)  # raises torch's RuntimeError if they cannot
    return _MSE.apply(input, target, reduction)


__all__ = ["cross_entropy", "mse_loss"]
