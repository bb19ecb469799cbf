"""The augmentation kernels: each transforms a whole batch with independent random parameters per sample.

Every kernel takes a float batch ``x`` of shape (B, C, H, W) with values in [0, 1] and a
``torch.Generator`` on ``x``'s device, and returns a batch of the same shape, dtype, device and
value range. There is no Python loop over the images: a per-sample parameter is a (B,) array,
and it reaches the pixels through broadcasting, ``torch.lerp``, ``index_select`` or ``F.grid_sample``
(the whole-batch style of KellerJordan/cifar10-airbench's ``batch_flip_lr`` and ``batch_crop``).

Cost matters: these kernels run on every training batch, and a 28 x 28 MNIST batch of 128 is so
small that on the CPU the count of torch calls and of full-size passes decides the time, not the
arithmetic. So:

- each op draws all its random parameters from the generator in one call; on the CPU the
  arithmetic on those (B,) parameters runs in NumPy on a view of the draw (under a microsecond a
  step, against several for a torch call); on other devices the same lines run in torch (``_xp``);
- on the CPU, cutout and erasing touch only the boxes' pixels: their flat indices are built in
  NumPy from row runs (``_box_flat_index``) and written with one ``index_fill_``/``index_copy_``
  (erasing's noise in ``masked_scatter``'s row-major order, so the values are those of a mask);
- other boxes (cutmix; cutout and erasing off the CPU) are outer products of 0/1 rows and columns,
  applied as float arithmetic that is exact at 0 and 1 (``x - x * box``, ``torch.lerp``): bool
  masks and ``masked_fill`` are several times slower;
- the kernels that can (flip, cutout, erase, drop_pixels, cutmix) take ``inplace=True`` to write
  into a batch the caller gives away; the ``Pipeline`` passes it to every such op after the first
  (whose input is a batch the pipeline made) and to the first too when called with ``inplace_ok=True``;
- integer translations copy whole rows (``index_select`` on a strided view), they never interpolate;
- the sampling grid of a bilinear resample is one (B, 2, 3) @ (3, H*W) product.

``benchmarks/bench_augment.py --per-op`` times each op. Inside a pipeline every call costs about
twice what it costs in a tight loop of the same op (the code and data of the other ops have
displaced it from the caches), so the count of calls weighs even more than such loops suggest.
Measured and not kept: reading rows rather than (H, W) windows in ``crop`` (faster alone, not in a
pipeline); a separable bilinear resample by row ``index_select`` + column ``gather`` (3x slower
than ``grid_sample``); the affine grid as broadcast sums (slower than the matmul); a contiguous
grid for ``grid_sample`` (no faster than the permuted view).

The two label-mixing kernels, ``mixup`` and ``cutmix``, also take and return soft targets
``y`` (B, K) whose rows sum to one.

The parsing, the op table and the ``Pipeline`` live in ``cnnlab.data.augment``.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)

Array = Any  # a NumPy array on the CPU, a torch tensor elsewhere: the per-sample parameters


def _xp(a: Array) -> Any:
    """The array module of ``a``: numpy or torch (the parameter arithmetic is written for both)."""
    return np if isinstance(a, np.ndarray) else torch


def _draw(k: int, n: int, gen: torch.Generator, device: torch.device) -> Array:
    """(k, n) float64 samples of U[0, 1): all of an op's per-sample parameters from one call of
    ``gen``, as a NumPy view on the CPU and a tensor elsewhere."""
    u = torch.rand((k, n), generator=gen, device=device, dtype=torch.float64)
    return u.numpy() if u.device.type == "cpu" else u


def _tensor(a: Array, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A parameter array as a tensor on ``like``'s device (no copy for a NumPy array on the CPU)."""
    t = torch.from_numpy(a) if isinstance(a, np.ndarray) else a
    return t.to(device=like.device, dtype=dtype or t.dtype)


@functools.lru_cache(maxsize=64)
def _cached(kind: str, a: int, b: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Small constant tensors, built once per shape and device: ``"grid"``, the (3, a*b) rows x, y, 1
    of the pixel centres of an a x b image in affine_grid's [-1, 1] coordinates (align_corners=False);
    ``"sides"``, the (2, 1) column [[a], [b]]; ``"arange"``, 0 .. a-1."""
    with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable inside and outside inference mode
        if kind == "grid":
            xs = (torch.arange(b, device=device, dtype=torch.float64) * 2 + 1) / b - 1
            ys = (torch.arange(a, device=device, dtype=torch.float64) * 2 + 1) / a - 1
            ones = torch.ones(a, b, dtype=torch.float64, device=device)
            return torch.stack([xs.expand(a, b), ys[:, None].expand(a, b), ones]).view(3, a * b).to(dtype)
        if kind == "sides":
            return torch.tensor([[float(a)], [float(b)]], dtype=dtype, device=device)
        assert kind == "arange", kind
        return torch.arange(a, device=device, dtype=dtype)


def _sides(a: float, b: float, like: Array) -> Array:
    """The (2, 1) float64 column [[a], [b]] in ``like``'s array module (rows above columns)."""
    if isinstance(like, np.ndarray):
        return np.array([[a], [b]], dtype=np.float64)
    return _cached("sides", a, b, torch.float64, like.device)


def _arange(n: int, like: Array) -> Array:
    """0 .. n-1 as float64 in ``like``'s array module."""
    if isinstance(like, np.ndarray):
        return np.arange(n, dtype=np.float64)
    return _cached("arange", n, 0, torch.float64, like.device)


def _box_inside(start: Array, length: Array, H: int, W: int) -> Array:
    """(2, B, max(H, W)) bool: row 0 marks the rows [y0, y0 + h) of each box, row 1 its columns
    [x0, x0 + w), clipped to the image; ``start`` and ``length`` are (2, B) or (2, 1) (y above x).
    A box is the outer product of its rows and columns."""
    d = _arange(max(H, W), start) - start[..., None]
    return (d >= 0) & (d < length[..., None])


def _box_weights(inside: Array, H: int, W: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, H, W) of 0/1 in ``dtype`` from ``_box_inside``: the outer product of rows and columns
    (use uint8 for a mask: bool arithmetic on the CPU is about 3x slower)."""
    rc = _tensor(inside, like, dtype)
    return rc[0, :, None, :H, None] * rc[1, :, None, None, :W]


def _centred_starts(u: Array, length: Array, H: int, W: int) -> Array:
    """(2, B) top-left corners (y, x) of boxes of sides ``length`` whose centre is uniform over the
    whole image, so they may hang over the border and be clipped; ``u`` is (2, B) U[0, 1)."""
    xp = _xp(u)
    sides = _sides(H, W, u)
    centre = xp.minimum(xp.floor(u * sides), sides - 1)  # the guard: u * H may round up to H
    return centre - xp.floor(length / 2)


# --- geometry ------------------------------------------------------------------------------------

def flip(x: torch.Tensor, gen: torch.Generator, *, p: float, inplace: bool = False) -> torch.Tensor:
    """Mirror each image left-right with probability ``p`` (``inplace=True``: into ``x``)."""
    mirrored = torch.rand(x.shape[0], generator=gen, device=x.device) < p
    # lerp with 0/1 weights picks exactly x or its mirror, and runs faster than torch.where here.
    weight = mirrored.to(x.dtype).view(-1, 1, 1, 1)
    return x.lerp_(x.flip(3), weight) if inplace else torch.lerp(x, x.flip(3), weight)


def crop(x: torch.Tensor, gen: torch.Generator, *, pad: int, mode: str) -> torch.Tensor:
    """Translate: pad ``pad`` pixels on every side, then cut an H x W window at a random offset.

    The window of sample b starts at (dy_b, dx_b) in the padded image, so its content moves by
    (pad - dy_b, pad - dx_b), each in [-pad, pad]. The windows are read with one ``index_select``
    over a strided view of the flat padded batch whose entry k is the H x W window starting at
    flat position k, so whole rows are copied and no per-pixel index is built.
    """
    B, C, H, W = x.shape
    u = _draw(2, B, gen, x.device)
    if B * C == 0:  # nothing to read windows from (the strided view below needs one image)
        return x.clone()
    # contiguous: the flat view below assumes the standard layout, also for channels_last input
    padded = F.pad(x, (pad, pad, pad, pad), mode="constant" if mode == "zero" else "reflect").contiguous()
    Hp, Wp = H + 2 * pad, W + 2 * pad
    xp = _xp(u)
    dy, dx = xp.floor(u * (2 * pad + 1)).clip(max=2 * pad)  # uniform in 0 .. 2 pad (the guard: u * n may round up to n)
    span = (H - 1) * Wp + W  # flat length of one window
    windows = padded.view(-1).as_strided((B * C * Hp * Wp - span + 1, H, W), (1, Wp, 1))
    starts = _arange(B * C, u).reshape(B, C) * (Hp * Wp) + (dy * Wp + dx)[:, None]
    return windows.index_select(0, _tensor(starts.reshape(-1), x, torch.int64)).view(B, C, H, W)


def resample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of each image through its own (2, 3) output->input map, zeros outside.

    The grid is ``F.affine_grid(theta, x.shape, align_corners=False)`` computed the other way round:
    theta (B, 2, 3) @ the (3, H*W) pixel centres gives a (B, 2, H*W) grid whose long axis is
    contiguous, handed to ``grid_sample`` as a permuted view. On the CPU affine_grid's
    (B, H*W, 3) @ (3, 2) product costs about 5x the grid_sample itself (its innermost dimension of 2
    defeats the BLAS), this one a fraction of it (28 us against 200 us for 128 MNIST images).

    A separable alternative for axis-aligned maps (random resized crop), rows then columns as two
    batched matmuls with per-image bilinear "hat" matrices, was measured and is not faster at this
    size on the CPU: the two bmm alone cost as much as grid_sample, before the matrices are built.
    """
    B, _, H, W = x.shape
    theta = torch.as_tensor(theta, dtype=x.dtype, device=x.device)
    grid = torch.matmul(theta, _cached("grid", H, W, x.dtype, x.device))  # (B, 2, H*W): input x and y
    return F.grid_sample(x, grid.view(B, 2, H, W).permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def resized_crop(x: torch.Tensor, gen: torch.Generator, *, scale: tuple[float, float],
                 ratio: tuple[float, float]) -> torch.Tensor:
    """Random resized crop (Szegedy et al. 2015, GoogLeNet §6): a box of a random share of the area
    and a random aspect ratio, at a random place, resized back to H x W bilinearly.

    The area share is uniform in ``scale``, the aspect ratio (width / height) log-uniform in
    ``ratio``. A box wider or taller than the image is clipped to it (torchvision retries ten
    times and then falls back to a centre crop; clipping keeps the batch free of loops).
    """
    B, _, H, W = x.shape
    u = _draw(4, B, gen, x.device)  # area share, log aspect ratio, centre x, centre y
    xp = _xp(u)
    area = (u[0] * (scale[1] - scale[0]) + scale[0]) * (H * W)
    log_aspect = u[1] * (math.log(ratio[1]) - math.log(ratio[0])) + math.log(ratio[0])
    # (fw, fh): the box's width sqrt(area * aspect) and height sqrt(area / aspect) as fractions of the image
    f = (xp.sqrt(area * xp.exp(xp.stack([log_aspect, -log_aspect]))) / _sides(W, H, u)).clip(max=1.0)
    # affine_grid's coordinates run over [-1, 1]: the box centre may lie anywhere that keeps it inside.
    c = (u[2:] * 2 - 1) * (1 - f)  # (cx, cy)
    zero = xp.zeros_like(area)
    theta = xp.stack([f[0], zero, c[0], zero, f[1], c[1]], 1).reshape(B, 2, 3)  # [[fw, 0, cx], [0, fh, cy]]
    return resample(x, _tensor(theta, x))


def affine_theta(angle: Array, shear: Array, sx: Array, sy: Array, H: int, W: int) -> Array:
    """(B, 2, 3) output->input maps for ``F.affine_grid``, about the image centre.

    The forward map, in pixel units with y pointing down, is A = R(angle) Sh(shear) S(sx, sy):
    stretch by (sx, sy), shear x by tan(shear), then rotate counterclockwise as displayed (angles
    in degrees). ``grid_sample`` needs the inverse, A^-1 = S^-1 Sh^-1 R^-1, expressed in
    affine_grid's normalized coordinates: D^-1 A^-1 D with D = diag(W/2, H/2), which keeps
    rotations rigid on non-square images. Tensors in, a tensor out; NumPy arrays in, an array out.
    """
    xp = _xp(angle)
    a = xp.deg2rad(angle)
    cos, sin, tan = xp.cos(a), xp.sin(a), xp.tan(xp.deg2rad(shear))
    # R(a)^-1 = [[cos, -sin], [sin, cos]] for y down, Sh^-1 = [[1, -tan], [0, 1]], S^-1 = diag(1/sx, 1/sy):
    # S^-1 Sh^-1 R^-1 = [[(cos - tan sin)/sx, -(sin + tan cos)/sx], [sin/sy, cos/sy]], and D^-1 M D
    # scales entry (i, j) by d_j / d_i, written out entry by entry (six small ops, no matmul).
    zero = xp.zeros_like(a)
    row0 = xp.stack([(cos - tan * sin) / sx, -(sin + tan * cos) / sx * (H / W), zero], -1)
    row1 = xp.stack([sin / sy * (W / H), cos / sy, zero], -1)
    return xp.stack([row0, row1], 1)


def affine(x: torch.Tensor, gen: torch.Generator, *, degrees: float, shear: float, stretch: float) -> torch.Tensor:
    """Rotate by U(-degrees, degrees), shear by U(-shear, shear) degrees, and stretch each axis by
    its own factor in U(1 - stretch, 1 + stretch) (the lecture's "stretching, shearing")."""
    B, _, H, W = x.shape
    u = _draw(4, B, gen, x.device) * 2 - 1  # U(-1, 1): angle, shear, stretch x, stretch y
    angle, sh = u[0] * degrees, u[1] * shear
    sx, sy = u[2:] * stretch + 1
    return resample(x, _tensor(affine_theta(angle, sh, sx, sy, H, W), x))


# --- occlusion -----------------------------------------------------------------------------------

def cutout(x: torch.Tensor, gen: torch.Generator, *, size: int, fill: float, inplace: bool = False) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): fill a size x size square centred anywhere in the image.

    As in the paper the centre is uniform over the whole image, so the square may hang over the
    border and be clipped ("allowing portions of the patches to be outside of the image").
    ``inplace=True`` writes into ``x`` (a batch the caller gives away) instead of a copy.
    """
    B, C, H, W = x.shape
    u = _draw(2, B, gen, x.device)
    side = _sides(size, size, u)
    start = _centred_starts(u, side, H, W)
    if isinstance(u, np.ndarray):  # on the CPU: write the clipped squares' pixels through their flat indices
        lo = np.maximum(start, 0)
        length = np.minimum(start + side, _sides(H, W, u)) - lo  # <= 0 for a square wholly outside
        out = x if inplace else x.clone(memory_format=torch.contiguous_format)
        return _write_boxes(out, lo, length, fill=fill)
    return _fill_boxes(x, _box_inside(start, side, H, W), fill)


def _box_flat_index(start: np.ndarray, length: np.ndarray, C: int, H: int, W: int) -> np.ndarray:
    """Flat indices into a contiguous (B, C, H, W) batch of each sample's box, rows [y0, y0 + h) and
    columns [x0, x0 + w) in every channel, in row-major order (sample, channel, row, column): the
    order ``masked_scatter`` fills a mask in. ``start`` and ``length`` are (2, B) float arrays (y above
    x) of boxes inside the image; a box with a side <= 0 has no pixels. Built from row segments:
    each box row is one run of w consecutive indices, so no per-pixel mask is ever made."""
    y0, x0 = start.astype(np.int64)
    h, w = np.maximum(length, 0).astype(np.int64)
    h = np.where(w > 0, h, 0)
    runs = h * C  # rows of all channels of each box
    sample = np.repeat(np.arange(len(h)), runs)  # the sample of each run
    k = np.arange(len(sample)) - (np.cumsum(runs) - runs)[sample]  # the run's number within its box
    if C == 1:
        image, row = sample, k
    else:
        channel, row = np.divmod(k, h[sample])
        image = sample * C + channel
    run_start = image * (H * W) + (y0[sample] + row) * W + x0[sample]
    run_len = w[sample]
    shift = run_start - (np.cumsum(run_len) - run_len)  # index minus position in the output
    return np.repeat(shift, run_len) + np.arange(int(run_len.sum()))


def _write_boxes(out: torch.Tensor, start: np.ndarray, length: np.ndarray, *, fill: float | None = None,
                 gen: torch.Generator | None = None) -> torch.Tensor:
    """Write into ``out`` (contiguous, on the CPU) the boxes of ``_box_flat_index``: ``fill``, or, for
    ``fill=None``, U[0, 1) noise drawn from ``gen`` for exactly the boxes' values, in row-major order
    (the values and order of ``_noise_into`` with a count). One ``index_fill_``/``index_copy_`` of
    the box pixels only, instead of full-batch passes."""
    B, C, H, W = out.shape
    if not out.is_contiguous():
        out = out.contiguous()
    index = torch.from_numpy(_box_flat_index(start, length, C, H, W))
    flat = out.view(-1)
    if fill is None:
        flat.index_copy_(0, index, torch.rand(len(index), generator=gen, device=out.device, dtype=out.dtype))
    else:
        flat.index_fill_(0, index, fill)
    return out


def _fill_boxes(x: torch.Tensor, inside: Array, fill: float) -> torch.Tensor:
    """x with each sample's box (``_box_inside``) set to ``fill``: x - x * box + fill * box with
    ``box`` the 0/1 outer product of the box's rows and columns. Exact (x - x * 1 = 0 and
    x - x * 0 = x), and as float arithmetic several times faster than masked_fill on the CPU."""
    box = _box_weights(inside, x.shape[2], x.shape[3], x, x.dtype)
    out = torch.addcmul(x, x, box, value=-1)
    return out if fill == 0 else out.add_(box, alpha=fill)


def erase(x: torch.Tensor, gen: torch.Generator, *, p: float, scale: tuple[float, float],
          ratio: tuple[float, float], fill: float | str, inplace: bool = False) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017, Alg. 1): with probability p, a box inside the image with a
    random share of the area (uniform in ``scale``) and aspect ratio (log-uniform in ``ratio``) is
    filled with uniform noise (``fill="random"``, the paper's default) or a constant.

    The paper redraws boxes that do not fit; here a box's sides are clipped to the image instead.
    On the CPU only the erased pixels draw noise, exactly that many values (a tenth of the batch's
    pixels with the defaults) written in row-major order through the boxes' flat indices
    (``_write_boxes``: the values and order of ``masked_scatter`` at a tenth of its cost); on other
    devices, where counting them would wait for the device, the whole batch draws noise and the box
    picks from it. ``inplace=True`` writes into ``x`` (a batch the caller gives away).
    """
    B, C, H, W = x.shape
    u = _draw(5, B, gen, x.device)  # apply, area share, log aspect ratio, top, left
    xp = _xp(u)
    area = (u[1] * (scale[1] - scale[0]) + scale[0]) * (H * W)
    log_aspect = u[2] * (math.log(ratio[1]) - math.log(ratio[0])) + math.log(ratio[0])
    # sides (h, w) = sqrt(area / aspect), sqrt(area * aspect), rounded and clipped to the image
    sides = _sides(H, W, u)
    length = xp.minimum(xp.round(xp.sqrt(area * xp.exp(xp.stack([-log_aspect, log_aspect])))).clip(min=1), sides)
    start = xp.minimum(xp.floor(u[3:] * (sides - length + 1)), sides - length)  # the box lies inside
    length[1] = length[1] * (u[0] < p)  # a box of width 0 erases nothing
    if xp is np:
        out = x if inplace else x.clone(memory_format=torch.contiguous_format)
        return _write_boxes(out, start, length, fill=None if fill == "random" else fill, gen=gen)
    inside = _box_inside(start, length, H, W)
    if fill != "random":
        return _fill_boxes(x, inside, fill)
    mask = _box_weights(inside, H, W, x, torch.uint8).view(torch.bool)  # (B, 1, H, W)
    # Counting the boxes' pixels costs nothing on the CPU; elsewhere it would wait for the device.
    count = int(length.prod(0).sum()) * C if x.device.type == "cpu" else None  # h * w pixels a box
    return _noise_into(x, mask, count, gen)


def _noise_into(x: torch.Tensor, mask: torch.Tensor, count: int | None, gen: torch.Generator) -> torch.Tensor:
    """x with U[0, 1) noise where ``mask`` (B, 1, H, W) is set: drawn for exactly the ``count`` masked
    values (``masked_scatter``, row-major order), or for the whole batch when ``count`` is None."""
    if count is not None:
        return x.masked_scatter(mask, torch.rand(count, generator=gen, device=x.device, dtype=x.dtype))
    noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return torch.where(mask, noise, x)


def drop_pixels(x: torch.Tensor, gen: torch.Generator, *, p: float, inplace: bool = False) -> torch.Tensor:
    """Set each pixel (all its channels) to zero with probability p: the lecture's "drop pixels",
    dropout applied to the input. Unlike dropout the survivors are not rescaled by 1/(1-p): the
    image stays an image in [0, 1]. ``inplace=True``: into ``x``."""
    B, _, H, W = x.shape
    keep = torch.rand((B, 1, H, W), generator=gen, device=x.device) >= p
    return x.mul_(keep) if inplace else x * keep


# --- colour --------------------------------------------------------------------------------------

def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma of RGB images; a one-channel image is its own gray."""
    if x.shape[1] != 3:
        return x
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def jitter(x: torch.Tensor, gen: torch.Generator, *, brightness: float, contrast: float,
           saturation: float) -> torch.Tensor:
    """Colour jitter, torchvision's definitions in a fixed order: brightness multiplies by
    b ~ U(1-B, 1+B); contrast blends with the image's mean gray by c ~ U(1-C, 1+C); saturation
    blends with the pixel's gray by s ~ U(1-S, 1+S) (RGB only; for other channel counts a no-op).
    Each step clamps to [0, 1]."""
    B = x.shape[0]
    view = (B, 1, 1, 1)
    u = _draw(3, B, gen, x.device) * 2 - 1  # U(-1, 1)
    b, c, s = (_tensor(u[i] * r + 1, x, x.dtype).view(view) for i, r in enumerate((brightness, contrast, saturation)))
    x = (x * b).clamp(0, 1)
    mean = _gray(x).mean((1, 2, 3), keepdim=True)
    x = torch.lerp(mean, x, c).clamp(0, 1)
    if x.shape[1] == 3:
        x = torch.lerp(_gray(x), x, s).clamp(0, 1)
    return x


# --- label mixing --------------------------------------------------------------------------------

def _log_gamma_sample(alpha: float, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """log of (n,) Gamma(alpha, 1) samples drawn from ``gen`` (torch's own gamma sampler takes no
    generator). Marsaglia & Tsang (2000): for a >= 1, d = a - 1/3, c = 1/sqrt(9d), propose
    v = (1 + cz)^3 with z ~ N(0, 1) and accept if v > 0 and log u < z^2/2 + d - dv + d log v; for
    a < 1 use Gamma(a) = Gamma(a + 1) U^(1/a). Eight proposals per sample, the first accepted one kept:
    each is accepted with probability > 0.95, so all eight fail about once in 10^10 draws (then d is used).
    """
    a = alpha + 1.0 if alpha < 1.0 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    rounds = 8
    # One row per sample, proposals along the contiguous last axis: the reduction over them is 5x faster.
    z = torch.randn((n, rounds), generator=gen, device=device, dtype=torch.float64)
    u = torch.rand((n, rounds + 1), generator=gen, device=device, dtype=torch.float64)  # last column: U for a < 1
    v = (z * c + 1) ** 3
    log_v = torch.log(v)  # NaN where v < 0: the comparison below is then False, which rejects it
    ok = torch.log(u[:, :rounds]) < torch.addcmul(d * (log_v - v + 1), z, z, value=0.5)
    accepted, first = ok.to(torch.uint8).max(1)  # whether any was accepted, and the first accepted one
    log_g = torch.where(accepted.bool(), log_v.gather(1, first[:, None]).squeeze(1), 0.0) + math.log(d)
    if alpha < 1.0:  # work in logs: U^(1/a) underflows for small a
        log_g = log_g + torch.log(u[:, rounds].clamp(min=1e-300)) / alpha
    return log_g


def beta(alpha: float, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n,) float32 samples of Beta(alpha, alpha), drawn from ``gen``.

    On the CPU, NumPy's Beta sampler seeded by one 63-bit draw from ``gen`` (so the same generator
    state gives the same samples): 30 us for a batch, against 200 us for the twenty-odd small torch
    ops of ``beta_torch``. Elsewhere ``beta_torch``, which never waits for the device.
    """
    if torch.device(device).type != "cpu":
        return beta_torch(alpha, n, gen, device)
    seed = int(torch.randint(2 ** 63 - 1, (1,), generator=gen, device=device))
    sample = np.random.Generator(np.random.PCG64(seed)).beta(alpha, alpha, n)
    return torch.from_numpy(sample.astype(np.float32))


def beta_torch(alpha: float, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n,) float32 samples of Beta(alpha, alpha) = G1 / (G1 + G2) with G1, G2 ~ Gamma(alpha),
    the 2n gammas drawn in one batch with torch ops only."""
    log_g = _log_gamma_sample(alpha, 2 * n, gen, device)
    return torch.sigmoid(log_g[:n] - log_g[n:]).float()  # G1/(G1+G2) = sigmoid(log G1 - log G2)


def mixup(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, *, alpha: float
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """mixup (Zhang et al. 2017): x = lam x_i + (1 - lam) x_j, y likewise, with lam ~ Beta(alpha, alpha)
    drawn per sample and j a random permutation of the batch (the paper mixes with a shuffled copy
    of the same minibatch, §2 and its listing). The partners are gathered once into a new batch,
    and the blend written into it (``lerp_``: the values of ``torch.lerp``, one allocation fewer)."""
    B = x.shape[0]
    lam = beta(alpha, B, gen, x.device).to(x.dtype)
    partner = torch.randperm(B, generator=gen, device=x.device)
    x = x.index_select(0, partner).lerp_(x, lam.view(B, 1, 1, 1))
    y = y.index_select(0, partner).lerp_(y, lam.view(B, 1).to(y.dtype))
    return x, y


def cutmix(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, *, alpha: float, inplace: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al. 2019, §3.1): paste a box from a partner image, box sides sqrt(1 - lam) of
    the image's, lam ~ Beta(alpha, alpha), centre uniform (clipped at the border); the target weight
    is then the exact share of the pixels each image contributes, as the paper adjusts lam.
    ``inplace=True`` pastes into ``x`` (a batch the caller gives away); ``y`` is never modified."""
    B, _, H, W = x.shape
    lam = beta(alpha, B, gen, x.device)
    partner = torch.randperm(B, generator=gen, device=x.device)
    u = _draw(2, B, gen, x.device)
    xp = _xp(u)
    lam = lam.double()
    length = xp.round(xp.sqrt(1 - (lam.numpy() if xp is np else lam)) * _sides(H, W, u))  # (2, B): h and w
    inside = _box_inside(_centred_starts(u, length, H, W), length, H, W)
    box = _box_weights(inside, H, W, x, x.dtype)  # (B, 1, H, W) of 0/1
    pasted_x = x.index_select(0, partner)
    x = x.lerp_(pasted_x, box) if inplace else torch.lerp(x, pasted_x, box)  # exact at the weights 0 and 1
    pasted = inside[0, :, :H].sum(1) * inside[1, :, :W].sum(1)  # the box's pixels after clipping
    kept = _tensor(1 - pasted / (H * W), y, y.dtype)  # share of the sample's own pixels
    y = torch.lerp(y.index_select(0, partner), y, kept.view(B, 1))
    return x, y
