"""The augmentation kernels: each transforms a whole batch with independent random parameters per sample.

Every kernel takes a float batch ``x`` of shape (B, C, H, W) with values in [0, 1] and a
``torch.Generator`` on ``x``'s device, and returns a batch of the same shape, dtype, device and
value range. There is no Python loop over the images: a per-sample parameter is a (B,) tensor,
and it reaches the pixels through broadcasting, ``torch.where``, ``gather`` or ``F.grid_sample``
(the whole-batch style of KellerJordan/cifar10-airbench's ``batch_flip_lr`` and ``batch_crop``).

The two label-mixing kernels, ``mixup`` and ``cutmix``, also take and return soft targets
``y`` (B, K) whose rows sum to one.

The parsing, the op table and the ``Pipeline`` live in ``cnnlab.data.augment``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """(n,) samples of U(lo, hi) in ``like``'s dtype and device."""
    return torch.rand(n, generator=gen, device=like.device, dtype=like.dtype) * (hi - lo) + lo


def _randint(n: int, high: torch.Tensor | int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n,) integers uniform in [0, high), where ``high`` may be a (n,) tensor of per-sample bounds."""
    if isinstance(high, int):
        return torch.randint(high, (n,), generator=gen, device=device)
    v = (torch.rand(n, generator=gen, device=device, dtype=torch.float64) * high).long()
    return torch.minimum(v, high - 1)  # guards the (float) rounding of u * high up to high


def box_mask(y0: torch.Tensor, x0: torch.Tensor, h: torch.Tensor, w: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, H, W) boolean masks of the boxes rows [y0, y0+h) x cols [x0, x0+w), clipped to the image."""
    rows = torch.arange(H, device=y0.device)
    cols = torch.arange(W, device=x0.device)
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + h)[:, None])  # (B, H)
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + w)[:, None])  # (B, W)
    return in_rows[:, :, None] & in_cols[:, None, :]


def _random_box(n: int, h: torch.Tensor, w: torch.Tensor, H: int, W: int, gen: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """Boxes of sizes (h, w) centred uniformly anywhere in the image, so they may be clipped at the border."""
    cy = _randint(n, H, gen, device)
    cx = _randint(n, W, gen, device)
    return box_mask(cy - h // 2, cx - w // 2, h, w, H, W)


# --- geometry ------------------------------------------------------------------------------------

def flip(x: torch.Tensor, gen: torch.Generator, *, p: float) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    mirrored = torch.rand(x.shape[0], generator=gen, device=x.device) < p
    return torch.where(mirrored.view(-1, 1, 1, 1), x.flip(3), x)


def crop(x: torch.Tensor, gen: torch.Generator, *, pad: int, mode: str) -> torch.Tensor:
    """Translate: pad ``pad`` pixels on every side, then cut an H x W window at a random offset.

    The window of sample b starts at (dy_b, dx_b) in the padded image, so its content moves by
    (pad - dy_b, pad - dx_b), each in [-pad, pad]. One ``gather`` reads all windows at once.
    """
    B, C, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="constant" if mode == "zero" else "reflect")
    Wp = W + 2 * pad
    dy = _randint(B, 2 * pad + 1, gen, x.device)
    dx = _randint(B, 2 * pad + 1, gen, x.device)
    window = (torch.arange(H, device=x.device)[:, None] * Wp + torch.arange(W, device=x.device)).view(1, H * W)
    index = (dy * Wp + dx).view(B, 1) + window  # (B, H*W) flat positions in the padded image
    out = padded.flatten(2).gather(2, index.unsqueeze(1).expand(B, C, H * W))
    return out.view(B, C, H, W)


def resample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of each image through its own (2, 3) output->input map, zeros outside.

    The grid is ``F.affine_grid(theta, x.shape, align_corners=False)`` written as two broadcast
    multiply-adds: on the CPU affine_grid's batched matmul costs about 5x the grid_sample itself
    (1.8 ms against 0.35 ms for 128 MNIST images, measured here).
    """
    B, _, H, W = x.shape
    theta = theta.to(x.dtype).view(B, 2, 3, 1, 1)
    xs = (torch.arange(W, device=x.device, dtype=x.dtype) * 2 + 1) / W - 1  # pixel centres in [-1, 1]
    ys = ((torch.arange(H, device=x.device, dtype=x.dtype) * 2 + 1) / H - 1).view(H, 1)
    grid = theta[:, :, 0] * xs + theta[:, :, 1] * ys + theta[:, :, 2]  # (B, 2, H, W): input x and y
    return F.grid_sample(x, grid.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros", align_corners=False)


def resized_crop(x: torch.Tensor, gen: torch.Generator, *, scale: tuple[float, float],
                 ratio: tuple[float, float]) -> torch.Tensor:
    """Random resized crop (Szegedy et al. 2015, GoogLeNet §6): a box of a random share of the area
    and a random aspect ratio, at a random place, resized back to H x W bilinearly.

    The area share is uniform in ``scale``, the aspect ratio (width / height) log-uniform in
    ``ratio``. A box wider or taller than the image is clipped to it (torchvision retries ten
    times and then falls back to a centre crop; clipping keeps the batch free of loops).
    """
    B, _, H, W = x.shape
    area = _uniform(B, *scale, gen, x) * (H * W)
    aspect = torch.exp(_uniform(B, math.log(ratio[0]), math.log(ratio[1]), gen, x))
    fw = (torch.sqrt(area * aspect) / W).clamp(max=1.0)  # box width as a fraction of the image
    fh = (torch.sqrt(area / aspect) / H).clamp(max=1.0)
    # affine_grid's coordinates run over [-1, 1]: the box centre may lie anywhere that keeps it inside.
    cx = _uniform(B, -1.0, 1.0, gen, x) * (1 - fw)
    cy = _uniform(B, -1.0, 1.0, gen, x) * (1 - fh)
    zero = torch.zeros_like(fw)
    theta = torch.stack([torch.stack([fw, zero, cx], 1), torch.stack([zero, fh, cy], 1)], 1)  # (B, 2, 3)
    return resample(x, theta)


def affine_theta(angle: torch.Tensor, shear: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor,
                 H: int, W: int) -> torch.Tensor:
    """(B, 2, 3) output->input maps for ``F.affine_grid``, about the image centre.

    The forward map, in pixel units with y pointing down, is A = R(angle) Sh(shear) S(sx, sy):
    stretch by (sx, sy), shear x by tan(shear), then rotate counterclockwise as displayed (angles
    in degrees). ``grid_sample`` needs the inverse, A^-1 = S^-1 Sh^-1 R^-1, expressed in
    affine_grid's normalized coordinates: D^-1 A^-1 D with D = diag(W/2, H/2), which keeps
    rotations rigid on non-square images.
    """
    a = torch.deg2rad(angle)
    cos, sin, tan = torch.cos(a), torch.sin(a), torch.tan(torch.deg2rad(shear))
    # R(a)^-1 for y down: rotating by -a counterclockwise on screen.
    r_inv = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    sh_inv = torch.stack([torch.stack([one, -tan], -1), torch.stack([zero, one], -1)], -2)
    s_inv = torch.diag_embed(torch.stack([1 / sx, 1 / sy], -1))
    d = torch.tensor([W / 2, H / 2], dtype=a.dtype, device=a.device)
    m = s_inv @ sh_inv @ r_inv * d[None, None, :] / d[None, :, None]  # D^-1 M D, elementwise
    return torch.cat([m, torch.zeros_like(m[:, :, :1])], 2)


def affine(x: torch.Tensor, gen: torch.Generator, *, degrees: float, shear: float, stretch: float) -> torch.Tensor:
    """Rotate by U(-degrees, degrees), shear by U(-shear, shear) degrees, and stretch each axis by
    its own factor in U(1 - stretch, 1 + stretch) (the lecture's "stretching, shearing")."""
    B, _, H, W = x.shape
    angle = _uniform(B, -degrees, degrees, gen, x)
    sh = _uniform(B, -shear, shear, gen, x)
    sx = _uniform(B, 1 - stretch, 1 + stretch, gen, x)
    sy = _uniform(B, 1 - stretch, 1 + stretch, gen, x)
    return resample(x, affine_theta(angle, sh, sx, sy, H, W))


# --- occlusion -----------------------------------------------------------------------------------

def cutout(x: torch.Tensor, gen: torch.Generator, *, size: int, fill: float) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): fill a size x size square centred anywhere in the image.

    As in the paper the centre is uniform over the whole image, so the square may hang over the
    border and be clipped ("allowing portions of the patches to be outside of the image").
    """
    B, _, H, W = x.shape
    side = torch.full((B,), size, device=x.device)
    mask = _random_box(B, side, side, H, W, gen, x.device)
    return x.masked_fill(mask.unsqueeze(1), fill)


def erase(x: torch.Tensor, gen: torch.Generator, *, p: float, scale: tuple[float, float],
          ratio: tuple[float, float], fill: float | str) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017, Alg. 1): with probability p, a box inside the image with a
    random share of the area (uniform in ``scale``) and aspect ratio (log-uniform in ``ratio``) is
    filled with uniform noise (``fill="random"``, the paper's default) or a constant.

    The paper redraws boxes that do not fit; here a box's sides are clipped to the image instead.
    """
    B, _, H, W = x.shape
    apply = torch.rand(B, generator=gen, device=x.device) < p
    area = _uniform(B, *scale, gen, x) * (H * W)
    aspect = torch.exp(_uniform(B, math.log(ratio[0]), math.log(ratio[1]), gen, x))
    h = torch.sqrt(area / aspect).round().long().clamp(1, H)
    w = torch.sqrt(area * aspect).round().long().clamp(1, W)
    y0 = _randint(B, H - h + 1, gen, x.device)
    x0 = _randint(B, W - w + 1, gen, x.device)
    mask = (box_mask(y0, x0, h, w, H, W) & apply.view(B, 1, 1)).unsqueeze(1)  # (B, 1, H, W)
    if fill == "random":
        noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return torch.where(mask, noise, x)
    return x.masked_fill(mask, fill)


def drop_pixels(x: torch.Tensor, gen: torch.Generator, *, p: float) -> torch.Tensor:
    """Set each pixel (all its channels) to zero with probability p: the lecture's "drop pixels",
    dropout applied to the input. Unlike dropout the survivors are not rescaled by 1/(1-p): the
    image stays an image in [0, 1]."""
    B, _, H, W = x.shape
    keep = torch.rand((B, 1, H, W), generator=gen, device=x.device) >= p
    return x * keep


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
    b = _uniform(B, 1 - brightness, 1 + brightness, gen, x).view(view)
    c = _uniform(B, 1 - contrast, 1 + contrast, gen, x).view(view)
    s = _uniform(B, 1 - saturation, 1 + saturation, gen, x).view(view)
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
    v = (1 + cz)^3 with z ~ N(0, 1) and accept if log u < z^2/2 + d - dv + d log v; for a < 1 use
    Gamma(a) = Gamma(a + 1) U^(1/a). Eight proposals per sample, the first accepted one kept: each is
    accepted with probability > 0.95, so all eight fail about once in 10^10 draws (then d is used).
    """
    a = alpha + 1.0 if alpha < 1.0 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    rounds = 8
    z = torch.randn((rounds, n), generator=gen, device=device, dtype=torch.float64)
    u = torch.rand((rounds, n), generator=gen, device=device, dtype=torch.float64)
    v = (1 + c * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp(min=1e-300)))
    first = ok.double().argmax(0)  # index of the first accepted proposal (0 if none)
    dv = (d * v).gather(0, first[None]).squeeze(0)
    log_g = torch.where(ok.any(0), torch.log(dv.clamp(min=1e-300)), torch.full_like(dv, math.log(d)))
    if alpha < 1.0:  # work in logs: U^(1/a) underflows for small a
        u_boost = torch.rand(n, generator=gen, device=device, dtype=torch.float64)
        log_g = log_g + torch.log(u_boost.clamp(min=1e-300)) / alpha
    return log_g


def beta(alpha: float, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n,) float32 samples of Beta(alpha, alpha) = G1 / (G1 + G2) with G1, G2 ~ Gamma(alpha)."""
    g1 = _log_gamma_sample(alpha, n, gen, device)
    g2 = _log_gamma_sample(alpha, n, gen, device)
    return torch.sigmoid(g1 - g2).float()  # G1/(G1+G2) = sigmoid(log G1 - log G2)


def mixup(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, *, alpha: float
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """mixup (Zhang et al. 2017): x = lam x_i + (1 - lam) x_j, y likewise, with lam ~ Beta(alpha, alpha)
    drawn per sample and j a random permutation of the batch (the paper mixes with a shuffled copy
    of the same minibatch, §2 and its listing)."""
    B = x.shape[0]
    lam = beta(alpha, B, gen, x.device).to(x.dtype)
    partner = torch.randperm(B, generator=gen, device=x.device)
    x = torch.lerp(x[partner], x, lam.view(B, 1, 1, 1))
    y = torch.lerp(y[partner], y, lam.view(B, 1).to(y.dtype))
    return x, y


def cutmix(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, *, alpha: float
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al. 2019, §3.1): paste a box from a partner image, box sides sqrt(1 - lam) of
    the image's, lam ~ Beta(alpha, alpha), centre uniform (clipped at the border); the target weight
    is then the exact share of the pixels each image contributes, as the paper adjusts lam."""
    B, _, H, W = x.shape
    lam = beta(alpha, B, gen, x.device)
    partner = torch.randperm(B, generator=gen, device=x.device)
    cut = torch.sqrt(1 - lam)
    h = (cut * H).round().long()
    w = (cut * W).round().long()
    mask = _random_box(B, h, w, H, W, gen, x.device)  # (B, H, W)
    x = torch.where(mask.unsqueeze(1), x[partner], x)
    kept = 1 - mask.flatten(1).sum(1).to(y.dtype) / (H * W)  # share of the sample's own pixels
    y = torch.lerp(y[partner], y, kept.view(B, 1))
    return x, y
