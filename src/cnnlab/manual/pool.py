"""Pooling, forward and backward by hand: max, average, adaptive average and adaptive max.

Hu, lecture 5, "2D Pooling layers", for one feature map y^(l-1) and the sensitivity δ^(l) from above:

    average pooling   y^(l) = downsample(y^(l-1)) / poolingsize
                      δ^(l-1) = upsample(δ^(l)) / poolingsize
    max pooling       y^(l) = the largest entry of each pooling region
                      δ^(l-1) = Γ(y^(l-1)) ⊙ upsample(δ^(l)),   Γ = 1 at each region's argmax, else 0

The lecture draws non-overlapping regions (stride = pooling size). With stride < kernel (AlexNet's
overlapping f=3, s=2, Ryu, ch. 3) a pixel lies in several regions, and "upsample" becomes: hand each
region's δ back to its pixels and add up what a pixel receives (Hu, lecture 5, "Pooling with stride ≠
poolingsize"). We do exactly that: the average's backward spreads δ/size over each window with
``_col2im``; the max's backward adds δ at each window's argmax with one ``scatter_add``.

Output sizes follow PyTorch: floor((W + 2P - D(F-1) - 1) / S) + 1, or with ``ceil_mode`` the ceiling,
dropping a last window that would start in the right padding. Padding for max pooling is -inf
(never chosen), for average pooling zeros, counted in the divisor only if ``count_include_pad``.
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from cnnlab.manual._amp import amp_backward, amp_forward
from cnnlab.manual.conv import IntPair, _col2im, _crop, _pair, _windows, _zero_pad

Pair = tuple[int, int]
Pads = tuple[int, int, int, int]  # (top, bottom, left, right)

# --------------------------------------------------------------------------------------------
# geometry shared by max and average pooling
# --------------------------------------------------------------------------------------------


def _pool_out(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output size (aten ``pooling_output_shape``)."""
    eff = dilation * (kernel - 1) + 1
    out = (size + 2 * pad - eff + (stride - 1 if ceil_mode else 0)) // stride + 1
    # With ceil_mode the last window must start inside the input or the left padding.
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _geometry(x: torch.Tensor, kernel_size: IntPair, stride: IntPair | None, padding: IntPair,
              dilation: IntPair, ceil_mode: bool, name: str) -> tuple[Pair, Pair, Pair, Pads, Pair]:
    """Check the arguments like torch does; return kernel, stride, dilation, pads and output size."""
    if x.dim() != 4:
        raise RuntimeError(f"{name}: expected a 3D or 4D input; received size {list(x.shape)}")
    kernel = _pair(kernel_size, "kernel_size")
    stride_ = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride, "stride")
    pad = _pair(padding, "padding")
    dil = _pair(dilation, "dilation")
    if min(kernel) < 1:
        raise RuntimeError(f"kernel size should be greater than zero; received kernel_size={kernel_size}")
    if min(stride_) < 1:
        raise RuntimeError(f"stride should not be zero or negative; received stride={stride}")
    if min(dil) < 1:
        raise RuntimeError(f"dilation should be greater than zero; received dilation={dilation}")
    for p, k, d in zip(pad, kernel, dil):
        if p < 0 or p > (d * (k - 1) + 1) // 2:
            raise RuntimeError(
                f"pad should be at most half of effective kernel size, but got pad={p}, "
                f"kernel_size={k} and dilation={d}"
            )
    h, w = x.shape[-2:]
    out = tuple(_pool_out(s, k, st, p, d, ceil_mode) for s, k, st, p, d in zip((h, w), kernel, stride_, pad, dil))
    if min(out) < 1:
        raise RuntimeError(
            f"Given input size: ({x.shape[1]}x{h}x{w}). Calculated output size: "
            f"({x.shape[1]}x{out[0]}x{out[1]}). Output size is too small"
        )
    # Pad the far side further so the (ceil_mode) last window fits: end of last window - padded size.
    extra = [max(0, (o - 1) * st + d * (k - 1) + 1 - (s + 2 * p))
             for o, st, d, k, s, p in zip(out, stride_, dil, kernel, (h, w), pad)]
    pads = (pad[0], pad[0] + extra[0], pad[1], pad[1] + extra[1])
    return kernel, stride_, dil, pads, out


def _batched(input: torch.Tensor) -> torch.Tensor:
    return input.unsqueeze(0) if input.dim() == 3 else input


def _unbatched_like(input: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y.squeeze(0) if input.dim() == 3 else y


# --------------------------------------------------------------------------------------------
# max pooling: the Γ mask, kept as the flat index of each window's argmax
# --------------------------------------------------------------------------------------------


def _first_max(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The max over dim 2 of r (N, C, K, Ho, Wo) and where it sits, the first one on ties (torch's rule).

    ``r.max(dim=2)`` computes the same pair, but its index-tracking reduction measured 3-12x
    slower on the CPU than the two plain reductions below (on LeNet-5's pooling, 2.2 ms against
    0.2 ms for the values alone). The position is

        arg = min over k of  k + K·[r_k < max]

    entries below the max count K more than their position, so the smallest term is the first k
    whose entry equals the max. (A window holding a NaN has a NaN max; every r_k < NaN is false,
    so arg points at the window's first entry, and the NaN value propagates as in torch.)
    """
    k_count = r.shape[2]
    values = r.amax(dim=2)
    below = torch.lt(r, values.unsqueeze(2))
    if 2 * k_count <= 256:  # k + K·1 < 2K fits a byte: read the booleans as the bytes 0/1 they are
        below = below.view(torch.uint8)
    else:
        below = below.to(torch.int32)
    position = torch.arange(k_count, dtype=below.dtype, device=r.device).view(1, 1, k_count, 1, 1)
    arg = below.mul_(k_count).add_(position).amin(dim=2)
    return values, arg.long()


class _MaxPool2d(torch.autograd.Function):
    """Max over each window; backward δ^(l-1) = Γ ⊙ upsample(δ^(l)) as a scatter-add at the argmax."""

    @staticmethod
    @amp_forward
    def forward(ctx, x, kernel, stride, pads, dilation):
        n, c, h, w = x.shape
        v = _windows(_zero_pad(x, pads, value=-math.inf), kernel, stride, dilation)  # (N, C, kh, kw, Ho, Wo)
        ho, wo = v.shape[-2:]
        values, arg = _first_max(v.reshape(n, c, kernel[0] * kernel[1], ho, wo))  # (N, C, Ho, Wo) each
        # Γ: where in the (unpadded) map each window's max sits, as the flat index h·W + w =
        # (where the window starts) + (where the argmax sits inside it). A lookup in a kh·kw table
        # measured 10-25x faster than computing i = arg // kw, j = arg % kw.
        dev = x.device
        i = torch.arange(kernel[0], device=dev).view(-1, 1) * dilation[0]
        j = torch.arange(kernel[1], device=dev) * dilation[1]
        offset = (i * w + j).flatten()  # (kh·kw,)
        start = ((torch.arange(ho, device=dev).view(-1, 1) * stride[0] - pads[0]) * w
                 + torch.arange(wo, device=dev) * stride[1] - pads[2])  # (Ho, Wo)
        index = offset.take(arg).add_(start)  # (N, C, Ho, Wo)
        ctx.save_for_backward(index)
        ctx.in_shape = x.shape
        ctx.mark_non_differentiable(index)
        return values, index

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, delta, _grad_index):
        (index,) = ctx.saved_tensors
        n, c, h, w = ctx.in_shape
        grad = delta.new_zeros(n, c, h * w)
        # upsample(δ) ⊙ Γ: each window's δ lands on its argmax pixel; overlapping windows add.
        grad.scatter_add_(2, index.reshape(n, c, -1), delta.reshape(n, c, -1))
        return grad.view(n, c, h, w), None, None, None, None


def max_pool2d(input: torch.Tensor, kernel_size: IntPair, stride: IntPair | None = None,
               padding: IntPair = 0, dilation: IntPair = 1, ceil_mode: bool = False,
               return_indices: bool = False):
    """``torch.nn.functional.max_pool2d`` with the Γ-mask backward of Hu, lecture 5.

    >>> max_pool2d(torch.randn(1, 1, 7, 7), 3, stride=2).shape  # AlexNet's overlapping pooling
    torch.Size([1, 1, 3, 3])
    """
    x = _batched(input)
    kernel, stride_, dil, pads, _ = _geometry(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d")
    values, index = _MaxPool2d.apply(x, kernel, stride_, pads, dil)
    values, index = _unbatched_like(input, values), _unbatched_like(input, index)
    return (values, index) if return_indices else values


# --------------------------------------------------------------------------------------------
# average pooling: downsample / poolingsize, and upsample / poolingsize back
# --------------------------------------------------------------------------------------------


def _divisor_1d(size: int, out: int, kernel: int, stride: int, pad: int, include_pad: bool,
                device: torch.device) -> torch.Tensor:
    """How many entries each window counts along one axis (PyTorch's rule)."""
    start = torch.arange(out, device=device) * stride - pad
    end = torch.clamp(start + kernel, max=size + pad)  # a ceil_mode window hanging past the padding
    if not include_pad:
        start, end = start.clamp(min=0), end.clamp(max=size)
    return end - start


class _AvgPool2d(torch.autograd.Function):
    """Window sum / divisor; backward spreads δ / divisor over each window (upsample / poolingsize)."""

    @staticmethod
    @amp_forward
    def forward(ctx, x, kernel, stride, pads, divisor):
        v = _windows(_zero_pad(x, pads), kernel, stride, (1, 1))  # (N, C, kh, kw, Ho, Wo)
        ctx.conf = (x.shape, kernel, stride, pads)
        ctx.save_for_backward(divisor)
        return v.sum((2, 3)) / divisor

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, delta):
        (divisor,) = ctx.saved_tensors
        (n, c, h, w), kernel, stride, pads = ctx.conf
        share = (delta / divisor).unsqueeze(2).unsqueeze(3)  # (N, C, 1, 1, Ho, Wo)
        cols = share.expand(-1, -1, kernel[0], kernel[1], -1, -1)  # upsample: same share per pixel
        grad = _col2im(cols, (h + pads[0] + pads[1], w + pads[2] + pads[3]), kernel, stride, (1, 1))
        return _crop(grad, pads), None, None, None, None


def avg_pool2d(input: torch.Tensor, kernel_size: IntPair, stride: IntPair | None = None,
               padding: IntPair = 0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None) -> torch.Tensor:
    """``torch.nn.functional.avg_pool2d`` with the upsample backward of Hu, lecture 5.

    >>> avg_pool2d(torch.ones(1, 1, 5, 5), 2, ceil_mode=True, count_include_pad=False)[0, 0, -1]
    tensor([1., 1., 1.])
    """
    x = _batched(input)
    kernel, stride_, _, pads, (ho, wo) = _geometry(x, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d")
    if divisor_override is not None:
        if divisor_override == 0:
            raise RuntimeError("divisor must be not zero")
        divisor = torch.full((ho, wo), float(divisor_override), dtype=x.dtype, device=x.device)
    else:
        h, w = x.shape[-2:]
        rows = _divisor_1d(h, ho, kernel[0], stride_[0], pads[0], count_include_pad, x.device)
        cols = _divisor_1d(w, wo, kernel[1], stride_[1], pads[2], count_include_pad, x.device)
        divisor = (rows.view(-1, 1) * cols).to(x.dtype)  # the pooling size of each window
    return _unbatched_like(input, _AvgPool2d.apply(x, kernel, stride_, pads, divisor))


# --------------------------------------------------------------------------------------------
# adaptive pooling: window i covers [floor(i·H/out), ceil((i+1)·H/out)), as in PyTorch
# --------------------------------------------------------------------------------------------


def _adaptive_bounds(size: int, out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.arange(out, device=device)
    return (i * size) // out, ((i + 1) * size + out - 1) // out


def _output_pair(x: torch.Tensor, output_size, name: str) -> tuple[int, int]:
    if x.dim() != 4:
        raise RuntimeError(f"{name}: expected a 3D or 4D input; received size {list(x.shape)}")
    if isinstance(output_size, int) or output_size is None:
        output_size = (output_size, output_size)
    out = tuple(s if o is None else int(o) for o, s in zip(output_size, x.shape[-2:]))
    if len(out) != 2 or min(out) < 1:
        raise RuntimeError(f"{name}: output_size must be positive; received output_size={output_size}")
    return out  # type: ignore[return-value]


def _average_matrix(size: int, out: int, x: torch.Tensor) -> torch.Tensor:
    """P (out, size) with P[i, start_i:end_i] = 1 / (end_i - start_i): one axis of the averaging."""
    start, end = _adaptive_bounds(size, out, x.device)
    pos = torch.arange(size, device=x.device)
    inside = (pos >= start.view(-1, 1)) & (pos < end.view(-1, 1))
    return inside.to(x.dtype) / (end - start).to(x.dtype).view(-1, 1)


class _AdaptiveAvgPool2d(torch.autograd.Function):
    """y = P_h · x · P_wᵀ (a rectangle's mean is separable); δx = P_hᵀ · δ · P_w."""

    @staticmethod
    @amp_forward
    def forward(ctx, x, p_h, p_w):
        ctx.save_for_backward(p_h, p_w)
        return p_h.matmul(x).matmul(p_w.t())  # (N, C, H, W) -> (N, C, oh, ow)

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, delta):
        p_h, p_w = ctx.saved_tensors
        return p_h.t().matmul(delta).matmul(p_w), None, None


def adaptive_avg_pool2d(input: torch.Tensor, output_size: int | tuple[int | None, int | None]) -> torch.Tensor:
    """``torch.nn.functional.adaptive_avg_pool2d``; ``output_size=1`` is global average pooling."""
    x = _batched(input)
    oh, ow = _output_pair(x, output_size, "adaptive_avg_pool2d")
    h, w = x.shape[-2:]
    y = _AdaptiveAvgPool2d.apply(x, _average_matrix(h, oh, x), _average_matrix(w, ow, x))
    return _unbatched_like(input, y)


def _gather_index(size: int, out: int, device: torch.device) -> torch.Tensor:
    """(out, longest window) positions per window; short windows repeat their last position,
    which cannot change a max and, coming later, never wins a tie."""
    start, end = _adaptive_bounds(size, out, device)
    longest = int((end - start).max())
    idx = start.view(-1, 1) + torch.arange(longest, device=device)
    return torch.minimum(idx, end.view(-1, 1) - 1)


class _AdaptiveMaxPool2d(_MaxPool2d):
    """Max over variable windows gathered by index; the backward (Γ as a scatter-add) is inherited."""

    @staticmethod
    @amp_forward
    def forward(ctx, x, rows, cols):
        n, c, h, w = x.shape
        v = x[:, :, rows[:, :, None, None], cols[None, None, :, :]]  # (N, C, oh, kh, ow, kw)
        v = v.permute(0, 1, 2, 4, 3, 5)  # (N, C, oh, ow, kh, kw)
        oh, ow, kh, kw = v.shape[2:]
        values, arg = v.reshape(n, c, oh, ow, kh * kw).max(dim=-1)
        oh_idx = torch.arange(oh, device=x.device).view(oh, 1)
        ow_idx = torch.arange(ow, device=x.device)
        index = rows[oh_idx, arg // kw] * w + cols[ow_idx, arg % kw]  # flat h·W + w of the argmax
        ctx.save_for_backward(index)
        ctx.in_shape = x.shape
        ctx.mark_non_differentiable(index)
        return values, index


def adaptive_max_pool2d(input: torch.Tensor, output_size: int | tuple[int | None, int | None],
                        return_indices: bool = False):
    """``torch.nn.functional.adaptive_max_pool2d``; ``output_size=1`` is global max pooling."""
    x = _batched(input)
    oh, ow = _output_pair(x, output_size, "adaptive_max_pool2d")
    h, w = x.shape[-2:]
    values, index = _AdaptiveMaxPool2d.apply(x, _gather_index(h, oh, x.device), _gather_index(w, ow, x.device))
    values, index = _unbatched_like(input, values), _unbatched_like(input, index)
    return (values, index) if return_indices else values


__all__ = ["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"]
