"""Normalization layers, forward and backward by hand: batch norm, layer norm, local response norm.

Batch norm (Ryu, ch. 3, "BN for linear layers" / "BN for convolutional layers"; Ioffe & Szegedy
2015, Alg. 1), per channel over the batch and the pixels, and layer norm (Ba et al. 2016), per
sample over its last dims, share one formula with a different set of reduced dims:

    x̂ = (x - μ) / sqrt(σ² + ε),   y = γ x̂ + β          (σ² the biased variance, as in the lecture)

Backward, with n the number of entries each statistic averages (Ioffe & Szegedy 2015, Sec. 3):

    ∂E/∂γ = Σ δ ⊙ x̂,   ∂E/∂β = Σ δ,   g = γ δ
    δx = (g - mean(g) - x̂ ⊙ mean(g ⊙ x̂)) / sqrt(σ² + ε)     (μ and σ² depend on x: batch statistics)
    δx = g / sqrt(σ² + ε)                                    (eval: μ, σ² are the running constants)

The two mean terms are the paths through μ and σ²: shifting all inputs moves μ too, and scaling
them moves σ. In training, batch norm also updates the running averages the way PyTorch does
(Ryu, ch. 3, "BN during testing", strategy 2): r ← (1 - m) r + m · stat, with the *unbiased* batch
variance n/(n-1) σ² for the running variance.

Local response normalization (Krizhevsky et al. 2012; AlexNet in Ryu, ch. 3) divides each channel
by its neighbours' energy: y_c = x_c · D_c^(-β), D_c = k + α/n Σ_{j ∈ N(c)} x_j², where N(c) is the
n channels c - n//2 ... c + (n-1)//2. Then

    δx_i = δ_i D_i^(-β) - (2αβ/n) x_i Σ_{c : i ∈ N(c)} δ_c x_c D_c^(-β-1)

and the set {c : i ∈ N(c)} is the mirrored window i - (n-1)//2 ... i + n//2.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from cnnlab.errors import CnnlabError
from cnnlab.manual._amp import amp_backward, amp_forward


class _Normalize(torch.autograd.Function):
    """y = γ (x - μ)/sqrt(σ² + ε) + β with μ, σ² given; ``from_input`` says they were computed
    from x over ``dims`` (so the backward takes the paths through them)."""

    @staticmethod
    @amp_forward
    def forward(ctx, x, weight, bias, mean, var, eps, dims, from_input):
        invstd = (var + eps).rsqrt()
        xhat = (x - mean) * invstd
        y = xhat
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.conf = (dims, from_input, None if bias is None else bias.shape)
        return y

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, delta):
        xhat, invstd, weight = ctx.saved_tensors
        dims, from_input, bias_shape = ctx.conf
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_w = (delta * xhat).sum_to_size(weight.shape)  # ∂E/∂γ = Σ δ x̂
        if bias_shape is not None and ctx.needs_input_grad[2]:
            grad_b = delta.sum_to_size(bias_shape)  # ∂E/∂β = Σ δ
        if ctx.needs_input_grad[0]:
            g = delta * weight if weight is not None else delta  # ∂E/∂x̂
            if from_input:
                g = g - g.mean(dims, keepdim=True) - xhat * (g * xhat).mean(dims, keepdim=True)
            grad_x = g * invstd
        return grad_x, grad_w, grad_b, None, None, None, None, None


def batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """``torch.nn.functional.batch_norm`` for (N, C, *) inputs; updates the running stats in training."""
    if input.dim() < 2:
        raise RuntimeError(f"batch_norm: expected an input with at least 2 dims (N, C, ...); received size {list(input.shape)}")
    c = input.shape[1]
    dims = tuple(d for d in range(input.dim()) if d != 1)  # every dim but the channel's
    shape = (1, c) + (1,) * (input.dim() - 2)  # a per-channel vector, broadcast over (N, C, *)
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None and t.numel() != c:
            raise RuntimeError(f"{name} should contain {c} elements not {t.numel()}")
    if training:
        n = input.numel() // c
        if n <= 1:
            raise CnnlabError(f"Expected more than 1 value per channel when training, got input size {input.shape}")
        with torch.no_grad():
            mean = input.mean(dims, keepdim=True)
            var = (input - mean).square().mean(dims, keepdim=True)  # biased, as the lecture's σ̂²
            if running_mean is not None:
                running_mean.mul_(1 - momentum).add_(mean.view(c), alpha=momentum)
            if running_var is not None:
                running_var.mul_(1 - momentum).add_(var.view(c) * (n / (n - 1)), alpha=momentum)
    else:
        if running_mean is None or running_var is None:
            raise RuntimeError("batch_norm: running_mean and running_var must be given when not training")
        mean, var = running_mean.view(shape), running_var.view(shape)
    w = weight.view(shape) if weight is not None else None
    b = bias.view(shape) if bias is not None else None
    return _Normalize.apply(input, w, b, mean, var, eps, dims, training)


def layer_norm(input: torch.Tensor, normalized_shape: list[int] | tuple[int, ...] | int,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> torch.Tensor:
    """``torch.nn.functional.layer_norm``: normalize each sample over its last dims."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(input.shape[input.dim() - len(shape):]) != shape or input.dim() < len(shape):
        raise RuntimeError(
            f"Given normalized_shape={list(shape)}, expected input with shape [*, "
            f"{', '.join(map(str, shape))}], but got input of size{list(input.shape)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise RuntimeError(f"layer_norm: {name} must have shape {list(shape)}; received {list(t.shape)}")
    dims = tuple(range(input.dim() - len(shape), input.dim()))
    with torch.no_grad():
        mean = input.mean(dims, keepdim=True)
        var = (input - mean).square().mean(dims, keepdim=True)
    return _Normalize.apply(input, weight, bias, mean, var, eps, dims, True)


def _channel_window_sum(t: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """out[:, c] = Σ t[:, c-before ... c+after] with zeros past the edges (a loop over the window)."""
    c = t.shape[1]
    padded = t.new_zeros(t.shape[0], c + before + after, *t.shape[2:])
    padded[:, before:before + c] = t
    out = padded[:, 0:c].clone()
    for s in range(1, before + after + 1):
        out += padded[:, s:s + c]
    return out


class _LocalResponseNorm(torch.autograd.Function):
    @staticmethod
    @amp_forward
    def forward(ctx, x, size, alpha, beta, k):
        energy = _channel_window_sum(x * x, size // 2, (size - 1) // 2)
        d = k + (alpha / size) * energy  # D_c
        ctx.save_for_backward(x, d)
        ctx.conf = (size, alpha, beta)
        return x * d.pow(-beta)

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, delta):
        x, d = ctx.saved_tensors
        size, alpha, beta = ctx.conf
        through_d = _channel_window_sum(delta * x * d.pow(-beta - 1), (size - 1) // 2, size // 2)
        return delta * d.pow(-beta) - (2 * alpha * beta / size) * x * through_d, None, None, None, None


def local_response_norm(input: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> torch.Tensor:
    """``torch.nn.functional.local_response_norm`` across channels (dim 1) of a (N, C, *) input."""
    if input.dim() < 3:
        raise CnnlabError(f"Expected 3D or higher dimensionality input (got {input.dim()} dimensions)")
    if not isinstance(size, int) or size < 1:
        raise CnnlabError(f"local_response_norm: size must be a positive integer; received size={size}")
    if input.numel() == 0:
        return input
    return _LocalResponseNorm.apply(input, size, alpha, beta, k)


__all__ = ["batch_norm", "layer_norm", "local_response_norm"]
