"""The manual backend's faster forms compute the same values and gradients as autograd.

Each test pins one shortcut: ReLU's δ ⊙ sign(y), max pooling's first argmax from two plain
reductions (ties, large windows, NaN), a conv's backward reusing the columns its forward cut,
and the first conv skipping the input gradient nobody asked for.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers_grad import check_op

from cnnlab.manual import conv as manual_conv
from cnnlab.manual import functional as MF


def test_relu_gradient_is_zero_on_zeros_and_negatives_and_delta_elsewhere():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-300, 3.0], dtype=torch.float64, requires_grad=True)
    delta = torch.tensor([5.0, 6.0, 7.0, 8.0, 9.0], dtype=torch.float64)
    MF.relu(x).backward(delta)
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 8.0, 9.0]


@pytest.mark.parametrize("kernel, stride", [(2, 2), (3, 1), (12, 12)])  # 12x12: 144 positions, past a byte
def test_max_pool_index_is_the_first_maximum_with_many_ties(kernel, stride):
    # Values from {0, 1, 2}: most windows hold their maximum more than once.
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (2, 3, 24, 24), generator=gen).double()
    check_op([x], lambda x: F.max_pool2d(x, kernel, stride, return_indices=True),
             lambda x: MF.max_pool2d(x, kernel, stride, return_indices=True))


def test_max_pool_of_a_window_with_nan_is_nan_and_does_not_fail():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = float("nan")
    values, index = MF.max_pool2d(x, 2, return_indices=True)
    assert values[0, 0, 0, 0].isnan() and not values[0, 0, 1:, 1:].isnan().any()
    assert 0 <= int(index.min()) and int(index.max()) < 16


def _held_calls(monkeypatch) -> list[bool]:
    """Record, for each call of _flat_cols, whether it found its columns still in the scratch buffer."""
    calls: list[bool] = []
    original = manual_conv._scratch_held

    def spy(*args):
        held = original(*args)
        calls.append(held is not None)
        return held

    monkeypatch.setattr(manual_conv, "_scratch_held", spy)
    return calls


def test_the_last_convs_backward_reuses_its_forwards_columns(monkeypatch):
    calls = _held_calls(monkeypatch)

    def net(conv, x, w1, w2):
        return conv(conv(x, w1, padding=1), w2)

    check_op([(2, 3, 9, 9), (4, 3, 3, 3), (5, 4, 3, 3)], lambda *a: net(F.conv2d, *a),
             lambda *a: net(MF.conv2d, *a), names=["input", "w1", "w2"])
    # forward conv1, forward conv2, backward conv2 (reused), backward conv1 (cut again)
    assert calls == [False, False, True, False]


def test_a_conv_run_between_forward_and_backward_makes_the_backward_cut_its_columns_again(monkeypatch):
    calls = _held_calls(monkeypatch)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    y = MF.conv2d(x, w)
    MF.conv2d(torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64))
    delta = torch.randn_like(y)
    y.backward(delta)
    w_ref = w.detach().clone().requires_grad_()
    F.conv2d(x, w_ref).backward(delta)
    assert calls[-1] is False
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-10, atol=1e-10)


def test_a_second_backward_through_a_retained_graph_gives_the_same_gradients():
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    w1 = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    loss = MF.conv2d(MF.conv2d(x, w1), w2).square().sum()
    first = torch.autograd.grad(loss, [w1, w2], retain_graph=True)
    second = torch.autograd.grad(loss, [w1, w2])
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_first_conv_skips_the_input_gradient_when_the_input_needs_none(monkeypatch):
    adds = []
    original = manual_conv._flat_col2im
    monkeypatch.setattr(manual_conv, "_flat_col2im", lambda *a: adds.append(1) or original(*a))
    x = torch.randn(3, 1, 10, 10, dtype=torch.float64)  # an image batch: no gradient wanted
    w = torch.randn(6, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    delta = torch.randn(3, 6, 10, 10, dtype=torch.float64)
    MF.conv2d(x, w, b, padding=2).backward(delta)
    w_ref, b_ref = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    F.conv2d(x, w_ref, b_ref, padding=2).backward(delta)
    assert adds == [] and x.grad is None
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b.grad, b_ref.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape, kernel, stride, padding", [
    ((4, 3, 28, 28), 2, 2, 0),   # windows that tile the map
    ((2, 5, 12, 18), 3, 3, 0),   # tiling 3x3 windows
    ((4, 3, 27, 27), 2, 2, 0),   # a remainder row and column
    ((4, 3, 28, 28), 2, 2, 1),   # padding
])
def test_max_pool_backward_equals_torch_exactly_on_tied_windows(shape, kernel, stride, padding):
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 3, shape, generator=gen).double()  # ties in most windows
    delta_shape = F.max_pool2d(x, kernel, stride, padding).shape
    delta = torch.randn(delta_shape, generator=gen, dtype=torch.float64)
    grads = []
    for pool in (MF.max_pool2d, F.max_pool2d):
        xi = x.clone().requires_grad_(True)
        pool(xi, kernel, stride, padding).backward(delta)
        grads.append(xi.grad)
    assert torch.equal(grads[0], grads[1])
