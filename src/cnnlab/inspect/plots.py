"""Figures for the inspection tools, built on ``matplotlib.figure.Figure`` directly (no pyplot,
no global backend switch), and written atomically.

    >>> fig = filter_figure(inspect.filters(model), title="conv1")
    >>> save_png(fig, "filters.png")
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from cnnlab.fileio import atomic_write_bytes


def png_bytes(fig, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (the Agg canvas is attached here, never globally)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_png(fig, path: str | os.PathLike, dpi: int = 100) -> None:
    atomic_write_bytes(path, png_bytes(fig, dpi))


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def _image(t: Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> an array imshow takes (gray for one channel)."""
    t = t.detach().float().cpu().clamp(0, 1)
    return t[0].numpy() if t.shape[0] == 1 else t.permute(1, 2, 0).numpy()


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def filter_figure(weight: Tensor, *, title: str = "", fitted: Tensor | None = None, r2: Tensor | None = None,
                  max_filters: int = 64, max_inputs: int = 16):
    """A grid of a conv layer's filters, each scaled on its own to [0, 1].

    One or three input channels: each filter as one gray or RGB image (and, with ``fitted``, its
    Gabor fit beside it, titled with R²). Otherwise one row per output filter and one tile per
    input channel (up to ``max_filters`` rows and ``max_inputs`` columns).
    """
    from cnnlab.inspect.filters import normalize_each

    w = weight.detach().float().cpu()[:max_filters]
    n, cin = w.shape[:2]
    if cin in (1, 3):
        per = 2 if fitted is not None else 1
        cols = min(8, n) * per
        rows = math.ceil(n * per / cols)
        fig = _figure(1.1 * cols, 1.25 * rows + 0.5)
        images = normalize_each(w)
        fits = normalize_each(fitted.detach().float().cpu()[:n, None]) if fitted is not None else None
        for i in range(n):
            ax = fig.add_subplot(rows, cols, i * per + 1)
            ax.imshow(_image(images[i]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{i}", fontsize=7)
            _off(ax)
            if fits is not None:
                ax = fig.add_subplot(rows, cols, i * per + 2)
                ax.imshow(fits[i, 0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(f"fit R²={float(r2[i]):.2f}" if r2 is not None else "fit", fontsize=7)
                _off(ax)
    else:
        cols = min(cin, max_inputs)
        images = normalize_each(w[:, :cols])
        fig = _figure(0.6 * cols + 0.6, 0.6 * n + 0.6)
        for i in range(n):
            for j in range(cols):
                ax = fig.add_subplot(n, cols, i * cols + j + 1)
                ax.imshow(images[i, j].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                _off(ax)
                if j == 0:
                    ax.set_ylabel(str(i), fontsize=6, rotation=0, labelpad=8)
                if i == 0:
                    ax.set_title(f"in {j}", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def activation_figure(image: Tensor, maps: dict[str, Tensor], *, title: str = "", max_channels: int = 16):
    """The input, then one row per layer: that layer's feature maps for one image (C, H, W each)."""
    rows = len(maps) + 1
    cols = max_channels
    fig = _figure(0.75 * cols + 1.2, 0.85 * rows + 0.4)
    ax = fig.add_subplot(rows, cols, 1)
    ax.imshow(_image(image), cmap="gray", vmin=0, vmax=1)
    ax.set_title("input", fontsize=7)
    _off(ax)
    for r, (name, fmap) in enumerate(maps.items(), start=1):
        fmap = fmap.detach().float().cpu()
        channels = min(len(fmap), max_channels)
        lo, hi = float(fmap.min()), float(fmap.max())  # one scale per layer: channels stay comparable
        for c in range(channels):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            ax.imshow(fmap[c].numpy(), cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1,
                      interpolation="nearest")
            _off(ax)
            if c == 0:
                ax.set_ylabel(f"{name}\n{len(fmap)}@{fmap.shape[-2]}x{fmap.shape[-1]}", fontsize=6, rotation=0,
                              ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.12, right=0.99, top=0.92, bottom=0.01, wspace=0.05, hspace=0.15)
    return fig


def saliency_figure(images: Tensor, maps: Tensor, captions: Sequence[str], *, title: str = ""):
    """For each image: the input, the saliency map (max of |value| over channels), and an overlay."""
    n = len(images)
    fig = _figure(6.0, 2.0 * n + 0.4)
    for i in range(n):
        img = _image(images[i])
        m = maps[i].detach().float().cpu().abs().amax(dim=0).numpy()
        m = m / m.max() if m.max() > 0 else m
        gray = img if img.ndim == 2 else img.mean(axis=2)
        for j, (data, cmap, label) in enumerate(((img, "gray", captions[i]), (m, "hot", "saliency"),
                                                 (None, None, "overlay"))):
            ax = fig.add_subplot(n, 3, 3 * i + j + 1)
            if data is None:
                ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
                ax.imshow(m, cmap="jet", alpha=0.5)
            else:
                ax.imshow(data, cmap=cmap, vmin=0, vmax=1)
            ax.set_title(label, fontsize=7)
            _off(ax)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def image_grid_figure(images: Tensor, captions: Sequence[str], *, cols: int = 8, title: str = "",
                      cell: float = 1.3):
    """Images in [0, 1] (N, C, H, W) in a grid, each with a caption."""
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    fig = _figure(cell * cols, cell * 1.15 * rows + 0.4)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(_image(images[i]), cmap="gray", vmin=0, vmax=1)
        ax.set_title(captions[i], fontsize=6)
        _off(ax)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def adversarial_figure(originals: Tensor, adversarials: Tensor, top: Sequence[str], bottom: Sequence[str],
                       *, eps: float, title: str = ""):
    """Three rows: originals, perturbations (scaled to ±ε), adversarials; captions give class and confidence."""
    n = len(originals)
    fig = _figure(1.3 * n, 4.4)
    delta = (adversarials - originals).detach().float().cpu()
    for i in range(n):
        for r, (data, label) in enumerate(((originals[i], top[i]), (None, f"ε={eps:g}"),
                                           (adversarials[i], bottom[i]))):
            ax = fig.add_subplot(3, n, r * n + i + 1)
            if data is None:
                d = delta[i]
                d = d[0].numpy() if d.shape[0] == 1 else d.permute(1, 2, 0).numpy()
                if d.ndim == 2:
                    ax.imshow(d, cmap="seismic", vmin=-max(eps, 1e-12), vmax=max(eps, 1e-12))
                else:
                    ax.imshow(np.clip(0.5 + d / (2 * max(eps, 1e-12)), 0, 1))
            else:
                ax.imshow(_image(data), cmap="gray", vmin=0, vmax=1)
            ax.set_title(label, fontsize=6)
            _off(ax)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def curve_figure(series: dict[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str, ylabel: str,
                 title: str = "", percent: bool = False):
    """One or more lines ``label -> (x, y)`` on one axis."""
    fig = _figure(5.5, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    for label, (xs, ys) in series.items():
        ys = [100 * y for y in ys] if percent else list(ys)
        ax.plot(list(xs), ys, "o-", label=label, markersize=3)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if len(series) > 1 or next(iter(series), ""):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def landscape_figures(alphas: Tensor, betas: Tensor, loss: Tensor, *, title: str = ""):
    """Contour and surface plots of a 2-d loss grid (loss[i, j] at alphas[i], betas[j])."""
    a, b = np.meshgrid(alphas.numpy(), betas.numpy(), indexing="ij")
    z = loss.numpy()
    contour = _figure(5.0, 4.2)
    ax = contour.add_subplot(1, 1, 1)
    levels = np.linspace(z.min(), min(z.max(), z.min() + 10 * (np.median(z) - z.min() + 1e-12)), 30)
    cs = ax.contour(a, b, z, levels=levels, cmap="viridis")
    ax.clabel(cs, fontsize=6, fmt="%.2f")
    ax.plot([0], [0], "r+", markersize=10)
    ax.set(xlabel="α (direction 1)", ylabel="β (direction 2)", title=title or "loss contours")
    contour.tight_layout()
    surface = _figure(5.5, 4.5)
    ax3 = surface.add_subplot(1, 1, 1, projection="3d")
    ax3.plot_surface(a, b, np.minimum(z, levels[-1]), cmap="viridis", linewidth=0, antialiased=True)
    ax3.set(xlabel="α", ylabel="β", zlabel="loss", title=title or "loss surface")
    surface.tight_layout()
    return contour, surface


def bar_figure(labels: Sequence[str], values: dict[str, Sequence[float]], *, ylabel: str, title: str = ""):
    """Grouped bars: one group per label, one bar per series."""
    fig = _figure(max(5.0, 0.6 * len(labels) + 2), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    k = len(values)
    width = 0.8 / max(k, 1)
    xs = np.arange(len(labels))
    for i, (name, vals) in enumerate(values.items()):
        ax.bar(xs + (i - (k - 1) / 2) * width, list(vals), width, label=name)
    ax.set_xticks(xs, list(labels), rotation=45, ha="right", fontsize=7)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    if k > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def to_unit(x: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """Normalized images back to [0, 1] for display."""
    if mean is None or std is None:
        return x.clamp(0, 1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp(0, 1)
