"""The fast augmentation kernels against direct references: F.affine_grid + F.grid_sample for the
resampling ops, per-image slicing for the crop, per-image boxes for cutout and erasing, SciPy for
the Beta samplers (closed-form CDFs, and each other); the NumPy and torch parameter paths against
each other; inputs left untouched."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.data import augment_ops as K
from cnnlab.data.augment import parse_augment

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 2e-6, torch.float64: 1e-12}


def batch(b=24, c=1, h=14, w=17, dtype=torch.float32, seed=0):
    return torch.rand((b, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def draws(k, b, seed):
    """The (k, b) float64 U[0, 1) parameters an op draws first from a generator seeded with ``seed``."""
    return torch.rand((k, b), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_resample(x, theta):
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_resample_equals_affine_grid_then_grid_sample(dtype):
    x = batch(c=3, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    theta = torch.randn((24, 2, 3), generator=g, dtype=torch.float64) * 0.4 + torch.tensor([[1.0, 0, 0], [0, 1, 0]],
                                                                                           dtype=torch.float64)
    out = K.resample(x, theta)
    assert out.dtype == dtype
    assert torch.allclose(out, reference_resample(x, theta), atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_resized_crop_is_grid_sample_of_the_drawn_box(dtype):
    x, (B, _, H, W) = batch(dtype=dtype), batch().shape
    scale, ratio = (0.2, 0.9), (0.5, 2.0)
    out = K.resized_crop(x, torch.Generator().manual_seed(5), scale=scale, ratio=ratio)
    u = draws(4, B, 5)
    area = (scale[0] + (scale[1] - scale[0]) * u[0]) * H * W
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1])
    fw = (torch.sqrt(area * aspect) / W).clamp(max=1)
    fh = (torch.sqrt(area / aspect) / H).clamp(max=1)
    cx, cy = (2 * u[2] - 1) * (1 - fw), (2 * u[3] - 1) * (1 - fh)
    zero = torch.zeros(B, dtype=torch.float64)
    theta = torch.stack([torch.stack([fw, zero, cx], 1), torch.stack([zero, fh, cy], 1)], 1)
    assert torch.allclose(out, reference_resample(x, theta), atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_is_grid_sample_of_the_inverse_rotation_shear_stretch(dtype):
    x, (B, _, H, W) = batch(c=2, dtype=dtype), batch().shape
    out = K.affine(x, torch.Generator().manual_seed(6), degrees=30, shear=20, stretch=0.2)
    u = draws(4, B, 6) * 2 - 1
    a, sh = torch.deg2rad(30 * u[0]), torch.deg2rad(20 * u[1])
    sx, sy = 1 + 0.2 * u[2], 1 + 0.2 * u[3]
    # the forward map A = R(a) Sh(sh) S(sx, sy) in pixels (y down), inverted numerically
    rot = torch.stack([torch.stack([a.cos(), a.sin()], -1), torch.stack([-a.sin(), a.cos()], -1)], -2)
    one, zero = torch.ones(B, dtype=torch.float64), torch.zeros(B, dtype=torch.float64)
    shear = torch.stack([torch.stack([one, sh.tan()], -1), torch.stack([zero, one], -1)], -2)
    stretch = torch.diag_embed(torch.stack([sx, sy], -1))
    d = torch.diag(torch.tensor([W / 2, H / 2], dtype=torch.float64))
    m = torch.linalg.inv(d) @ torch.linalg.inv(rot @ shear @ stretch) @ d
    theta = torch.cat([m, torch.zeros(B, 2, 1, dtype=torch.float64)], 2)
    assert torch.allclose(out, reference_resample(x, theta), atol=TOL[dtype] * 10, rtol=0)


def test_affine_theta_gives_the_same_maps_from_numpy_and_torch():
    u = draws(4, 50, 3)
    t = K.affine_theta(30 * u[0], 10 * u[1], 0.8 + 0.4 * u[2], 0.8 + 0.4 * u[3], 12, 20)
    n = K.affine_theta(*(v.numpy() for v in (30 * u[0], 10 * u[1], 0.8 + 0.4 * u[2], 0.8 + 0.4 * u[3])), 12, 20)
    assert isinstance(n, np.ndarray) and t.shape == n.shape == (50, 2, 3)
    assert np.allclose(t.numpy(), n, atol=1e-14, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_crop_equals_padding_and_slicing_each_image(mode, dtype):
    x, (B, C, H, W) = batch(c=3, dtype=dtype), batch(c=3).shape
    pad = 3
    out = K.crop(x, torch.Generator().manual_seed(7), pad=pad, mode=mode)
    dy, dx = (draws(2, B, 7) * (2 * pad + 1)).floor().long()
    padded = F.pad(x, (pad,) * 4, mode="constant" if mode == "zero" else "reflect")
    expected = torch.stack([padded[b, :, dy[b]:dy[b] + H, dx[b]:dx[b] + W] for b in range(B)])
    assert torch.equal(out, expected)


def test_crop_reads_channels_last_and_non_contiguous_batches_correctly():
    x = batch(b=8, c=3, h=10, w=10)
    ref = K.crop(x, torch.Generator().manual_seed(2), pad=2, mode="zero")
    last = K.crop(x.to(memory_format=torch.channels_last), torch.Generator().manual_seed(2), pad=2, mode="zero")
    wide = torch.cat([x, x], 3)[..., :10]  # a strided view
    strided = K.crop(wide, torch.Generator().manual_seed(2), pad=2, mode="zero")
    assert torch.equal(ref, last) and torch.equal(ref, strided)


def box(h0, w0, h, w, H, W):
    m = torch.zeros(H, W, dtype=torch.bool)
    m[max(h0, 0):max(h0 + h, 0), max(w0, 0):max(w0 + w, 0)] = True
    return m


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fill", [0.0, 0.25])
def test_cutout_fills_the_square_centred_at_the_drawn_pixel(fill, dtype):
    x, (B, C, H, W) = batch(c=2, dtype=dtype), batch(c=2).shape
    size = 6
    out = K.cutout(x, torch.Generator().manual_seed(8), size=size, fill=fill)
    u = draws(2, B, 8)
    cy, cx = (u[0] * H).floor().long(), (u[1] * W).floor().long()
    expected = x.clone()
    for b in range(B):
        expected[b][:, box(cy[b] - size // 2, cx[b] - size // 2, size, size, H, W)] = fill
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fill", ["random", 0.5])
def test_erase_writes_the_drawn_box_inside_the_image(fill, dtype):
    x, (B, C, H, W) = batch(b=64, c=3, dtype=dtype), batch(b=64, c=3).shape
    scale, ratio = (0.05, 0.3), (0.4, 2.5)
    out = K.erase(x, torch.Generator().manual_seed(9), p=0.7, scale=scale, ratio=ratio, fill=fill)
    u = draws(5, B, 9)
    area = (scale[0] + (scale[1] - scale[0]) * u[1]) * H * W
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[2])
    h = torch.sqrt(area / aspect).round().long().clamp(1, H)
    w = torch.sqrt(area * aspect).round().long().clamp(1, W)
    y0, x0 = (u[3] * (H - h + 1)).floor().long(), (u[4] * (W - w + 1)).floor().long()
    masks = torch.stack([box(y0[b], x0[b], h[b], w[b], H, W) & (u[0, b] < 0.7) for b in range(B)])
    masks = masks[:, None].expand(B, C, H, W)
    assert torch.equal(out[~masks], x[~masks])  # untouched outside the boxes
    if fill == "random":  # on the CPU: exactly one U[0, 1) draw per erased value, in row-major order
        g = torch.Generator().manual_seed(9)
        torch.rand((5, B), generator=g, dtype=torch.float64)
        assert torch.equal(out[masks], torch.rand(int(masks.sum()), generator=g, dtype=dtype))
    else:
        assert (out[masks] == 0.5).all()
    assert 0.5 < masks[:, 0].flatten(1).any(1).float().mean() < 0.9


def test_both_ways_of_placing_erase_noise_fill_exactly_the_mask():
    x = batch(b=16, c=2)
    mask = (torch.rand((16, 1, 14, 17), generator=torch.Generator().manual_seed(0)) < 0.2)
    counted = K._noise_into(x, mask, int(mask.sum()) * 2, torch.Generator().manual_seed(1))
    whole = K._noise_into(x, mask, None, torch.Generator().manual_seed(1))
    m = mask.expand_as(x)
    for out in (counted, whole):
        assert torch.equal(out[~m], x[~m]) and (out[m] != x[m]).all() and out[m].max() < 1


OPS = ["flip:0.5", "crop:3", "crop:2/reflect", "rrc:0.3-1/0.5-2", "affine:20/10/0.2", "cutout:5", "erase:0.8",
       "erase:0.8/0.1-0.3/0.5-2/0.3", "droppixel:0.2", "jitter:0.3/0.3/0.3", "mixup:0.4", "cutmix:1"]


@pytest.mark.parametrize("spec", OPS)
def test_the_torch_parameter_path_gives_the_batch_of_the_numpy_path(spec, monkeypatch):
    # On an accelerator the per-sample parameter arithmetic runs in torch; on the CPU in NumPy.
    x, y = batch(b=32, c=3), torch.arange(32) % 10
    numpy_out, numpy_y = parse_augment(spec)(x, y, num_classes=10, generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(K, "_draw", lambda k, n, gen, device: torch.rand((k, n), generator=gen, device=device,
                                                                        dtype=torch.float64))
    torch_out, torch_y = parse_augment(spec)(x, y, num_classes=10, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(numpy_out, torch_out, atol=1e-6, rtol=0)
    assert torch.allclose(numpy_y.float(), torch_y.float(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("spec", OPS)
def test_kernels_leave_their_input_untouched(spec):
    x, y = batch(b=16, c=3), torch.arange(16) % 10
    before = x.clone()
    parse_augment(spec)(x, y, num_classes=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, before)


@pytest.mark.parametrize("spec", OPS)
@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (4, 0, 8, 8)])
def test_empty_batches_pass_through(spec, shape):
    x = torch.zeros(shape)
    out, _ = parse_augment(spec)(x, torch.zeros(shape[0], dtype=torch.int64), num_classes=10,
                                 generator=torch.Generator())
    assert out.shape == x.shape


def test_cached_grids_made_in_inference_mode_serve_autograd_later():
    x = batch(b=4, h=9, w=11)
    with torch.inference_mode():
        K.resample(x, torch.eye(2, 3).expand(4, 2, 3))  # fills the cache for this shape
    theta = (torch.eye(2, 3) * 0.9).expand(4, 2, 3).clone().requires_grad_()
    K.resample(x, theta).sum().backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()


SAMPLERS = {"numpy": K.beta, "torch": K.beta_torch}
CDF = {1.0: lambda v: v, 0.5: lambda v: 2 / math.pi * np.arcsin(np.sqrt(v))}  # uniform and arcsine laws
KS_999 = 1.95  # Kolmogorov-Smirnov: P(sqrt(n) D > 1.95) is about 0.001


def sample(name, alpha, n=5000, seed=0):
    lam = SAMPLERS[name](alpha, n, torch.Generator().manual_seed(seed), torch.device("cpu"))
    assert lam.dtype == torch.float32 and lam.shape == (n,) and lam.min() >= 0 and lam.max() <= 1
    return np.sort(lam.double().numpy())


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("alpha", sorted(CDF))
def test_beta_samplers_follow_the_closed_form_laws_of_beta_1_1_and_beta_half_half(alpha, name):
    v = sample(name, alpha)
    n = len(v)
    cdf = CDF[alpha](v)
    d = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert math.sqrt(n) * d < KS_999


@pytest.mark.parametrize("alpha", [0.2, 4.0])
def test_the_numpy_and_torch_beta_samplers_draw_the_same_law(alpha):
    a, b = sample("numpy", alpha), sample("torch", alpha, seed=1)
    both = np.concatenate([a, b])
    d = np.max(np.abs(np.searchsorted(a, both, "right") / len(a) - np.searchsorted(b, both, "right") / len(b)))
    assert d * math.sqrt(len(a) * len(b) / (len(a) + len(b))) < KS_999
    assert abs(b.var() - 1 / (4 * (2 * alpha + 1))) < 0.1 / (4 * (2 * alpha + 1))


def test_beta_sampler_is_reproducible_from_the_generator_seed():
    assert np.array_equal(sample("numpy", 0.3, 100, seed=5), sample("numpy", 0.3, 100, seed=5))


def test_beta_sampler_draws_from_the_generator_passed_in():
    g = torch.Generator().manual_seed(3)
    first = K.beta(0.5, 8, g, torch.device("cpu"))
    second = K.beta(0.5, 8, g, torch.device("cpu"))
    assert not torch.equal(first, second)  # the generator advanced
