"""The one shared check for hand-written backward passes (tinygrad's ``helper_test_op`` style).

``check_op(shapes, torch_fn, our_fn)`` builds float64 inputs of the given shapes, runs both
functions, compares the outputs, backpropagates the same random upstream gradient through both,
and compares every input's gradient. A mismatch names the tensor that differs:

    AssertionError: grad of input 1 ('weight') differs: max |ours - torch| = 3.1e-02 at (2, 0, 1, 1)

``check_gradcheck`` runs ``torch.autograd.gradcheck`` (finite differences) on ours alone, and
``check_same_error`` asserts that bad input makes both raise the same kind of exception.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

Shape = Sequence[int]
Input = Shape | torch.Tensor


def _make_inputs(inputs: Sequence[Input], seed: int, low: float | None) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for item in inputs:
        if isinstance(item, torch.Tensor):
            t = item.detach().clone()
            if t.is_floating_point():
                t = t.double().requires_grad_()
        else:
            t = torch.randn(*item, generator=gen, dtype=torch.float64)
            if low is not None:  # e.g. keep a variance-like input positive
                t = t.abs() + low
            t.requires_grad_()
        out.append(t)
    return out


def _outputs(result: Any) -> list[torch.Tensor]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _compare(name: str, ours: torch.Tensor | None, theirs: torch.Tensor | None, atol: float, rtol: float) -> None:
    if (ours is None) != (theirs is None):
        raise AssertionError(f"{name}: ours is {'None' if ours is None else 'a tensor'}, "
                             f"torch's is {'None' if theirs is None else 'a tensor'}")
    if ours is None:
        return
    if ours.shape != theirs.shape:
        raise AssertionError(f"{name}: shape {tuple(ours.shape)} differs from torch's {tuple(theirs.shape)}")
    if ours.dtype != theirs.dtype:
        raise AssertionError(f"{name}: dtype {ours.dtype} differs from torch's {theirs.dtype}")
    if not torch.allclose(ours, theirs, atol=atol, rtol=rtol, equal_nan=True):
        diff = (ours - theirs).abs().nan_to_num(float("inf"))
        where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        raise AssertionError(f"{name} differs: max |ours - torch| = {diff.max().item():.1e} at {where}")


def check_op(inputs: Sequence[Input], torch_fn: Callable[..., Any], our_fn: Callable[..., Any], *,
             names: Sequence[str] | None = None, atol: float = 1e-10, grad_atol: float = 1e-10,
             rtol: float = 1e-9, seed: int = 0, low: float | None = None,
             grad: bool = True) -> list[torch.Tensor]:
    """Check ``our_fn(*xs)`` against ``torch_fn(*xs)`` in float64: outputs and every gradient.

    ``inputs`` are shapes (random float64 tensors are made) or tensors (floating ones are cast
    to float64 and get gradients; integer ones such as class targets pass through). Returns
    our outputs, for further checks.
    """
    names = list(names) if names is not None else [f"#{i}" for i in range(len(inputs))]
    ours_in = _make_inputs(inputs, seed, low)
    theirs_in = [t.detach().clone().requires_grad_(t.requires_grad) for t in ours_in]
    ours, theirs = _outputs(our_fn(*ours_in)), _outputs(torch_fn(*theirs_in))
    if len(ours) != len(theirs):
        raise AssertionError(f"ours returns {len(ours)} outputs, torch returns {len(theirs)}")
    for i, (a, b) in enumerate(zip(ours, theirs)):
        _compare(f"output {i}", a, b, atol, rtol)
    if not grad:
        return ours
    # The same random upstream gradient δ for every floating output.
    gen = torch.Generator().manual_seed(seed + 1)
    pairs = [(a, b) for a, b in zip(ours, theirs) if a.is_floating_point() and a.requires_grad]
    assert pairs, "no differentiable output to check"
    deltas = [torch.randn(a.shape, generator=gen, dtype=a.dtype) for a, _ in pairs]
    torch.autograd.backward([a for a, _ in pairs], deltas)
    torch.autograd.backward([b for _, b in pairs], deltas)
    for i, (a, b) in enumerate(zip(ours_in, theirs_in)):
        if a.requires_grad:
            _compare(f"grad of input {i} ({names[i]!r})", a.grad, b.grad, grad_atol, rtol)
    return ours


def check_gradcheck(inputs: Sequence[Input], our_fn: Callable[..., Any], *, seed: int = 0,
                    low: float | None = None) -> None:
    """``torch.autograd.gradcheck`` of ``our_fn`` alone: our backward vs finite differences."""
    xs = _make_inputs(inputs, seed, low)
    assert torch.autograd.gradcheck(our_fn, xs, eps=1e-6, atol=1e-6, rtol=1e-5)


def check_same_error(torch_fn: Callable[[], Any], our_fn: Callable[[], Any]) -> BaseException:
    """Both calls must raise, ours an instance of the type torch raised. Returns our exception."""
    try:
        torch_fn()
    except Exception as e:  # noqa: BLE001 - we want whatever torch raises
        expected = type(e)
    else:
        raise AssertionError("torch accepted the input; the test case is wrong")
    try:
        our_fn()
    except Exception as e:  # noqa: BLE001
        if not isinstance(e, expected):
            raise AssertionError(f"ours raised {type(e).__name__}({e}), torch raises {expected.__name__}") from e
        return e
    raise AssertionError(f"ours accepted the input; torch raises {expected.__name__}")
