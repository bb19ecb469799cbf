"""A convolution as a matrix: the weight-sharing (Toeplitz) matrix A_w of Ryu, ch. 3.

"If we consider convolution with filter w as a linear operator, the components of w appear many
times in the matrix representation" (Ryu, ch. 3, "Weight sharing"). For a 1D filter w = (w_1..w_r):

    A_w = [ w_1 ... w_r  0  ...  0 ]
          [ 0  w_1 ... w_r  0 ... 0 ]
          [          ...           ]

Row (o, i, j) of A_w holds the filter of output channel o, placed where the window of output
position (i, j) lies on the flattened input; stride spaces the rows' windows further apart,
zero padding drops the taps that fall outside the input, groups leave the other groups' columns 0.

    >>> import torch
    >>> from torch import nn
    >>> conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    >>> x = torch.randn(2, 5, 5)
    >>> A = conv_matrix(conv, x.shape)                       # (3*3*3, 2*5*5)
    >>> y = A @ x.flatten() + conv_bias_vector(conv, x.shape)
    >>> torch.allclose(y, conv(x.unsqueeze(0)).flatten(), atol=1e-6)
    True

The matrix is the linear part only: the bias is added separately (``conv_bias_vector``), so that
A_w stays the lecture's matrix. It is dense, (C_out H_out W_out) x (C_in H W): mind the size.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnnlab import shapes
from cnnlab.errors import CnnlabError


def _geometry(conv: nn.Module, input_shape: Sequence[int]) -> tuple:
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d)):
        raise CnnlabError(f"conv_matrix takes an nn.Conv1d or nn.Conv2d; received {type(conv).__name__}")
    if conv.padding_mode != "zeros":
        raise CnnlabError(
            f"conv_matrix supports zero padding only; received padding_mode={conv.padding_mode!r}"
        )
    spatial = 2 if isinstance(conv, nn.Conv2d) else 1
    shape = tuple(input_shape)
    if len(shape) != spatial + 1 or shape[0] != conv.in_channels:
        raise CnnlabError(
            f"input_shape must be (C_in, {'H, W' if spatial == 2 else 'L'}) with C_in={conv.in_channels}; "
            f"received input_shape={shape}"
        )
    # Conv1d as a Conv2d of height 1, so that one code path serves both.
    size = shape[1:] if spatial == 2 else (1, shape[1])
    kernel = tuple(conv.kernel_size) if spatial == 2 else (1, conv.kernel_size[0])
    stride = tuple(conv.stride) if spatial == 2 else (1, conv.stride[0])
    dilation = tuple(conv.dilation) if spatial == 2 else (1, conv.dilation[0])
    if conv.padding == "same":
        # PyTorch pads "same" with total d(k-1), the extra pixel (for even spans) on the right.
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    elif conv.padding == "valid":
        padding = (0, 0)
    else:
        padding = tuple(conv.padding) if spatial == 2 else (0, conv.padding[0])
    if conv.padding == "same":
        out = size
    else:
        out = tuple(shapes.conv_output_size(s, k, st, p, d)
                    for s, k, st, p, d in zip(size, kernel, stride, padding, dilation))
    if min(out) < 1:
        raise CnnlabError(f"the kernel does not fit in input_shape={shape} with padding {conv.padding}")
    return size, kernel, stride, padding, dilation, out


def conv_matrix(conv: nn.Conv1d | nn.Conv2d, input_shape: Sequence[int]) -> Tensor:
    """A_w with ``A_w @ x.flatten() == conv(x).flatten() - bias`` for one input ``x`` of
    ``input_shape`` (C_in, H, W), or (C_in, L) for Conv1d. Differentiable in ``conv.weight``."""
    (h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw), (ho, wo) = _geometry(conv, input_shape)
    weight = conv.weight.reshape(conv.out_channels, conv.in_channels // conv.groups, kh, kw)
    c_out, c_group = weight.shape[:2]
    per_group = c_out // conv.groups
    # Every (output channel o, output position (i, j), input channel c of o's group, tap (a, b)),
    # broadcast to shape (C_out, H_out, W_out, C_in/groups, kh, kw).
    o = torch.arange(c_out).view(-1, 1, 1, 1, 1, 1)
    i = torch.arange(ho).view(1, -1, 1, 1, 1, 1)
    j = torch.arange(wo).view(1, 1, -1, 1, 1, 1)
    c = torch.arange(c_group).view(1, 1, 1, -1, 1, 1)
    a = torch.arange(kh).view(1, 1, 1, 1, -1, 1)
    b = torch.arange(kw).view(1, 1, 1, 1, 1, -1)
    row = (o * ho + i) * wo + j  # output index, as in conv(x).flatten()
    y = i * sh + a * dh - ph  # input pixel that tap (a, b) of window (i, j) lands on
    x = j * sw + b * dw - pw
    channel = (o // per_group) * c_group + c
    col = (channel * h + y) * w + x
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)  # taps on the zero padding contribute nothing
    full = (c_out, ho, wo, c_group, kh, kw)
    rows, cols = row.expand(full)[inside.expand(full)], col.expand(full)[inside.expand(full)]
    values = weight.view(c_out, 1, 1, c_group, kh, kw).expand(full)[inside.expand(full)]
    matrix = torch.zeros(c_out * ho * wo, conv.in_channels * h * w, dtype=weight.dtype, device=weight.device)
    return matrix.index_put((rows, cols), values)


def conv_bias_vector(conv: nn.Conv1d | nn.Conv2d, input_shape: Sequence[int]) -> Tensor:
    """The bias as a vector of conv(x).flatten()'s length: each channel's bias at each position
    (zeros when the conv has no bias)."""
    *_, out = _geometry(conv, input_shape)
    positions = out[0] * out[1]
    if conv.bias is None:
        return torch.zeros(conv.out_channels * positions, dtype=conv.weight.dtype, device=conv.weight.device)
    return conv.bias.repeat_interleave(positions)
