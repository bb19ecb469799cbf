"""Reverse-mode autodiff (backprop) on NumPy arrays, in the style of micrograd.

A ``Tensor`` wraps an array. While recording, every operation returns a new ``Tensor`` that
remembers its inputs (``_prev``) and a ``_backward`` closure adding its share of the gradient into
them. ``backward()`` sorts the graph topologically and runs the closures from the output back,
which is the lecture's loop (Ryu, ch. 3, "Backprop on computation graph"):

    g[L] = 1
    for l = L, ..., 2
        for i such that (i -> l)
            g[i] += g[l] * f[l].grad(i)

    >>> x, y = Tensor(3.0), Tensor(2.0)
    >>> f = y * x.log() + (y * x.log()).sqrt()
    >>> f.backward()
    >>> round(float(x.grad), 6), round(float(y.grad), 6)
    (0.891542, 1.469188)
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from cnnlab.autodiff.ops import UNARY, DerivedOps
from cnnlab.errors import CnnlabError

_recording = True  # switched off inside no_grad()


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Compute values without recording the graph, like ``torch.no_grad()`` in a test loop (the
    lecture: intermediate values are only kept for backprop, so skipping them saves memory)."""
    global _recording
    previous, _recording = _recording, False
    try:
        yield
    finally:
        _recording = previous


def _unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` down to ``shape``: an input that NumPy broadcast was used many times, so its
    gradient is the sum over the copies."""
    grad = grad.sum(axis=tuple(range(grad.ndim - len(shape)))) if grad.ndim > len(shape) else grad
    axes = tuple(a for a, n in enumerate(shape) if n == 1 and grad.shape[a] != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


class Tensor(DerivedOps):
    """An array with a gradient, recording how it was computed. Data is always float64."""

    def __init__(self, data: Any, _prev: tuple[Tensor, ...] = (), _op: str = "") -> None:
        self.data = np.asarray(data, dtype=np.float64)
        self.grad = np.zeros_like(self.data)
        self._prev = _prev if _recording else ()
        self._op = _op  # for reading a graph: "+", "*", "log", ...
        self._backward: Callable[[], None] = lambda: None

    def _record(self, backward: Callable[[], None]) -> Tensor:
        if self._prev:  # under no_grad there are no parents, so nothing to send gradient to
            self._backward = backward
        return self

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __repr__(self) -> str:
        return f"Tensor(data={self.data}, grad={self.grad})"

    # --- primitives: each one builds `out` and a closure doing `+=` into its parents ---

    def __add__(self, other: Any) -> Tensor:
        other = self._lift(other)
        out = Tensor(self.data + other.data, (self, other), "+")

        def _backward() -> None:
            self.grad += _unbroadcast(out.grad, self.shape)
            other.grad += _unbroadcast(out.grad, other.shape)
        return out._record(_backward)

    def __mul__(self, other: Any) -> Tensor:
        other = self._lift(other)
        out = Tensor(self.data * other.data, (self, other), "*")

        def _backward() -> None:
            self.grad += _unbroadcast(other.data * out.grad, self.shape)
            other.grad += _unbroadcast(self.data * out.grad, other.shape)
        return out._record(_backward)

    def __pow__(self, exponent: Any) -> Tensor:
        if isinstance(exponent, Tensor):
            return self._pow_variable(exponent)
        p = np.asarray(exponent, dtype=np.float64)  # a constant: d(x^p)/dx = p x^(p-1)
        out = Tensor(self.data ** p, (self,), "**")

        def _backward() -> None:
            self.grad += _unbroadcast(p * self.data ** (p - 1) * out.grad, self.shape)
        return out._record(_backward)

    def __matmul__(self, other: Any) -> Tensor:
        other = self._lift(other)
        out = Tensor(self.data @ other.data, (self, other), "@")

        def _backward() -> None:
            a, b, g = self.data, other.data, out.grad
            # Promote 1-D operands the way np.matmul does, (n,) @ (n, m) as (1, n) @ (n, m).
            a2, b2 = (a[None] if a.ndim == 1 else a), (b[:, None] if b.ndim == 1 else b)
            g = g[..., None] if b.ndim == 1 else g
            g = np.expand_dims(g, -2) if a.ndim == 1 else g
            da = g @ np.swapaxes(b2, -1, -2)  # dL/dA = G B^T
            db = np.swapaxes(a2, -1, -2) @ g  # dL/dB = A^T G
            self.grad += _unbroadcast(da, a2.shape).reshape(a.shape)
            other.grad += _unbroadcast(db, b2.shape).reshape(b.shape)
        return out._record(_backward)

    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        out = Tensor(self.data.sum(axis=axis, keepdims=keepdims), (self,), "sum")

        def _backward() -> None:
            g = out.grad if keepdims or axis is None else np.expand_dims(out.grad, axis)
            self.grad += np.broadcast_to(g, self.shape)
        return out._record(_backward)

    def reshape(self, *shape: int | tuple[int, ...]) -> Tensor:
        out = Tensor(self.data.reshape(*shape), (self,), "reshape")

        def _backward() -> None:
            self.grad += out.grad.reshape(self.shape)
        return out._record(_backward)

    def _unary(self, name: str) -> Tensor:
        f, df = UNARY[name]
        out = Tensor(f(self.data), (self,), name)

        def _backward() -> None:
            self.grad += df(self.data, out.data) * out.grad
        return out._record(_backward)

    # --- the graph ---

    def topological_order(self) -> list[Tensor]:
        """Every tensor this one depends on, each after its inputs, ending with this one.
        Depth-first with an explicit stack, so that a long chain does not hit the recursion limit."""
        order: list[Tensor] = []
        seen: set[Tensor] = set()
        stack: list[tuple[Tensor, bool]] = [(self, False)]
        while stack:
            node, inputs_done = stack.pop()
            if inputs_done:
                order.append(node)
            elif node not in seen:
                seen.add(node)
                stack.append((node, True))
                stack.extend((p, False) for p in reversed(node._prev))
        return order

    def backward(self, gradient: Any = None) -> None:
        """Accumulate d(self)/d(t) into ``t.grad`` for every tensor ``t`` in the graph.
        ``gradient`` seeds a non-scalar output (a vector-Jacobian product); a scalar gets 1."""
        if gradient is None and self.data.size != 1:
            raise CnnlabError(f"backward() without a gradient needs a scalar output; received shape "
                              f"{self.shape}. Pass gradient= with that shape, or reduce with .sum()")
        seed = np.ones_like(self.data) if gradient is None else np.asarray(gradient, np.float64)
        try:
            seed = np.broadcast_to(seed, self.shape).copy()
        except ValueError:
            raise CnnlabError(f"backward() got a gradient of shape {seed.shape} for an output of shape "
                              f"{self.shape}; pass one that broadcasts to {self.shape}") from None
        order = self.topological_order()
        # The adjoints of intermediate nodes are this pass's scratch space: start them at 0, so that a
        # second backward() over the same graph adds d(self)/d(leaf) once more into the leaves (as
        # torch does) instead of re-sending the first pass's intermediate gradients. Leaves keep
        # accumulating until zero_grad().
        for node in order:
            if node._prev:
                node.grad = np.zeros_like(node.data)
        self.grad = seed  # g[L] = 1
        for node in reversed(order):
            node._backward()

    def zero_grad(self) -> None:
        """Reset this tensor's gradient (the lecture's ``g[:] = 0``); gradients otherwise add up."""
        self.grad = np.zeros_like(self.data)


def grad(f: Callable[..., Any]) -> Callable[..., tuple[Any, ...]]:
    """The gradient of a scalar function, one partial derivative per argument (reverse mode).

    >>> grad(lambda x, y: x * y + x)(3.0, 2.0)
    (3.0, 3.0)
    """
    def gradient(*args: Any) -> tuple[Any, ...]:
        leaves = [Tensor(a) for a in args]
        out = f(*leaves)
        if isinstance(out, Tensor):  # a function that ignores its inputs has gradient 0
            out.backward()
        return tuple(float(t.grad) if t.grad.ndim == 0 else t.grad for t in leaves)
    return gradient
