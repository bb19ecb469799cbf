"""Batched augmentation: each op does what its paper/lecture says, per sample, seeded; the grammar and its errors."""
import matplotlib.image
import pytest
import torch

from cnnlab.data import augment_ops
from cnnlab.data.augment import OPS, contact_sheet, describe, parse_augment
from cnnlab.errors import CnnlabError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def run(spec, x, y=None, seed=0, num_classes=10):
    y = torch.zeros(len(x), dtype=torch.int64, device=x.device) if y is None else y
    g = torch.Generator(device=x.device).manual_seed(seed)
    return parse_augment(spec)(x, y, num_classes=num_classes, generator=g)


def images(b=16, c=1, h=20, w=20, seed=0, device="cpu"):
    return torch.rand((b, c, h, w), generator=torch.Generator().manual_seed(seed)).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_keeps_shape_dtype_device_and_value_range(name, channels, device):
    x = images(c=channels, device=device)
    out, y = run(name, x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert y.device == x.device


@pytest.mark.parametrize("name", sorted(OPS))
def test_same_seed_gives_the_same_batch_and_another_seed_a_different_one(name):
    x = images(b=32, c=3)
    a, ya = run(name, x, seed=1)
    b, yb = run(name, x, seed=1)
    c, _ = run(name, x, seed=2)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", sorted(set(OPS) - {"mixup", "cutmix"}))
def test_each_sample_draws_its_own_parameters(name):
    # 32 copies of one image: the same parameters for all would give one distinct output.
    x = images(b=1, c=3).expand(32, 3, 20, 20).contiguous()
    out, _ = run(name, x, seed=3)
    distinct = len({tuple(o.flatten().tolist()) for o in out})
    assert distinct >= (2 if name in ("flip", "erase") else 16)


@pytest.mark.parametrize("name", sorted(OPS))
def test_all_randomness_comes_from_the_generator_passed_in(name):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    run(name, images())
    assert torch.equal(torch.get_rng_state(), before)


def test_flip_with_p1_mirrors_and_twice_is_identity():
    x = images()
    once, _ = run("flip:1", x)
    twice, _ = run("flip:1", once)
    assert torch.equal(once, x.flip(3)) and torch.equal(twice, x)


def test_flip_mirrors_about_half_the_batch():
    x = images(b=2000, h=4, w=4)
    out, _ = run("flip", x)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (mirrored ^ kept).all()  # every image is either mirrored or untouched
    assert 0.45 < mirrored.float().mean() < 0.55


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_crop_moves_a_bright_pixel_by_at_most_pad_and_reaches_every_offset(mode):
    x = torch.zeros(1000, 1, 15, 15)
    x[:, 0, 7, 7] = 1.0
    out, _ = run(f"crop:3/{mode}", x)
    assert (out == 1).flatten(1).sum(1).eq(1).all()  # the pixel is never lost or duplicated
    pos = (out[:, 0] == 1).flatten(1).float().argmax(1)
    dy, dx = pos // 15 - 7, pos % 15 - 7
    assert dy.abs().max() <= 3 and dx.abs().max() <= 3
    assert len(set(zip(dy.tolist(), dx.tolist()))) == 49  # all 7 x 7 shifts occur


def test_crop_reflect_keeps_a_constant_image_and_zero_padding_brings_in_black():
    x = torch.full((64, 3, 8, 8), 0.7)
    reflect, _ = run("crop:2/reflect", x)
    zero, _ = run("crop:2/zero", x)
    assert torch.equal(reflect, x)
    assert (zero == 0).any() and ((zero == 0) | (zero == x)).all()


def test_cutout_zeroes_one_size_by_size_square_per_sample_clipped_at_the_border():
    x = torch.ones(500, 1, 20, 20)
    out, _ = run("cutout:6", x)
    holes = out[:, 0] == 0  # (B, H, W)
    rows, cols = holes.any(2), holes.any(1)
    h, w = rows.sum(1), cols.sum(1)
    assert torch.equal(holes.flatten(1).sum(1), h * w)  # the hole is one rectangle
    assert (h <= 6).all() and (w <= 6).all() and (h >= 3).all() and (w >= 3).all()
    assert ((h == 6) | rows[:, 0] | rows[:, -1]).all()  # a short side touches the border
    assert ((w == 6) | cols[:, 0] | cols[:, -1]).all()
    assert (h == 6).float().mean() > 0.5 and (h < 6).any()  # mostly whole, sometimes clipped


def test_cutout_fill_value_is_written():
    out, _ = run("cutout:4/0.5", torch.ones(8, 3, 10, 10))
    assert ((out == 0.5).flatten(1).sum(1) >= 3 * 2 * 2).all()


def test_erase_fills_one_box_inside_the_image_with_probability_p():
    x = torch.ones(400, 1, 20, 20)
    never, _ = run("erase:0", x)
    assert torch.equal(never, x)
    always, _ = run("erase:1/0.1-0.2/0.5-2/0", x)
    holes = always[:, 0] == 0
    area = holes.flatten(1).sum(1)
    assert torch.equal(area, holes.any(2).sum(1) * holes.any(1).sum(1))  # one rectangle each
    assert (area >= 0.05 * 400).all() and (area <= 0.3 * 400).all()
    half, _ = run("erase", x)
    assert 0.4 < (half != 1).flatten(1).any(1).float().mean() < 0.6  # default fill: uniform noise


def test_droppixel_drops_about_p_of_the_pixels_with_all_their_channels():
    out, _ = run("droppixel:0.3", torch.ones(64, 3, 16, 16))
    dropped = out == 0
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))
    assert abs(dropped.float().mean().item() - 0.3) < 0.02


def test_jitter_brightness_scales_each_image_by_its_own_factor():
    x = images(b=64, c=3) * 0.6 + 0.01  # in (0, 0.61]: times 1.5 stays below 1, no clamping
    out, _ = run("jitter:0.5/0/0", x)
    factor = out / x  # (B, C, H, W), constant per image
    per_image = factor.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-5)
    assert per_image.min() >= 0.5 - 1e-6 and per_image.max() <= 1.5 + 1e-6 and per_image[:, 0].std() > 0.1


def test_jitter_saturation_leaves_gray_and_one_channel_images_alone():
    gray = images(c=1)
    assert torch.equal(run("jitter:0/0/1", gray)[0], gray)
    rgb_gray = gray.expand(16, 3, 20, 20).contiguous()
    assert torch.allclose(run("jitter:0/0/1", rgb_gray)[0], rgb_gray, atol=1e-6)
    colour = images(c=3)
    assert not torch.allclose(run("jitter:0/0/1", colour)[0], colour, atol=1e-3)


def test_jitter_contrast_keeps_the_mean_of_an_unclamped_image():
    x = images(b=32, c=1) * 0.2 + 0.4  # in [0.4, 0.6]: contrast up to 2x stays inside [0, 1]
    out, _ = run("jitter:0/1/0", x)
    assert torch.allclose(out.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-5)


def test_affine_without_rotation_shear_or_stretch_and_rrc_of_the_whole_image_are_identities():
    x = images(c=3, h=12, w=18)
    assert torch.allclose(run("affine:0/0/0", x)[0], x, atol=1e-5)
    assert torch.allclose(run("rrc:1/1.5", x)[0], x, atol=1e-5)  # the box of aspect W/H = 18/12 is the image


def test_affine_rotates_counterclockwise_and_rigidly_on_non_square_images():
    x = images(b=2, h=8, w=8)
    angle = torch.full((2,), 90.0)
    zero, one = torch.zeros(2), torch.ones(2)
    rotated = augment_ops.resample(x, augment_ops.affine_theta(angle, zero, one, one, 8, 8))
    assert torch.allclose(rotated, torch.rot90(x, 1, (2, 3)), atol=1e-5)
    wide = images(b=2, h=6, w=10)
    half_turn = augment_ops.resample(wide, augment_ops.affine_theta(2 * angle, zero, one, one, 6, 10))
    assert torch.allclose(half_turn, wide.flip(2, 3), atol=1e-5)


def test_affine_keeps_a_centred_blob_near_the_centre():
    x = torch.zeros(64, 1, 21, 21)
    x[:, :, 9:12, 9:12] = 1.0
    out, _ = run("affine:45/20/0.2", x)
    assert not torch.equal(out, x)
    assert out[:, :, :6].sum() == 0 and out[:, :, -6:].sum() == 0  # nothing flies to the edges
    mass = out.sum((1, 2, 3))  # about 9 / |det|, and the stretch keeps |det| within [0.64, 1.44]
    assert (mass > 9 * 0.5).all() and (mass < 9 * 1.8).all()


def test_rrc_zooms_into_a_box_of_the_requested_area():
    # A horizontal ramp; a box a quarter of the area (half the width) is stretched 2x.
    x = (torch.arange(32.0) / 32).expand(8, 1, 32, 32).contiguous()
    out, _ = run("rrc:0.25/1", x)
    step = out[:, 0, :, 2:-2].diff(dim=2)
    assert torch.allclose(step, torch.full_like(step, 0.5 / 32), atol=1e-5)


def one_hot_images(y, k, hw=8):
    """Images whose k channels hold the one-hot label everywhere: their pixel mean is their target."""
    return torch.nn.functional.one_hot(y, k).float().view(len(y), k, 1, 1).expand(len(y), k, hw, hw).contiguous()


@pytest.mark.parametrize("spec", ["mixup:0.4", "cutmix", "mixup:1,cutmix:0.5"])
def test_mixed_targets_sum_to_one_and_weigh_each_image_by_its_share_of_the_mix(spec):
    y = torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(0))
    out, soft = run(spec, one_hot_images(y, 10), y)
    assert soft.shape == (256, 10) and soft.dtype == torch.float32
    assert torch.allclose(soft.sum(1), torch.ones(256), atol=1e-6)
    assert torch.allclose(out.mean((2, 3)), soft, atol=1e-5)  # lambda / (1 - lambda) in pixels and targets
    own = soft.gather(1, y[:, None]).squeeze(1)
    assert own.min() < 0.9 and own.std() > 0.05  # per-sample lambdas, not one per batch


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_beta_sampler_matches_the_mean_and_variance_of_beta_alpha_alpha(alpha):
    lam = augment_ops.beta(alpha, 40_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert lam.min() >= 0 and lam.max() <= 1
    assert abs(lam.mean().item() - 0.5) < 0.01
    assert lam.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)


def test_beta_sampler_survives_tiny_alpha():
    lam = augment_ops.beta(0.01, 1000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.isfinite(lam).all() and ((lam < 0.01) | (lam > 0.99)).float().mean() > 0.9


@pytest.mark.parametrize("spec", ["", "none", "  None "])
def test_identity_pipeline_returns_its_inputs_unchanged(spec):
    x, y = images(), torch.arange(16)
    p = parse_augment(spec)
    out, out_y = p(x, y, num_classes=16, generator=torch.Generator())
    assert out is x and out_y is y and str(p) == "none" and p.is_identity and not p.soft_targets


def test_label_preserving_pipelines_return_the_integer_labels():
    y = torch.arange(16)
    out_y = run("flip,crop:2,jitter", images(c=3), y)[1]
    assert out_y is y and not parse_augment("flip,crop:2").soft_targets and parse_augment("flip,mixup").soft_targets


@pytest.mark.parametrize("spec, canonical", [
    ("flip,crop:4,cutout:8", "flip:0.5,crop:4,cutout:8"),
    ("FLIP:0.3 , crop:pad=2/mode=reflect", "flip:0.3,crop:2/reflect"),
    ("affine:15/10/0.25,rrc:0.35-1", "affine:15/10/0.25,rrc:0.35-1"),
    ("erase:0.5/0.02-0.4/0.3-3.3333333333333335/0", "erase:0.5/0.02-0.4/0.3-3.3333333333333335/0"),
    ("jitter:0.2/0.4/0.4,droppixel:0.05,mixup,cutmix:1", "jitter:0.2,droppixel:0.05,mixup:0.2,cutmix:1"),
])
def test_specs_read_back_from_their_canonical_string(spec, canonical):
    p = parse_augment(spec)
    assert str(p) == canonical and parse_augment(str(p)) == p


@pytest.mark.parametrize("spec, words", [
    ("flp", ["unknown augmentation 'flp'", "did you mean 'flip'"]),
    ("crop:-1", ["crop pad", "'-1'"]),
    ("flip:2", ["flip p", "probability", "'2'"]),
    ("cutout:abc", ["cutout size", "'abc'"]),
    ("cutout:4.5", ["cutout size", "integer"]),
    ("mixup:0", ["mixup alpha", "positive", "'0'"]),
    ("cutmix:-1", ["cutmix alpha", "'-1'"]),
    ("droppixel:1", ["droppixel p", "'1'"]),
    ("jitter:1.5", ["jitter brightness", "'1.5'"]),
    ("affine:15,10,0.1", ["separated by '/'"]),
    ("crop:4/mirror", ["crop mode", "zero, reflect", "'mirror'"]),
    ("crop:size=4", ["unknown crop parameter 'size'"]),
    ("crop:4/pad=2", ["crop pad is given twice"]),
    ("flip:0.5/2", ["flip takes at most 1"]),
    ("flip:", ["flip has an empty argument"]),
    ("flip,,crop", ["empty op"]),
    ("rrc:0.5-0.2", ["rrc scale", "'0.5-0.2'"]),
    ("rrc:0.1/0", ["rrc ratio", "'0'"]),
    ("erase:0.5/0.1/1/blue", ["erase fill", "'blue'"]),
    ("mixup:nan", ["mixup alpha", "'nan'"]),
])
def test_bad_specs_are_refused_in_one_sentence_naming_the_op_and_the_value(spec, words):
    with pytest.raises(CnnlabError) as err:
        parse_augment(spec)
    message = str(err.value)
    assert "\n" not in message
    for w in words:
        assert w in message


def test_a_non_string_spec_is_refused():
    with pytest.raises(CnnlabError, match="string"):
        parse_augment(["flip"])


@pytest.mark.parametrize("spec, words", [("crop:20", "crop with pad=20"), ("cutout:21", "cutout with size=21")])
def test_a_crop_or_cutout_larger_than_the_image_is_refused_when_the_batch_arrives(spec, words):
    with pytest.raises(CnnlabError, match=words) as err:
        run(spec, images())
    assert "20x20" in str(err.value)


def test_integer_images_are_refused():
    with pytest.raises(CnnlabError, match="float images"):
        run("flip", torch.zeros(4, 1, 8, 8, dtype=torch.uint8))


def test_describe_lists_every_op_with_its_defaults():
    text = describe()
    for name, op in OPS.items():
        assert f"\n{name}:" in text
        for p in op.params:
            assert p.name in text
    assert "flip,crop:4,cutout:8" in text and "default 0.08-1" in text


def test_contact_sheet_writes_a_png_of_originals_and_augmented_rows(tmp_path, tiny):
    path = tmp_path / "sheets" / "sheet.png"
    contact_sheet(tiny.train_x[:20], parse_augment("crop:2,cutout:8"), path, rows=3, n=10, title="crop + cutout")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 50
    assert [p.name for p in path.parent.iterdir()] == ["sheet.png"]  # no temporary file left behind


def test_contact_sheet_of_colour_images_with_mixup(tmp_path):
    x = (images(b=6, c=3, h=12, w=12) * 255).to(torch.uint8)
    path = tmp_path / "rgb.png"
    contact_sheet(x, parse_augment("jitter,mixup:1"), path, n=12)
    assert matplotlib.image.imread(path).shape[2] in (3, 4)


def test_contact_sheet_refuses_float_images(tmp_path):
    with pytest.raises(CnnlabError, match="uint8"):
        contact_sheet(images(), parse_augment("flip"), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())
