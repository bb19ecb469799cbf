"""cnnlab.shapes: the lecture's worked examples, PyTorch's output shapes, and bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab import shapes
from cnnlab.errors import CnnlabError

# --- the lectures' worked examples -------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "expected"),
    [
        (7, 5, 1, 0, 3),  # Ryu, ch. 3: 7x7 image, 5x5 filter -> 3x3 ("spatial dimension 7 reduced to 3")
        (7, 5, 1, 2, 7),  # Ryu, ch. 3: zero padding 2 preserves the size
        (7, 3, 2, 0, 3),  # Ryu, ch. 3 and Hu, lecture 5: 3x3 filter, stride 2 -> 3x3
        (7, 3, 1, 0, 5),  # "(With stride 1, output is 5x5.)"
        (7, 3, 1, 1, 7),  # Hu, lecture 5: the "same" mode conv, pad 1
        (7, 3, 3, 1, 3),  # Ryu, ch. 3: 7x7 padded by 1 is 9x9, 3x3 stride 3 "does fit"
        (32, 5, 1, 0, 28),  # LeNet-5's C1 on the 32x32 (padded MNIST) input
        (28, 5, 1, 2, 28),  # modern LeNet-5: 28x28 MNIST with pad 2
        (227, 11, 4, 0, 55),  # AlexNet conv1: 227 -> 55
        (224, 11, 4, 2, 55),  # AlexNet conv1, torchvision layout: 224 with pad 2 -> 55
        (55, 3, 2, 0, 27),  # AlexNet's overlapping max pool f=3, s=2
        (224, 7, 2, 3, 112),  # ResNet's stem
    ],
)
def test_conv_output_size_matches_the_lectures_examples(size, kernel, stride, padding, expected):
    assert shapes.conv_output_size(size, kernel, stride, padding) == expected


def test_stride_three_on_seven_by_seven_does_not_fit():
    # Ryu, ch. 3: "If stride 3, dimensions don't fit." The default reports the floor ...
    assert shapes.conv_output_size(7, 3, stride=3) == 2
    assert not shapes.fits(7, 3, stride=3)
    # ... strict mode raises with the numbers.
    with pytest.raises(CnnlabError, match=r"don't fit.*\(7 - 3 \+ 2\*0\) / 3 = 4/3"):
        shapes.conv_output_size(7, 3, stride=3, strict=True)
    # With zero padding of 1 it "does fit".
    assert shapes.fits(7, 3, stride=3, padding=1)
    assert shapes.conv_output_size(7, 3, stride=3, padding=1, strict=True) == 3


def test_a_window_larger_than_the_padded_input_gives_zero_or_raises_in_strict_mode():
    assert shapes.conv_output_size(2, 3) == 0
    with pytest.raises(CnnlabError, match="larger than the padded input"):
        shapes.conv_output_size(2, 3, strict=True)


def test_nin_ceil_mode_rounds_up_as_the_lecture_says():
    # Ryu, ch. 3, NiN: "(32-3)/2 + 1 = 15.5 is rounded up to 16. Default behavior of PyTorch is to round down."
    assert shapes.pool_output_size(32, 3, 2, ceil_mode=True) == 16
    assert shapes.pool_output_size(32, 3, 2) == 15


def test_ceil_mode_drops_a_last_window_that_starts_in_the_right_padding():
    # 5 inputs, pad 1, kernel 2, stride 2: ceil((5+2-2)/2)+1 = 4, but the 4th window would start
    # at padded index 6, past the input (5) and its left padding (1): PyTorch keeps 3.
    assert shapes.pool_output_size(5, 2, 2, padding=1, ceil_mode=True) == 3
    assert F.max_pool2d(torch.zeros(1, 1, 5, 5), 2, 2, 1, ceil_mode=True).shape[-1] == 3


def test_dilation_widens_the_window():
    assert shapes.conv_output_size(10, 3, dilation=2) == 6  # the window spans 5


def test_conv_params_is_f_squared_cin_cout_plus_cout():
    assert shapes.conv_params(5, 1, 6) == 5 * 5 * 1 * 6 + 6
    assert shapes.conv_params(1, 192, 96) == 96 * 192 + 96  # Ryu, ch. 3: NiN's 1x1 conv
    assert shapes.conv_params((1, 7), 4, 8, bias=False) == 7 * 4 * 8
    assert shapes.conv_params(3, 128, 128, bias=False, groups=32) == 3 * 3 * 4 * 128


def test_alexnet_conv_and_linear_split_from_the_formulas():
    # Ryu, ch. 3: "AlexNet: Conv layer params: 2,469,696 (4%), Linear layer params: 58,631,144 (96%)".
    convs = [(11, 3, 64), (5, 64, 192), (3, 192, 384), (3, 384, 256), (3, 256, 256)]
    linears = [(256 * 6 * 6, 4096), (4096, 4096), (4096, 1000)]
    conv = sum(shapes.conv_params(k, i, o) for k, i, o in convs)
    linear = sum(shapes.linear_params(i, o) for i, o in linears)
    assert (conv, linear, conv + linear) == (2_469_696, 58_631_144, 61_100_840)


def test_vgg19_conv_and_linear_split_from_the_formulas():
    # Ryu, ch. 3: "VGG19: Conv layer params: 20,024,384 (14%), Linear layer params: 123,642,856 (86%)".
    widths = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]
    conv = sum(shapes.conv_params(3, i, o) for i, o in zip([3, *widths], widths))
    linear = sum(shapes.linear_params(i, o) for i, o in [(512 * 7 * 7, 4096), (4096, 4096), (4096, 1000)])
    assert (conv, linear) == (20_024_384, 123_642_856)


def test_lenet5_parameter_count_from_the_formulas():
    # conv 6@5x5 pad 2 -> pool -> conv 16@5x5 -> pool -> 120 -> 84 -> 10 on 28x28 MNIST.
    side = shapes.pool_output_size(shapes.conv_output_size(
        shapes.pool_output_size(shapes.conv_output_size(28, 5, padding=2), 2), 5), 2)
    assert side == 5
    total = (shapes.conv_params(5, 1, 6) + shapes.conv_params(5, 6, 16)
             + shapes.linear_params(16 * side * side, 120) + shapes.linear_params(120, 84)
             + shapes.linear_params(84, 10))
    assert total == 61_706


def test_same_padding_is_half_the_kernel_minus_one():
    # Hu's lecture 5 quiz: "If K is odd ... what is the pad size (on each side)?" (K-1)/2.
    assert [shapes.same_padding(k) for k in (1, 3, 5, 7, 11)] == [0, 1, 2, 3, 5]
    for k in (3, 5, 7):
        assert shapes.conv_output_size(13, k, padding=shapes.same_padding(k)) == 13


def test_same_padding_refuses_an_even_kernel():
    with pytest.raises(CnnlabError, match="odd kernel.*kernel=4"):
        shapes.same_padding(4)


def test_two_three_by_three_convs_see_five_by_five():
    # the optimization notes, VGG: "two succeeding layers of 3x3 filters have the same receptive field as a single 5x5".
    assert shapes.receptive_field([(3, 1), (3, 1)]) == 5 == shapes.receptive_field([(5, 1)])
    assert shapes.receptive_field([(3, 1)] * 3) == 7
    assert shapes.receptive_field([(3, 1, 2)]) == 5  # dilation 2
    assert shapes.receptive_field([(2, 2), (2, 2), (3, 1)]) == 1 + 1 + 2 + 2 * 4
    assert shapes.receptive_field([]) == 1


def test_receptive_field_refuses_malformed_layers():
    with pytest.raises(CnnlabError, match=r"\(kernel, stride\)"):
        shapes.receptive_field([(3,)])


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: shapes.conv_output_size(0, 3), "size=0"),
        (lambda: shapes.conv_output_size(7, 0), "kernel=0"),
        (lambda: shapes.conv_output_size(7, -3), "kernel=-3"),
        (lambda: shapes.conv_output_size(7, 3, stride=0), "stride=0"),
        (lambda: shapes.conv_output_size(7, 3, padding=-1), "padding=-1"),
        (lambda: shapes.conv_output_size(7, 3, dilation=0), "dilation=0"),
        (lambda: shapes.conv_output_size(7.0, 3), "size=7.0"),
        (lambda: shapes.pool_output_size(7, 3, padding=2), "padding=2"),
        (lambda: shapes.conv_params(0, 3, 6), "kernel=0"),
        (lambda: shapes.conv_params((3, 3, 3), 3, 6), r"kernel=\(3, 3, 3\)"),
        (lambda: shapes.conv_params(3, 6, 9, groups=4), "groups=4"),
        (lambda: shapes.linear_params(0, 10), "in_features=0"),
        (lambda: shapes.same_padding(-1), "kernel=-1"),
        (lambda: shapes.receptive_field([(3, 0)]), "stride=0"),
    ],
)
def test_bad_arguments_are_refused_with_the_received_value(call, message):
    with pytest.raises(CnnlabError, match=message):
        call()


# --- agreement with PyTorch --------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(1, 24),
    kernel=st.integers(1, 7),
    stride=st.integers(1, 4),
    padding=st.integers(0, 3),
    dilation=st.integers(1, 3),
)
def test_conv_output_size_matches_conv2d(size, kernel, stride, padding, dilation):
    expected = shapes.conv_output_size(size, kernel, stride, padding, dilation)
    x, w = torch.zeros(1, 1, size, size), torch.zeros(1, 1, kernel, kernel)
    if expected == 0:
        with pytest.raises(RuntimeError):
            F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)
    else:
        assert F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation).shape[-1] == expected


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(1, 24),
    kernel=st.integers(1, 6),
    stride=st.integers(1, 4),
    dilation=st.integers(1, 2),
    ceil_mode=st.booleans(),
    data=st.data(),
)
def test_pool_output_size_matches_max_pool2d_and_avg_pool2d(size, kernel, stride, dilation, ceil_mode, data):
    padding = data.draw(st.integers(0, kernel // 2))
    expected = shapes.pool_output_size(size, kernel, stride, padding, dilation, ceil_mode)
    x = torch.zeros(1, 1, size, size)
    if expected == 0:
        with pytest.raises(RuntimeError):
            F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
        return
    assert F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode).shape[-1] == expected
    if dilation == 1:
        assert F.avg_pool2d(x, kernel, stride, padding, ceil_mode).shape[-1] == expected
