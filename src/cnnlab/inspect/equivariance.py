"""Shift equivariance and invariance, measured layer by layer (Ryu, ch. 3: "convolution is
equivariant with respect to translations"; Saremi 2024: pooling "also adds invariances").

    >>> result = shift_equivariance(model, x, shifts=(1, 2, 4))
    >>> for row in result.rows: print(row.layer, row.shift, row.error)

For each conv and pooling layer l with cumulative stride S_l, and each input shift s (applied
down and right at once), the error is

    ||f_l(shift_s(x)) - shift_{s // S_l}(f_l(x))|| / ||f_l(x)||

A stride-1 convolution with circular padding is exactly equivariant under circular shifts (error
0). Past a layer of stride S only shifts by multiples of S can commute (``exact`` marks them);
other shifts move the feature map by a fraction of a cell, which subsampling cannot represent.
With ``mode="zero"`` the shift fills with zeros instead of wrapping, so borders add error.

The logits' relative change and the fraction of predictions kept measure invariance at the output.
Strides are read off the layers' output sizes on ``x`` and on ``x`` enlarged by 64 pixels (a
forward that fails later, at a flatten into a fixed-size linear layer, is fine: the spatial layers
have run by then).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from cnnlab.errors import CnnlabError
from cnnlab.inspect.filters import activations

_PAD = 64


@dataclass(frozen=True)
class EquivarianceRow:
    layer: str
    stride: tuple[int, int]  # cumulative stride of the layer's output (height, width)
    shift: int  # input shift in pixels (down and right)
    exact: bool  # the shift is a multiple of the stride, so equivariance can hold exactly
    error: float  # relative error (see the module docstring)


@dataclass
class Equivariance:
    rows: list[EquivarianceRow]
    logit_change: dict[int, float] = field(default_factory=dict)  # shift -> ||z(shift x) - z(x)|| / ||z(x)||
    prediction_kept: dict[int, float] = field(default_factory=dict)  # shift -> fraction of argmax unchanged


def shift(x: Tensor, dy: int, dx: int, mode: str = "circular") -> Tensor:
    """Shift the last two dimensions down by ``dy`` and right by ``dx`` (wrapping, or zero-filling)."""
    if mode not in ("circular", "zero"):
        raise CnnlabError(f"the shift mode is 'circular' or 'zero'; received {mode[:40]!r}")
    out = torch.roll(x, (dy, dx), dims=(-2, -1))
    if mode == "zero":
        out = out.clone()
        if dy > 0:
            out[..., :dy, :] = 0
        elif dy < 0:
            out[..., dy:, :] = 0
        if dx > 0:
            out[..., :, :dx] = 0
        elif dx < 0:
            out[..., :, dx:] = 0
    return out


def _spatial_sizes(model: nn.Module, x: Tensor) -> dict[str, tuple[int, int]]:
    sizes: dict[str, tuple[int, int]] = {}
    handles = []
    kinds = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
             nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
    for name, m in model.named_modules():
        if name and isinstance(m, kinds):
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: sizes.__setitem__(name, tuple(out.shape[-2:]))
                if isinstance(out, Tensor) and out.ndim == 4 else None))
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # noqa: BLE001 - a fixed-size layer after the spatial ones; their sizes are recorded
        pass
    finally:
        for h in handles:
            h.remove()
    return sizes


def layer_strides(model: nn.Module, x: Tensor) -> dict[str, tuple[int, int]]:
    """Cumulative stride (height, width) of every conv/pool layer's output, by module path."""
    small = _spatial_sizes(model, x[:1])
    big = _spatial_sizes(model, nn.functional.pad(x[:1], (0, _PAD, 0, _PAD)))
    strides = {}
    for name, (h, w) in small.items():
        if name in big and big[name][0] > h and big[name][1] > w:
            strides[name] = (max(1, round(_PAD / (big[name][0] - h))), max(1, round(_PAD / (big[name][1] - w))))
    return strides


def shift_equivariance(model: nn.Module, x: Tensor, shifts: Sequence[int] = (1, 2, 4), mode: str = "circular"
                       ) -> Equivariance:
    """How far each conv/pool layer is from commuting with shifts of the input (see the module doc)."""
    if not shifts or any(int(s) != s or s < 0 for s in shifts):
        raise CnnlabError(f"shifts are non-negative whole pixels; received {list(shifts)[:10]}")
    if x.ndim != 4:
        raise CnnlabError(f"expected a batch of images (N, C, H, W); received shape {tuple(x.shape)}")
    strides = layer_strides(model, x)
    base = activations(model, x, kinds=("conv", "pool"))
    with torch.no_grad():
        z0 = model(x)
    result = Equivariance(rows=[])
    for s in shifts:
        xs = shift(x, s, s, mode)
        moved = activations(model, xs, kinds=("conv", "pool"))
        for name, f0 in base.items():
            if name not in strides or f0.ndim != 4:
                continue  # not spatial (e.g. global pooling to 1x1 has no stride to read)
            sh, sw = strides[name]
            ref = shift(f0, s // sh, s // sw, mode)
            err = float((moved[name] - ref).norm() / f0.norm().clamp_min(1e-12))
            result.rows.append(EquivarianceRow(name, (sh, sw), int(s), s % sh == 0 and s % sw == 0, err))
        with torch.no_grad():
            z = model(xs)
        result.logit_change[int(s)] = float((z - z0).norm() / z0.norm().clamp_min(1e-12))
        result.prediction_kept[int(s)] = float((z.argmax(1) == z0.argmax(1)).float().mean())
    return result
