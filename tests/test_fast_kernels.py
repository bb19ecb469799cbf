"""cnnlab.models.fast: every replacement kernel computes torch's function and gradients, and
``apply`` keeps a kernel only where it measured faster (with a fake timer here: never timed tests)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import models
from cnnlab.errors import CnnlabError
from cnnlab.models import fast

TOLERANCES = {torch.float64: dict(atol=1e-12, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-4)}


def _check_layer_against_torch(ours: nn.Module, reference: nn.Module, x: torch.Tensor, dtype: torch.dtype,
                               input_grad: bool = True) -> None:
    ours, reference = ours.to(dtype), reference.to(dtype)
    x = x.to(dtype)
    tol = TOLERANCES[dtype]
    xs = [x.clone().requires_grad_(input_grad) for _ in range(2)]
    ys = [ours(xs[0]), reference(xs[1])]
    torch.testing.assert_close(ys[0], ys[1], **tol)
    upstream = torch.randn_like(ys[1])
    for y in ys:
        y.backward(upstream)
    if input_grad:
        torch.testing.assert_close(xs[0].grad, xs[1].grad, **tol)
    for (name, p), q in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **tol, msg=lambda m, name=name: f"grad of {name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 3, 7, 9), (5, 1, 2, 2)])
def test_slice_pool_matches_torchs_max_pool_and_its_gradient(dtype, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    _check_layer_against_torch(fast.SlicePool2d(2), nn.MaxPool2d(2), x, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_slice_pool_sends_the_gradient_of_a_tie_to_the_same_pixel_as_torch(dtype):
    # ReLU outputs tie at 0 everywhere, small integers tie often: torch picks the first max in
    # row-major order of the window, and so must we.
    torch.manual_seed(1)
    x = torch.randint(-1, 2, (4, 3, 6, 6)).float().relu()
    _check_layer_against_torch(fast.SlicePool2d(2), nn.MaxPool2d(2), x, dtype)


def test_slice_pool_falls_back_to_torch_for_other_geometries():
    x = torch.randn(2, 3, 7, 7)
    for args in [dict(kernel_size=3, stride=2), dict(kernel_size=2, padding=1), dict(kernel_size=2, ceil_mode=True)]:
        torch.testing.assert_close(fast.SlicePool2d(**args)(x), nn.MaxPool2d(**args)(x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cin, padding, stride", [(1, 2, 1), (3, 0, 1), (2, 1, 2)])
def test_im2col_conv_matches_torchs_conv_and_every_gradient(dtype, cin, padding, stride):
    torch.manual_seed(0)
    reference = nn.Conv2d(cin, 4, 5, padding=padding, stride=stride)
    ours = copy.deepcopy(reference)
    ours.__class__ = fast.Im2colConv2d
    _check_layer_against_torch(ours, reference, torch.randn(3, cin, 12, 11), dtype)
    # a first layer: no gradient for the input, only for the weight and bias
    _check_layer_against_torch(copy.deepcopy(ours), copy.deepcopy(reference), torch.randn(3, cin, 12, 11), dtype,
                               input_grad=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["lenet5", "speedrun-net"])
def test_moving_the_pool_before_the_relu_keeps_outputs_and_every_gradient(dtype, name):
    torch.manual_seed(0)
    reference = models.create(name)
    ours = copy.deepcopy(reference)
    moved = fast.reorder_relu_pool(ours)
    if name == "lenet5":
        assert moved == ["features.1", "features.4"]
        assert [type(m) for m in ours.features] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU] * 2
    x = torch.randn(6, 1, 28, 28)
    _check_layer_against_torch(ours, reference, x, dtype)


def _fake_timer(fast_seconds: dict[type, float]):
    """Times a layer by its class: torch's layers 1.0 s, the fast classes as given."""
    def timer(layer, x, first_layer):
        layer(x.detach().requires_grad_(not first_layer)).sum().backward()  # really runs it
        return fast_seconds.get(type(layer), 1.0)
    return timer


def test_apply_keeps_only_the_kernels_that_measured_faster_and_undo_restores_torch():
    torch.manual_seed(0)
    model = models.create("lenet5")
    reference = copy.deepcopy(model)
    x = torch.randn(8, 1, 28, 28)
    report = fast.apply(model, x, timer=_fake_timer({fast.SlicePool2d: 0.5, fast.Im2colConv2d: 2.0}), repeats=3)
    assert sorted(report.chosen) == ["features.1: slice-pool", "features.4: slice-pool"]
    assert [type(m) for m in model.features] == [nn.Conv2d, fast.SlicePool2d, nn.ReLU] * 2
    assert len(report.measured) == 4 and any("rejected" in line for line in report.lines())
    assert all(p.grad is None for p in model.parameters())  # timing left no gradients behind
    torch.testing.assert_close(model(x), reference(x))
    fast.undo(model)
    assert [type(m) for m in model.features] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU] * 2
    assert model.state_dict().keys() == reference.state_dict().keys()


def test_apply_can_be_switched_off_and_refuses_unknown_kernels():
    model = models.create("lenet5")
    before = [type(m) for m in model.modules()]
    report = fast.apply(model, torch.randn(2, 1, 28, 28), enabled=False)
    assert report.chosen == [] and report.reordered == [] and [type(m) for m in model.modules()] == before
    with pytest.raises(CnnlabError, match="valid: pool-before-relu, slice-pool, im2col-conv"):
        fast.apply(model, torch.randn(2, 1, 28, 28), kernels=("winograd",))


def test_a_model_with_fast_kernels_trains_like_the_torch_model():
    torch.manual_seed(0)
    reference = models.create("lenet5").double()
    ours = copy.deepcopy(reference)
    fast.apply(ours, torch.randn(4, 1, 28, 28, dtype=torch.float64),
               timer=_fake_timer({fast.SlicePool2d: 0.1, fast.Im2colConv2d: 0.1}), repeats=1)
    assert type(ours.features[0]) is fast.Im2colConv2d
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (reference, ours)]
    x, y = torch.randn(16, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (16,))
    for _ in range(3):
        for m, opt in zip((reference, ours), opts):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
    for p, q in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=1e-10, rtol=1e-8)
