"""cnnlab.manual's pooling against torch.nn.functional: Γ-mask max, upsample average, adaptive."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers_grad import check_gradcheck, check_op, check_same_error
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.manual import functional as MF

POOL_CASES = [
    # (input shape, kwargs)
    ((2, 3, 8, 8), {"kernel_size": 2}),  # LeNet's 2x2, stride 2
    ((1, 2, 7, 7), {"kernel_size": 3, "stride": 2}),  # AlexNet's overlapping f=3, s=2 (Ryu, ch. 3)
    ((2, 3, 9, 7), {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 0)}),
    ((2, 2, 8, 9), {"kernel_size": 3, "stride": 2, "ceil_mode": True}),
    ((2, 2, 6, 6), {"kernel_size": 2, "stride": 4, "padding": 1, "ceil_mode": True}),  # last window dropped
    ((1, 1, 5, 5), {"kernel_size": 2, "ceil_mode": True}),  # a window hanging off the edge
    ((3, 10, 9), {"kernel_size": 3, "stride": 2, "padding": 1}),  # unbatched
]


@pytest.mark.parametrize("shape, kw", POOL_CASES)
def test_max_pool2d_matches_torch_values_indices_and_gradient(shape, kw):
    check_op([shape], lambda x: F.max_pool2d(x, **kw, return_indices=True),
             lambda x: MF.max_pool2d(x, **kw, return_indices=True))


@pytest.mark.parametrize("dilation", [2, (1, 2)])
def test_max_pool2d_with_dilation_matches_torch(dilation):
    kw = {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": dilation, "ceil_mode": True}
    check_op([(2, 2, 11, 10)], lambda x: F.max_pool2d(x, **kw), lambda x: MF.max_pool2d(x, **kw))


@pytest.mark.parametrize("shape, kw", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_matches_torch(shape, kw, count_include_pad):
    check_op([shape], lambda x: F.avg_pool2d(x, **kw, count_include_pad=count_include_pad),
             lambda x: MF.avg_pool2d(x, **kw, count_include_pad=count_include_pad))


def test_avg_pool2d_divisor_override_matches_torch():
    kw = {"kernel_size": 3, "stride": 2, "padding": 1, "divisor_override": 4}
    check_op([(2, 3, 7, 8)], lambda x: F.avg_pool2d(x, **kw), lambda x: MF.avg_pool2d(x, **kw))


def test_max_pool_gradient_is_the_gamma_mask_times_the_upsampled_delta():
    # Hu's lecture 5 quiz: y1 >= y2 and y3 >= y4 in a 1-D map pooled by 2: δ flows to y1 and y3 only.
    x = torch.tensor([[[[4.0, 1.0, 3.0, 2.0]]]], requires_grad=True)
    MF.max_pool2d(x, (1, 2)).backward(torch.tensor([[[[10.0, 20.0]]]]))
    assert x.grad.flatten().tolist() == [10.0, 0.0, 20.0, 0.0]


def test_avg_pool_gradient_is_the_upsampled_delta_over_the_pooling_size():
    x = torch.zeros(1, 1, 1, 4, requires_grad=True)
    MF.avg_pool2d(x, (1, 2)).backward(torch.tensor([[[[10.0, 20.0]]]]))
    assert x.grad.flatten().tolist() == [5.0, 5.0, 10.0, 10.0]  # δ^(l-1) = upsample(δ) / 2


def test_overlapping_max_pool_adds_the_deltas_of_every_window_a_pixel_wins():
    # The centre pixel is the max of all four overlapping 3x3 windows (stride 2) of a 5x5 map.
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    x.requires_grad_()
    MF.max_pool2d(x, 3, stride=2).sum().backward()
    assert x.grad[0, 0, 2, 2] == 4.0 and x.grad.sum() == 4.0


def test_max_pool_ties_go_to_the_first_maximum_like_torch():
    x = torch.zeros(1, 2, 4, 4, dtype=torch.float64)  # all ties, e.g. after a ReLU
    check_op([x], lambda x: F.max_pool2d(x, 2), lambda x: MF.max_pool2d(x, 2))


@pytest.mark.parametrize("out", [1, (1, 1), 2, (3, 4), (None, 2), (5, 3)])
def test_adaptive_pools_match_torch_for_global_divisible_and_general_sizes(out):
    check_op([(2, 3, 6, 8)], lambda x: F.adaptive_avg_pool2d(x, out), lambda x: MF.adaptive_avg_pool2d(x, out))
    check_op([(2, 3, 6, 8)], lambda x: F.adaptive_max_pool2d(x, out, return_indices=True),
             lambda x: MF.adaptive_max_pool2d(x, out, return_indices=True))


def test_pools_pass_gradcheck():
    check_gradcheck([(2, 2, 7, 6)], lambda x: MF.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True))
    check_gradcheck([(2, 2, 7, 6)], lambda x: MF.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True,
                                                             count_include_pad=False))
    check_gradcheck([(2, 2, 7, 6)], lambda x: MF.adaptive_avg_pool2d(x, (3, 4)))
    check_gradcheck([(2, 2, 7, 6)], lambda x: MF.adaptive_max_pool2d(x, (3, 4)))


BAD_POOL = [
    {"kernel_size": 9},  # window larger than the input
    {"kernel_size": 2, "padding": 2},  # pad more than half the kernel
    {"kernel_size": 2, "stride": 0},
]


@pytest.mark.parametrize("kw", BAD_POOL)
def test_pool_bad_arguments_raise_the_same_kind_of_error_as_torch(kw):
    x = torch.randn(2, 3, 8, 8)
    check_same_error(lambda: F.max_pool2d(x, **kw), lambda: MF.max_pool2d(x, **kw))
    check_same_error(lambda: F.avg_pool2d(x, **kw), lambda: MF.avg_pool2d(x, **kw))


@settings(max_examples=30, deadline=None)
@given(
    kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
    ph=st.integers(0, 2), pw=st.integers(0, 2), extra_h=st.integers(0, 5), extra_w=st.integers(0, 5),
    ceil_mode=st.booleans(), count_include_pad=st.booleans(),
)
def test_pools_match_torch_on_random_configurations(kh, kw, sh, sw, ph, pw, extra_h, extra_w, ceil_mode,
                                                    count_include_pad):
    ph, pw = min(ph, kh // 2), min(pw, kw // 2)  # torch's limit: pad <= kernel / 2
    shape = (2, 2, kh + extra_h, kw + extra_w)
    kwargs = {"kernel_size": (kh, kw), "stride": (sh, sw), "padding": (ph, pw), "ceil_mode": ceil_mode}
    check_op([shape], lambda x: F.max_pool2d(x, **kwargs), lambda x: MF.max_pool2d(x, **kwargs))
    check_op([shape], lambda x: F.avg_pool2d(x, **kwargs, count_include_pad=count_include_pad),
             lambda x: MF.avg_pool2d(x, **kwargs, count_include_pad=count_include_pad))
