"""Every registered model, tested for free (timm style): parametrized over ``cnnlab.models.names()``.

For each model: forward shape with 7 classes and a batch of 2 on the smallest input the
architecture allows (found with ``check_input_size`` on the meta device) and, marked slow, on its
native input; no NaN; the gradient reaches the input; the parameter count equals the published
one (counted on the meta device, so free even for VGG); both backends agree (on the smallest
input); the CIFAR-sized models also take 1x28x28 MNIST (a shape question, answered on meta).

The smallest input rather than the native one in the fast subset: a CIFAR DenseNet-BC-100 or
ResNet-110 takes ~16x fewer MACs at 8x8 than at 32x32 and exercises the same layers.

The fast subset (what CI runs) is the MNIST/CIFAR-sized models up to 12M parameters. ImageNet-sized
models (native input above 64x64) and bigger ones are marked slow: building and initializing them
alone takes seconds, and deep ones (DenseNet, ResNet-50+) take several more for one small
forward and backward on a shared CPU. ``pytest -m slow tests/test_zoo_registry.py`` runs them.
"""
from __future__ import annotations

import functools
import itertools

import pytest
import torch

from cnnlab import models
from cnnlab.errors import CnnlabError
from cnnlab.inspect import check_input_size

NAMES = models.names()
BIG = 12_000_000  # parameters; above this, building and initializing the model alone takes seconds
CHEAP_PIXELS = 64 * 64
NUM_CLASSES = 7


@functools.cache
def param_count(name: str) -> int:
    """The published count, or the count of a meta-device build."""
    entry = models.info(name)
    if entry.params is not None:
        return entry.params
    with torch.device("meta"):
        return models.count_params(models.create(name, num_classes=entry.num_classes,
                                                 in_channels=entry.input_size[0]))


def native_is_cheap(name: str) -> bool:
    _, h, w = models.info(name).input_size
    return h * w <= CHEAP_PIXELS


def is_slow(name: str) -> bool:
    return param_count(name) > BIG or not native_is_cheap(name)


def case(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if is_slow(name) else name


@functools.cache
def smallest_input(name: str) -> tuple[int, int, int]:
    """The smallest square-ish input (aspect of the native one) that passes ``check_input_size``."""
    c, h, w = models.info(name).input_size
    with torch.device("meta"):
        model = models.create(name, num_classes=NUM_CLASSES, in_channels=c)  # train mode: aux heads too
    for side in [8, 16, 24, 32, 48, 64, 96, 128, 160, 192, h]:
        if side > h:
            continue
        size = (c, side, max(1, round(side * w / h)))
        try:
            check_input_size(model, size, name=name)
        except CnnlabError:
            continue
        return size
    pytest.fail(f"{name} refuses even its native input {(c, h, w)}")


def check_forward(model: torch.nn.Module, size: tuple[int, ...]) -> None:
    """Shapes and finite values in train mode (auxiliary heads included) and in eval mode, and a
    finite, nonzero gradient at the input in eval mode. (In train mode, BatchNorm over a batch of
    2 at 1x1, which the smallest inputs reach, is degenerate: every normalized value is +-1, and
    its backward pass is 0/0 for a deep ResNet.)"""
    torch.manual_seed(0)
    x = torch.randn(2, *size, requires_grad=True)
    model.train()
    with torch.no_grad():
        output = model(x)
    for out in (output if isinstance(output, (tuple, list)) else [output]):
        assert out.shape == (2, NUM_CLASSES)
        assert torch.isfinite(out).all()
    model.eval()
    out = model(x)
    assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()
    (out * torch.randn(2, NUM_CLASSES)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", [case(n) for n in NAMES])
def test_forward_on_the_smallest_input_with_gradient_to_the_input(name):
    size = smallest_input(name)
    check_forward(models.create(name, num_classes=NUM_CLASSES, in_channels=size[0]), size)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_forward_on_the_native_input_with_gradient_to_the_input(name):
    size = models.info(name).input_size
    if size == smallest_input(name):
        pytest.skip("the native input is the smallest one: see test_forward_on_the_smallest_input")
    check_forward(models.create(name, num_classes=NUM_CLASSES, in_channels=size[0]), size)


CIFAR = [n for n in NAMES if models.info(n).input_size == (3, 32, 32)]


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_sized_models_also_take_mnist(name):
    # The CIFAR-sized models also run on 1x28x28 MNIST (cnnlab train --model NAME --data mnist).
    # A shape question, so it is answered on the meta device (train mode, auxiliary heads included).
    assert check_input_size(name, (1, 28, 28)) == (2, models.info(name).num_classes)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_equals_the_published_one(name):
    entry = models.info(name)
    if entry.params is None:
        pytest.skip(f"{name} has no published parameter count")
    with torch.device("meta"):
        model = models.create(name, num_classes=entry.num_classes, in_channels=entry.input_size[0])
    assert models.count_params(model) == entry.params


def manual_convert_available() -> bool:
    try:
        from cnnlab.manual import convert  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("name", [case(n) for n in NAMES])
def test_backends_agree_in_eval_mode(name):
    if not manual_convert_available():
        pytest.skip("cnnlab.manual.convert is not available yet, so there is no manual backend to compare")
    size = smallest_input(name)
    torch.manual_seed(0)
    reference = models.create(name, num_classes=NUM_CLASSES, in_channels=size[0]).double().eval()
    manual = models.create(name, backend="manual", num_classes=NUM_CLASSES, in_channels=size[0])
    manual.load_state_dict(reference.state_dict())
    manual.double().eval()
    x = torch.randn(2, *size, dtype=torch.float64)
    with torch.no_grad():
        expected, got = reference(x), manual(x)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9 * max(1.0, expected.abs().max().item()))


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES[:5])
def test_an_unknown_name_lists_the_closest_registered_names(name):
    typo = name + "z"
    with pytest.raises(CnnlabError, match=f"unknown model '{typo}'; did you mean .*'{name}'"):
        models.create(typo)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("argument", ["num_classes", "in_channels"])
def test_zero_classes_or_channels_are_refused(name, argument):
    with pytest.raises(CnnlabError, match=f"{argument}=0"):
        models.create(name, **{argument: 0})


# One model per family: the check is the registry's, the build is the family's.
ONE_PER_FAMILY = [next(group) for _, group in
                  itertools.groupby(sorted(NAMES, key=lambda n: models.info(n).family),
                                    key=lambda n: models.info(n).family)]


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_an_unknown_init_is_refused(name):
    with torch.device("meta"), pytest.raises(CnnlabError, match="unknown init scheme 'glorot'"):
        models.create(name, init="glorot")
