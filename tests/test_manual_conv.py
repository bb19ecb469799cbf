"""cnnlab.manual's linear, conv2d and conv1d against torch.nn.functional (float64, every gradient)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers_grad import check_gradcheck, check_op, check_same_error
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.manual import functional as MF

CONV2D_CASES = [
    # (input shape, weight shape, kwargs)
    ((2, 3, 8, 8), (4, 3, 3, 3), {}),
    ((1, 1, 28, 28), (6, 1, 5, 5), {"padding": 2}),  # LeNet-5's C1, batch 1
    ((2, 3, 9, 7), (5, 3, 2, 3), {"stride": (2, 1), "padding": (1, 0)}),  # non-square everything
    ((2, 3, 11, 10), (4, 3, 3, 3), {"stride": 3}),  # windows that do not tile the input exactly
    ((2, 4, 7, 9), (6, 2, 3, 2), {"groups": 2, "padding": 1}),
    ((2, 6, 6, 6), (6, 1, 3, 3), {"groups": 6, "padding": "same"}),  # depthwise
    ((1, 2, 8, 8), (3, 2, 4, 4), {"padding": "same"}),  # even kernel: the extra pad goes right/bottom
    ((1, 2, 9, 8), (3, 2, 3, 2), {"padding": "same", "dilation": 2}),
    ((2, 2, 10, 10), (3, 2, 3, 3), {"dilation": (2, 1), "stride": 2, "padding": 2}),
    ((2, 3, 5, 5), (2, 3, 5, 5), {"padding": "valid"}),  # kernel = input: one output pixel
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("x_shape, w_shape, kw", CONV2D_CASES)
def test_conv2d_matches_torch_output_and_all_gradients(x_shape, w_shape, kw):
    check_op([x_shape, w_shape, (w_shape[0],)], lambda x, w, b: F.conv2d(x, w, b, **kw),
             lambda x, w, b: MF.conv2d(x, w, b, **kw), names=["input", "weight", "bias"])


def test_conv2d_without_bias_and_unbatched_input_match_torch():
    check_op([(3, 7, 6), (4, 3, 3, 3)], lambda x, w: F.conv2d(x, w, stride=2), lambda x, w: MF.conv2d(x, w, stride=2))


def test_conv2d_on_a_non_contiguous_input_matches_torch():
    x = torch.randn(2, 8, 9, 3, dtype=torch.float64).permute(0, 3, 1, 2)  # (2, 3, 8, 9), channels last
    assert not x.is_contiguous()  # check_op clones it with the same strides
    check_op([x, (4, 3, 3, 3)], lambda x, w: F.conv2d(x, w, padding=1), lambda x, w: MF.conv2d(x, w, padding=1))
    check_op([x[:, :, 1:, ::2], (4, 3, 3, 3)], lambda x, w: F.conv2d(x, w), lambda x, w: MF.conv2d(x, w))


@pytest.mark.parametrize("kw", [{}, {"stride": 2, "padding": 1}, {"groups": 2, "dilation": 2}])
def test_conv2d_passes_gradcheck(kw):
    check_gradcheck([(2, 4, 6, 5), (2, 4 // kw.get("groups", 1), 3, 2), (2,)], lambda x, w, b: MF.conv2d(x, w, b, **kw))


def test_conv2d_gradient_equals_the_lectures_rot180_formulas():
    # Hu, lecture 5: dW = y *valid rot180(δ) and δ^(l-1) = δ *full w, written with torch's conv as the
    # "*": a correlation with rot180(δ) is a convolution with δ, and the full convolution with w
    # is a correlation of the zero-padded δ with rot180(w).
    x = torch.randn(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    delta = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    MF.conv2d(x, w).backward(delta)
    assert torch.allclose(w.grad, F.conv2d(x, delta))  # X ⋆ δ
    assert torch.allclose(x.grad, F.conv2d(F.pad(delta, (2, 2, 2, 2)), w.flip(-1, -2)))


CONV1D_CASES = [
    ((2, 3, 10), (4, 3, 3), {}),
    ((1, 2, 9), (4, 2, 4), {"stride": 2, "padding": 1}),
    ((2, 4, 8), (6, 2, 3), {"groups": 2, "padding": "same", "dilation": 2}),
]


@pytest.mark.parametrize("x_shape, w_shape, kw", CONV1D_CASES)
def test_conv1d_matches_torch_output_and_all_gradients(x_shape, w_shape, kw):
    check_op([x_shape, w_shape, (w_shape[0],)], lambda x, w, b: F.conv1d(x, w, b, **kw),
             lambda x, w, b: MF.conv1d(x, w, b, **kw), names=["input", "weight", "bias"])


@pytest.mark.parametrize("x_shape", [(5, 3), (2, 4, 3), (3,)])
def test_linear_matches_torch_for_any_leading_dims(x_shape):
    check_op([x_shape, (4, 3), (4,)], F.linear, MF.linear, names=["input", "weight", "bias"])
    check_gradcheck([x_shape, (4, 3), (4,)], MF.linear)


BAD_CONV = [
    ((2, 3, 8, 8), (4, 2, 3, 3), {}),  # channels do not match the weight
    ((2, 3, 8, 8), (4, 1, 3, 3), {"groups": 2}),  # groups do not divide the input channels
    ((2, 4, 8, 8), (3, 2, 3, 3), {"groups": 2}),  # groups do not divide the output channels
    ((2, 3, 8, 8), (4, 3, 9, 9), {}),  # kernel larger than the input
    ((2, 3, 8, 8), (4, 3, 3, 3), {"stride": 2, "padding": "same"}),
    ((2, 3, 8, 8), (4, 3, 3, 3), {"padding": "full"}),
    ((2, 3, 8, 8), (4, 3, 3, 3), {"padding": -1}),
    ((2, 3, 8, 8), (4, 3, 3, 3), {"stride": 0}),
    ((3, 8), (4, 3, 3, 3), {}),  # a 2-D input
]


@pytest.mark.parametrize("x_shape, w_shape, kw", BAD_CONV)
def test_conv2d_bad_input_raises_the_same_kind_of_error_as_torch(x_shape, w_shape, kw):
    x, w = torch.randn(x_shape), torch.randn(w_shape)
    check_same_error(lambda: F.conv2d(x, w, **kw), lambda: MF.conv2d(x, w, **kw))


def test_conv_and_linear_bad_shapes_raise_like_torch():
    x = torch.randn(2, 3, 8, 8)
    check_same_error(lambda: F.conv2d(x, torch.randn(4, 3, 3, 3), torch.randn(5)),
                     lambda: MF.conv2d(x, torch.randn(4, 3, 3, 3), torch.randn(5)))
    check_same_error(lambda: F.conv1d(torch.randn(2, 3, 8), torch.randn(4, 2, 3)),
                     lambda: MF.conv1d(torch.randn(2, 3, 8), torch.randn(4, 2, 3)))
    check_same_error(lambda: F.linear(torch.randn(2, 3), torch.randn(4, 5)),
                     lambda: MF.linear(torch.randn(2, 3), torch.randn(4, 5)))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 2), groups=st.sampled_from([1, 2]), c_per_group=st.integers(1, 2),
    o_per_group=st.integers(1, 2), kh=st.integers(1, 4), kw=st.integers(1, 4),
    sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
    dh=st.integers(1, 2), dw=st.integers(1, 2), extra_h=st.integers(0, 4), extra_w=st.integers(0, 4),
)
def test_conv2d_matches_torch_on_random_configurations(n, groups, c_per_group, o_per_group, kh, kw, sh, sw,
                                                      ph, pw, dh, dw, extra_h, extra_w):
    # The input is at least as large as the dilated kernel, so every configuration is valid.
    h = dh * (kh - 1) + 1 + extra_h
    w = dw * (kw - 1) + 1 + extra_w
    kwargs = {"stride": (sh, sw), "padding": (ph, pw), "dilation": (dh, dw), "groups": groups}
    check_op([(n, groups * c_per_group, h, w), (groups * o_per_group, c_per_group, kh, kw), (groups * o_per_group,)],
             lambda x, wt, b: F.conv2d(x, wt, b, **kwargs), lambda x, wt, b: MF.conv2d(x, wt, b, **kwargs),
             names=["input", "weight", "bias"])


def test_stacked_convs_reusing_the_scratch_buffers_match_torch():
    # Both convs of LeNet-5's shape family write their columns and products into the same
    # per-thread scratch buffers: every output and gradient must still be its own tensor.
    def net(conv, x, w1, b1, w2, b2):
        h = conv(x, w1, b1, padding=2)
        return torch.cat([conv(h, w2, b2).flatten(1), h.flatten(1)], 1)  # h is used twice

    check_op([(3, 1, 12, 12), (4, 1, 5, 5), (4,), (6, 4, 3, 3), (6,)],
             lambda *a: net(F.conv2d, *a), lambda *a: net(MF.conv2d, *a),
             names=["input", "w1", "b1", "w2", "b2"])


def test_conv2d_results_do_not_alias_the_scratch_buffers():
    x, w = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 3, 3)
    y1 = MF.conv2d(x, w)
    before = y1.clone()
    MF.conv2d(torch.randn(2, 3, 9, 9), w)  # same shapes: same scratch slots
    assert torch.equal(y1, before)
