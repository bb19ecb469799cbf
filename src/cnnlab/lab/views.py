"""What the lab's "Look inside", "Convolution" and "Draw" views compute, as plain JSON-able data.

    activations(model, x)       every layer's output for one image (CNN Explainer's overview)
    first_filters(model)        the first convolution's kernels
    conv_explained(...)         one output neuron of a conv layer: the window, the kernel, the
                                dot product written out, checked against the layer's real output
    mnist_like(pixels)          a drawing -> 28x28 as MNIST was made (20x20 box, center of mass)

Values sent to the page as images are scaled to 0..255 over the whole layer (so that maps of one
layer compare), with the layer's min and max alongside.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError

MAX_UNITS = 40  # layers shown in the overview
MAX_CHANNELS = 24  # maps shown per layer
MAX_SIDE = 32  # larger maps are average-pooled down to this for the overview
MAX_VECTOR = 256


def units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers the overview shows: the model's children, and the children of its Sequentials
    one level down (``features.0``, ``features.1``...), at most ``MAX_UNITS``."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and not _is_unit(child):
            out += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            out.append((name, child))
    return out[:MAX_UNITS]


def _is_unit(seq: nn.Module) -> bool:
    """A Sequential built for one spec layer (conv + activation, flatten + fc) counts as one layer."""
    names = [n for n, _ in seq.named_children()]
    return bool(names) and names[0] in ("conv", "flatten", "fc")


def _to_bytes(t: torch.Tensor, lo: float, hi: float) -> list[int]:
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return ((t - lo) * scale).round().clamp(0, 255).to(torch.uint8).flatten().tolist()


@torch.inference_mode()
def activations(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Run ``model`` (in eval mode) on one image ``x`` (1, C, H, W); every unit's output and the
    class probabilities."""
    seen: list[tuple[str, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: seen.append((name, o)))
             for name, m in units(model)]
    was = model.training
    model.eval()
    try:
        logits = model(x)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    if isinstance(logits, tuple):
        logits = logits[0]
    layers = []
    for name, out in seen:
        if not isinstance(out, torch.Tensor):
            continue
        out = out[0].float()
        entry: dict[str, Any] = {"name": name, "shape": list(out.shape)}
        if out.ndim == 3:
            maps = out[:MAX_CHANNELS]
            if max(maps.shape[1:]) > MAX_SIDE:
                maps = F.adaptive_avg_pool2d(maps, MAX_SIDE)
            lo, hi = float(maps.min()), float(maps.max())
            entry.update(kind="maps", side=list(maps.shape[1:]), maps=[_to_bytes(m, lo, hi) for m in maps],
                         min=lo, max=hi)
        else:
            vec = out.flatten()[:MAX_VECTOR]
            lo, hi = float(vec.min()), float(vec.max())
            entry.update(kind="vector", values=[round(v, 4) for v in vec.tolist()], bytes=_to_bytes(vec, lo, hi),
                         min=lo, max=hi)
        layers.append(entry)
    probs = torch.softmax(logits[0].float(), 0)
    return {"layers": layers, "probs": [round(p, 6) for p in probs.tolist()]}


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    return None


@torch.inference_mode()
def first_filters(model: nn.Module) -> dict[str, Any] | None:
    """The first convolution's kernels, scaled together to 0..255 (RGB when it reads 3 channels)."""
    found = first_conv(model)
    if found is None:
        return None
    name, conv = found
    w = conv.weight.detach().float()[:64]  # (out, in, k, k)
    rgb = w.shape[1] == 3
    shown = w if rgb else w[:, :1]
    lo, hi = float(shown.min()), float(shown.max())
    filters = [_to_bytes(f.permute(1, 2, 0) if rgb else f[0], lo, hi) for f in shown]
    return {"name": name, "shape": list(conv.weight.shape), "rgb": rgb, "side": list(w.shape[2:]),
            "filters": filters, "min": lo, "max": hi}


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@torch.inference_mode()
def conv_explained(model: nn.Module, x: torch.Tensor, layer: int, channel: int, oy: int, ox: int,
                   in_channel: int = 0) -> dict[str, Any]:
    """Output neuron (``channel``, ``oy``, ``ox``) of the ``layer``-th Conv2d of ``model`` on image ``x``.

    y = b + Σ_c Σ_i Σ_j w[c, i, j] · x_pad[c, oy·S + i, ox·S + j]   (Ryu, ch. 3)

    Returns the padded input map of ``in_channel``, the kernel on it, the written-out products for
    that channel, each channel's partial sum, the bias, the total, and the value the layer really
    computed (they agree to float precision)."""
    convs = conv_layers(model)
    if not convs:
        raise CnnlabError("this network has no convolution layer to explain")
    if not 0 <= layer < len(convs):
        raise CnnlabError(f"conv layer must be 0..{len(convs) - 1}; received {layer}")
    name, conv = convs[layer]
    if conv.groups != 1 or conv.dilation != (1, 1) or isinstance(conv.padding, str):
        raise CnnlabError(f"{name} is a grouped, dilated or 'same'-padded convolution; the view explains plain ones")
    captured: dict[str, torch.Tensor] = {}

    def hook(module, inputs, output):
        captured["x"], captured["y"] = inputs[0][0].float(), output[0].float()

    handle = conv.register_forward_hook(hook)
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was)
        handle.remove()
    inp, out = captured["x"], captured["y"]  # (C_in, H, W), (C_out, H', W')
    c_in, h, w = inp.shape
    if max(h, w) > 64:
        raise CnnlabError(f"{name} reads a {h}×{w} map; the view shows maps of at most 64×64")
    if not (0 <= channel < out.shape[0] and 0 <= oy < out.shape[1] and 0 <= ox < out.shape[2]):
        raise CnnlabError(f"output neuron ({channel}, {oy}, {ox}) is outside {name}'s output "
                          f"{out.shape[0]}×{out.shape[1]}×{out.shape[2]}")
    if not 0 <= in_channel < c_in:
        raise CnnlabError(f"input channel must be 0..{c_in - 1}; received {in_channel}")
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    padded = F.pad(inp, (pw, pw, ph, ph))
    top, left = oy * sh, ox * sw
    window = padded[:, top:top + kh, left:left + kw]  # (C_in, kh, kw)
    weight = conv.weight[channel].float()  # (C_in, kh, kw)
    partial = (window * weight).sum(dim=(1, 2))  # per input channel
    bias = float(conv.bias[channel]) if conv.bias is not None else 0.0
    total = float(partial.sum()) + bias
    terms = [{"w": round(float(a), 4), "x": round(float(b), 4)}
             for a, b in zip(weight[in_channel].flatten(), window[in_channel].flatten())]
    return {
        "name": name, "layers": [n for n, _ in convs], "in_channels": c_in, "out_channels": out.shape[0],
        "kernel": [kh, kw], "stride": [sh, sw], "padding": [ph, pw], "input_size": [h, w],
        "output_size": list(out.shape[1:]), "channel": channel, "in_channel": in_channel, "oy": oy, "ox": ox,
        "input": [[round(v, 3) for v in row] for row in padded[in_channel].tolist()],
        "output": [[round(v, 3) for v in row] for row in out[channel].tolist()],
        "weights": [[round(v, 4) for v in row] for row in weight[in_channel].tolist()],
        "terms": terms, "partial_sums": [round(float(p), 5) for p in partial], "bias": round(bias, 5),
        "total": round(total, 5), "actual": round(float(out[channel, oy, ox]), 5),
        "agree": math.isclose(total, float(out[channel, oy, ox]), rel_tol=1e-4, abs_tol=1e-4),
    }


def mnist_like(pixels: list[list[float]]) -> torch.Tensor:
    """A drawing (rows of ink values, 0 = paper) -> a 28x28 uint8 digit made as MNIST's were:
    the ink's bounding box scaled to fit 20x20 (aspect kept, anti-aliased), then placed so that
    its center of mass is at the center of the 28x28 image (LeCun et al. 1998, the MNIST page)."""
    if not isinstance(pixels, list) or not 8 <= len(pixels) <= 512 or \
            any(not isinstance(r, list) or len(r) != len(pixels[0]) for r in pixels) or not 8 <= len(pixels[0]) <= 512:
        raise CnnlabError("a drawing is a square-ish grid of 8 to 512 rows of equal length")
    try:
        img = torch.tensor(pixels, dtype=torch.float32)
    except (TypeError, ValueError):
        raise CnnlabError("a drawing's pixels must be numbers") from None
    if not torch.isfinite(img).all():
        raise CnnlabError("a drawing's pixels must be finite numbers")
    img = img.clamp(0, 1)
    ink = (img > 0.05).nonzero()
    if len(ink) == 0:
        raise CnnlabError("the canvas is empty; draw a digit first")
    (r0, c0), (r1, c1) = ink.min(0).values.tolist(), ink.max(0).values.tolist()
    box = img[r0:r1 + 1, c0:c1 + 1]
    scale = 20.0 / max(box.shape)
    size = (max(1, round(box.shape[0] * scale)), max(1, round(box.shape[1] * scale)))
    small = F.interpolate(box[None, None], size=size, mode="bilinear", antialias=True, align_corners=False)[0, 0]
    small = small.clamp(0, 1)
    mass = small.sum()
    ys, xs = torch.arange(size[0], dtype=torch.float32), torch.arange(size[1], dtype=torch.float32)
    cy = float((small.sum(1) * ys).sum() / mass)
    cx = float((small.sum(0) * xs).sum() / mass)
    top = min(max(round(13.5 - cy), 0), 28 - size[0])
    left = min(max(round(13.5 - cx), 0), 28 - size[1])
    out = torch.zeros(28, 28)
    out[top:top + size[0], left:left + size[1]] = small
    return (out * 255).round().to(torch.uint8)
