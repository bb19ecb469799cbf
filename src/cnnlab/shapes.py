"""The lecture's layer formulas as functions: output sizes, parameter counts, "same" padding and
receptive fields. Pure Python (no torch), and the single source of truth for
``cnnlab.inspect.summary`` and ``cnnlab.inspect.check_input_size``.

    >>> conv_output_size(32, 5)             # 32x32 image, 5x5 filter: a 28x28 map
    28
    >>> conv_output_size(227, 11, stride=4)  # AlexNet's first layer
    55
    >>> conv_output_size(7, 3, stride=3)     # Ryu, ch. 3: "If stride 3, dimensions don't fit."
    2
    >>> conv_params(5, 3, 6)                 # F^2 C_in C_out + C_out
    456
    >>> receptive_field([(3, 1), (3, 1)])    # two 3x3 convs see 5x5 (VGG's observation)
    5

All sizes are along one spatial dimension; call once per dimension for an H x W map.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from cnnlab.errors import CnnlabError

__all__ = [
    "conv_output_size",
    "conv_params",
    "fits",
    "linear_params",
    "pool_output_size",
    "receptive_field",
    "receptive_field_step",
    "same_padding",
]


def _positive(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CnnlabError(f"{name} must be a positive integer; received {name}={value!r}")
    return value


def _non_negative(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CnnlabError(f"{name} must be a non-negative integer; received {name}={value!r}")
    return value


def _pair(name: str, kernel: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(kernel, int):
        return _positive(name, kernel), kernel
    kernel = tuple(kernel)
    if len(kernel) != 2:
        raise CnnlabError(f"{name} must be an int or a (height, width) pair; received {name}={kernel!r}")
    return _positive(name, kernel[0]), _positive(name, kernel[1])


def conv_output_size(
    size: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
    *,
    strict: bool = False,
) -> int:
    """Output length of a convolution or pooling window sliding over ``size`` inputs.

    The lecture's W_out = floor((W - F + 2P) / S) + 1 (Ryu, ch. 3, "Convolution summary"), where a
    dilated kernel spans F_eff = dilation * (F - 1) + 1 inputs. With ``ceil_mode`` the division
    rounds up, with PyTorch's rule that the last window must start inside the input or the left
    padding (otherwise it is dropped).

    When (W - F_eff + 2P) is not a multiple of S the "dimensions don't fit" (Ryu, ch. 3: a 7x7
    image, 3x3 filter, stride 3): the default reports the floor (the last inputs are ignored,
    as PyTorch does) and ``strict=True`` raises with the numbers. 0 means that not even one
    window fits in the padded input; ``strict=True`` raises then too. (With ``ceil_mode`` a
    last window may hang over the right edge, so even a too-short input can give 1.)
    """
    _positive("size", size)
    _positive("kernel", kernel)
    _positive("stride", stride)
    _non_negative("padding", padding)
    _positive("dilation", dilation)
    span = dilation * (kernel - 1) + 1  # inputs covered by one (dilated) window
    room = size + 2 * padding - span  # positions the window can move by
    if strict and room < 0:
        raise CnnlabError(
            f"dimensions don't fit: a window spanning {span} is larger than the padded input "
            f"{size} + 2*{padding} = {size + 2 * padding}"
        )
    if strict and room % stride:
        raise CnnlabError(
            f"dimensions don't fit: (W - F + 2P) / S = ({size} - {span} + 2*{padding}) / {stride} "
            f"= {room}/{stride} is not an integer; use padding or a stride that divides {room}"
        )
    if not ceil_mode:
        return max(room // stride + 1, 0)
    # Rounding up lets the last window hang over the right edge (even when the input is shorter
    # than one window), but PyTorch (aten pooling_output_shape) drops a last window that would
    # start in the right padding.
    out = -(-room // stride) + 1
    if out > 0 and (out - 1) * stride >= size + padding:
        out -= 1
    return max(out, 0)


def pool_output_size(
    size: int,
    kernel: int,
    stride: int | None = None,
    padding: int = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
    *,
    strict: bool = False,
) -> int:
    """Output length of a max or average pool: ``conv_output_size`` with PyTorch's pooling defaults
    (stride = kernel) and its rule that padding is at most half the kernel.

    >>> pool_output_size(32, 3, 2, ceil_mode=True)  # NiN for CIFAR10: (32-3)/2+1 = 15.5 -> 16
    16
    """
    stride = kernel if stride is None else stride
    _positive("kernel", kernel)
    _positive("dilation", dilation)
    _non_negative("padding", padding)
    if 2 * padding > kernel:
        raise CnnlabError(
            f"pooling padding must be at most half the kernel; received padding={padding} for kernel={kernel}"
        )
    return conv_output_size(size, kernel, stride, padding, dilation, ceil_mode, strict=strict)


def fits(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> bool:
    """Whether the windows tile the padded input exactly (no input left over at the end).

    >>> fits(7, 3, stride=3), fits(7, 3, stride=3, padding=1)
    (False, True)
    """
    try:
        conv_output_size(size, kernel, stride, padding, dilation, strict=True)
    except CnnlabError as error:
        if str(error).startswith("dimensions don't fit"):
            return False
        raise
    return True


def conv_params(
    kernel: int | Sequence[int], c_in: int, c_out: int, bias: bool = True, groups: int = 1
) -> int:
    """Trainable parameters of a conv layer: F^2 C_in C_out / groups weights + C_out biases.

    >>> conv_params(11, 3, 96)               # AlexNet conv1
    34944
    >>> conv_params((3, 3), 128, 128, bias=False, groups=32)  # ResNeXt's grouped 3x3
    4608
    """
    kh, kw = _pair("kernel", kernel)
    _positive("c_in", c_in)
    _positive("c_out", c_out)
    _positive("groups", groups)
    if c_in % groups or c_out % groups:
        raise CnnlabError(
            f"groups must divide both channel counts; received groups={groups}, c_in={c_in}, c_out={c_out}"
        )
    return kh * kw * (c_in // groups) * c_out + (c_out if bias else 0)


def linear_params(in_features: int, out_features: int, bias: bool = True) -> int:
    """Trainable parameters of a fully connected layer: n_in n_out weights + n_out biases.

    >>> linear_params(256 * 6 * 6, 4096)     # AlexNet's first linear layer
    37752832
    """
    _positive("in_features", in_features)
    _positive("out_features", out_features)
    return in_features * out_features + (out_features if bias else 0)


def same_padding(kernel: int, dilation: int = 1) -> int:
    """The padding that keeps the size at stride 1: (K - 1) / 2 on each side (Hu, lecture 5, "same" mode).

    >>> same_padding(3), same_padding(5), same_padding(3, dilation=2)
    (1, 2, 2)
    """
    _positive("kernel", kernel)
    _positive("dilation", dilation)
    span = dilation * (kernel - 1) + 1
    if span % 2 == 0:
        raise CnnlabError(
            f"'same' padding needs an odd kernel (an even one pads unequally on the two sides); "
            f"received kernel={kernel}, dilation={dilation}"
        )
    return (span - 1) // 2


def receptive_field_step(
    rf: int, jump: int, kernel: int, stride: int = 1, dilation: int = 1
) -> tuple[int, int]:
    """One layer's effect on (receptive field, jump): a window of ``kernel`` positions of a map
    whose neighbouring positions lie ``jump`` input pixels apart widens the field by
    (kernel - 1) * dilation * jump, and the stride multiplies the jump. Padding changes neither.
    """
    _positive("rf", rf)
    _positive("jump", jump)
    _positive("kernel", kernel)
    _positive("stride", stride)
    _positive("dilation", dilation)
    return rf + (kernel - 1) * dilation * jump, jump * stride


def receptive_field(layers: Iterable[Sequence[int]]) -> int:
    """Receptive field, in input pixels, of one output of a stack of ``(kernel, stride)`` or
    ``(kernel, stride, dilation)`` layers (convolutions and pools alike).

    >>> receptive_field([(3, 1)] * 3)        # three 3x3 convs see 7x7
    7
    >>> receptive_field([(11, 4), (3, 2)])   # AlexNet conv1, then its overlapping pool
    19
    """
    rf, jump = 1, 1
    for layer in layers:
        layer = tuple(layer)
        if len(layer) not in (2, 3):
            raise CnnlabError(
                f"each layer must be (kernel, stride) or (kernel, stride, dilation); received {layer!r}"
            )
        rf, jump = receptive_field_step(rf, jump, *layer)
    return rf
