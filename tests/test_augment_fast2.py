"""Batch augmentation written in place: ``Pipeline(..., inplace_ok=...)`` and the kernels' ``inplace=``
give the same batches, value for value, as the out-of-place path, and never touch a batch the caller
keeps; the flat box indices that cutout and erase write through mark exactly the boxes' pixels."""
import numpy as np
import pytest
import torch

from cnnlab.data import augment_ops as K
from cnnlab.data.augment import OPS, parse_augment


def batch(b=16, c=3, h=14, w=17, seed=0):
    return torch.rand((b, c, h, w), generator=torch.Generator().manual_seed(seed))


def out_of_place(pipeline, x, y, seed):
    """The pipeline's kernels chained by hand, every one allocating its output (the reference)."""
    g = torch.Generator().manual_seed(seed)
    if pipeline.soft_targets:
        y = torch.nn.functional.one_hot(y, 10).float()
    for op, values in pipeline.ops:
        if op.soft:
            x, y = op.kernel(x, y, g, **values)
        else:
            x = op.kernel(x, g, **values)
    return x, y


SPECS = ["flip,cutout:5", "crop:2,cutout:5/0.3,erase:0.9", "affine:20/10/0.2,erase:0.9/0.1-0.3/0.5-2/0.4",
         "erase:0.9,droppixel:0.3,flip", "rrc:0.3-1,erase,mixup:0.4", "crop:3,cutmix:1,cutout:4",
         "cutout:6,cutout:6,erase:1"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("inplace_ok", [False, True])
def test_in_place_pipelines_give_the_out_of_place_batches_exactly(spec, inplace_ok):
    x, y = batch(), torch.arange(16) % 10
    expected_x, expected_y = out_of_place(parse_augment(spec), x.clone(), y, seed=3)
    given = x.clone()
    out_x, out_y = parse_augment(spec)(given, y, num_classes=10, generator=torch.Generator().manual_seed(3),
                                       inplace_ok=inplace_ok)
    assert torch.equal(out_x, expected_x) and torch.equal(out_y.float(), expected_y.float())
    if not inplace_ok:
        assert torch.equal(given, x)  # the first op never writes into a batch the caller keeps


@pytest.mark.parametrize("name", [n for n, op in OPS.items() if op.inplace])
def test_a_kept_batch_is_left_alone_and_a_given_one_may_be_written(name):
    x, y = batch(), torch.nn.functional.one_hot(torch.arange(16) % 10, 10).float()
    op = OPS[name]
    values = {p.name: p.default for p in op.params}
    if name in ("erase", "flip"):
        values["p"] = 1.0
    run = (lambda t, **kw: op.kernel(t, y, torch.Generator().manual_seed(1), **values, **kw)[0]) if op.soft else \
        (lambda t, **kw: op.kernel(t, torch.Generator().manual_seed(1), **values, **kw))
    kept = x.clone()
    reference = run(kept)
    assert torch.equal(kept, x) and not torch.equal(reference, x)
    given = x.clone()
    out = run(given, inplace=True)
    assert torch.equal(out, reference)
    assert out.data_ptr() == given.data_ptr()  # written into the batch given away, no new one


def test_the_first_op_of_a_default_call_never_writes_into_the_callers_batch():
    x, y = batch(), torch.arange(16) % 10
    before = x.clone()
    for spec in ("cutout:6", "erase:1", "flip:1", "droppixel:0.5", "cutmix:1"):
        parse_augment(spec)(x, y, num_classes=10, generator=torch.Generator().manual_seed(0))
        assert torch.equal(x, before), spec


def test_a_batch_that_autograd_tracks_is_never_written_in_place():
    x = batch().requires_grad_()
    out, _ = parse_augment("crop:2,cutout:5,erase:1,flip")(x, torch.arange(16) % 10, num_classes=10,
                                                           generator=torch.Generator().manual_seed(0),
                                                           inplace_ok=True)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("spec", ["cutout:5,erase:1", "erase:1/0.2-0.4/0.5-2/0.5"])
def test_a_given_channels_last_batch_gives_the_same_result(spec):
    x, y = batch(), torch.arange(16) % 10
    expected, _ = parse_augment(spec)(x.clone(), y, num_classes=10, generator=torch.Generator().manual_seed(2))
    cl = x.clone().to(memory_format=torch.channels_last)
    out, _ = parse_augment(spec)(cl, y, num_classes=10, generator=torch.Generator().manual_seed(2), inplace_ok=True)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("C", [1, 3])
def test_flat_box_indices_mark_exactly_the_boxes_in_row_major_order(C):
    rng = np.random.default_rng(C)
    B, H, W = 40, 9, 13
    start = np.stack([rng.integers(0, H, B), rng.integers(0, W, B)]).astype(np.float64)
    length = np.stack([rng.integers(-2, H, B), rng.integers(-2, W, B)]).astype(np.float64)
    length = np.minimum(length, np.array([[H], [W]]) - start)  # inside the image; <= 0: no box
    mask = np.zeros((B, C, H, W), bool)
    for b in range(B):
        y0, x0, h, w = int(start[0, b]), int(start[1, b]), int(length[0, b]), int(length[1, b])
        if h > 0 and w > 0:
            mask[b, :, y0:y0 + h, x0:x0 + w] = True
    index = K._box_flat_index(start, length, C, H, W)
    assert np.array_equal(index, np.flatnonzero(mask))
    assert 0 < mask.sum() < mask.size


def test_boxes_write_noise_like_masked_scatter_and_constants_like_masked_fill():
    x = batch(b=8, c=2, h=10, w=12)
    start = np.array([[0., 3, 5, 9, 2, 0, 1, 4], [0., 1, 7, 11, 0, 2, 3, 0]])
    length = np.array([[10., 2, 5, 1, 3, 0, 4, 6], [12., 5, 5, 1, 0, 4, 9, 12]])
    length = np.minimum(length, np.array([[10.], [12.]]) - start)
    mask = torch.zeros((8, 1, 10, 12), dtype=torch.bool)
    for b in range(8):
        y0, x0, h, w = (int(v) for v in (start[0, b], start[1, b], length[0, b], length[1, b]))
        mask[b, :, y0:y0 + h, x0:x0 + w] = True
    count = int(mask.sum()) * 2
    noise = K._write_boxes(x.clone(), start, length, gen=torch.Generator().manual_seed(5))
    assert torch.equal(noise, K._noise_into(x, mask, count, torch.Generator().manual_seed(5)))
    filled = K._write_boxes(x.clone(), start, length, fill=0.25)
    assert torch.equal(filled, x.masked_fill(mask, 0.25))


def test_mixup_blends_each_image_with_its_partner_as_torch_lerp_does():
    x, y = batch(), torch.nn.functional.one_hot(torch.arange(16) % 10, 10).float()
    out_x, out_y = K.mixup(x, y, torch.Generator().manual_seed(7), alpha=0.4)
    g = torch.Generator().manual_seed(7)
    lam = K.beta(0.4, 16, g, x.device)
    partner = torch.randperm(16, generator=g)
    assert torch.equal(out_x, torch.lerp(x[partner], x, lam.view(16, 1, 1, 1)))
    assert torch.equal(out_y, torch.lerp(y[partner], y, lam.view(16, 1)))


def test_soft_targets_start_as_one_hot_rows_and_labels_out_of_range_are_refused():
    x, y = batch(b=12), torch.tensor([0, 3, 9, 1, 2, 2, 7, 5, 4, 8, 6, 0])
    _, soft = parse_augment("mixup:0.3")(x, y, num_classes=10, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    _, expected = K.mixup(x, torch.nn.functional.one_hot(y, 10).float(), g, alpha=0.3)
    assert torch.equal(soft, expected)
    with pytest.raises(RuntimeError):
        parse_augment("mixup:0.3")(x, torch.full((12,), 10), num_classes=10, generator=torch.Generator())


def test_the_loader_hands_its_fresh_batches_over_and_never_touches_its_dataset(monkeypatch):
    from cnnlab.data import BatchLoader
    from cnnlab.data.augment import Pipeline, parse_augment

    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (40, 1, 12, 12), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 10, (40,), generator=gen)
    kept = x.clone()

    passed = []
    real = Pipeline.__call__

    def batches(inplace: bool):
        def call(self, *a, **k):
            passed.append(k.get("inplace_ok"))
            return real(self, *a, **{**k, "inplace_ok": inplace})
        monkeypatch.setattr(Pipeline, "__call__", call)
        loader = BatchLoader(x, y, batch_size=16, mean=(0.5,), std=(0.25,), augment=parse_augment("cutout:4,erase"),
                             num_classes=10, seed=1)
        return list(loader)

    handed, copied = batches(True), batches(False)
    assert passed and all(passed)  # the loader gives its batches away
    assert all(torch.equal(a[0], b[0]) for a, b in zip(handed, copied))
    assert torch.equal(x, kept)
