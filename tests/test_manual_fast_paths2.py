"""The manual conv's input gradient one input channel at a time equals the plain form and autograd.

``_flat_input_grad`` splits Wᵀ · δ by input channel (Hu, lecture 5: δ_p^(l-1) = Σ_q δ_q *full w_qp,
one p at a time) so that each chunk is added back while it is still in the cache. These tests pin
that the chunked form gives autograd's gradients in float64 (groups, dilation, padding, chunks of
one and of several channels) and the plain form's planes in float32, and that it is really taken.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers_grad import check_op

from cnnlab.manual import conv as manual_conv
from cnnlab.manual import functional as MF


def _chunk_sizes(monkeypatch) -> list[int]:
    """Record how many input channels per chunk each _flat_input_grad call chose."""
    sizes: list[int] = []
    original = manual_conv._channels_per_chunk

    def spy(*args):
        sizes.append(original(*args))
        return sizes[-1]

    monkeypatch.setattr(manual_conv, "_channels_per_chunk", spy)
    return sizes


@pytest.mark.parametrize("budget_channels", [1, 2, 3])
@pytest.mark.parametrize("shape, weight, padding, dilation, groups", [
    ((3, 6, 14, 14), (16, 6, 5, 5), 0, 1, 1),    # LeNet-5's second conv, smaller batch
    ((2, 4, 9, 8), (6, 2, 3, 3), 1, 1, 2),       # groups, padding
    ((2, 3, 11, 10), (4, 3, 3, 2), 2, 2, 1),     # dilation, a non-square kernel
])
def test_input_gradient_by_channel_chunks_matches_autograd(monkeypatch, budget_channels, shape, weight,
                                                           padding, dilation, groups):
    n, c, h, w = shape
    kh, kw = weight[2:]
    ho = h + 2 * padding - dilation * (kh - 1)
    wp = w + 2 * padding
    per_channel = kh * kw * n * ho * wp * 8  # bytes of one channel's rows of Wᵀ · δ in float64
    monkeypatch.setattr(manual_conv, "_CHUNK_BYTES", budget_channels * per_channel)
    sizes = _chunk_sizes(monkeypatch)
    check_op([shape, weight, (weight[0],)],
             lambda x, w_, b: F.conv2d(x, w_, b, padding=padding, dilation=dilation, groups=groups),
             lambda x, w_, b: MF.conv2d(x, w_, b, padding=padding, dilation=dilation, groups=groups),
             names=["input", "weight", "bias"])
    assert sizes == [min(budget_channels, c // groups)]


def test_chunked_input_gradient_equals_the_plain_form_in_float32():
    gen = torch.Generator().manual_seed(0)
    n, c, h, w, o, k = 8, 6, 14, 14, 16, 5
    weight = torch.randn(o, c, k, k, generator=gen)
    ho, wp = h - k + 1, w
    dflat = torch.randn(o, n * ho * wp, generator=gen)
    shape = (n, c, h + 1, wp)
    plain = manual_conv._flat_col2im(torch.mm(weight.reshape(o, -1).t(), dflat), shape, (k, k), (1, 1), ho).clone()
    old = manual_conv._CHUNK_BYTES
    try:
        manual_conv._CHUNK_BYTES = k * k * n * ho * wp * 4  # one channel per chunk
        chunked = manual_conv._flat_input_grad(weight, dflat, shape, (1, 1), 1, ho).clone()
    finally:
        manual_conv._CHUNK_BYTES = old
    # Each plane sums the same terms in the same (i, j) order; only the matmul's blocking may differ.
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-6)


def test_a_large_delta_takes_the_plain_form_in_one_product(monkeypatch):
    monkeypatch.setattr(manual_conv, "_CHUNK_BYTES", 64)  # δ is larger than this: no chunks
    calls = []
    original = manual_conv._flat_col2im
    monkeypatch.setattr(manual_conv, "_flat_col2im", lambda *a: calls.append(1) or original(*a))
    check_op([(2, 3, 7, 7), (4, 3, 3, 3)], lambda x, w_: F.conv2d(x, w_, padding=1),
             lambda x, w_: MF.conv2d(x, w_, padding=1), names=["input", "weight"])
    assert calls == [1]
