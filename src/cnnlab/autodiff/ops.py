"""What reverse mode and forward mode share: the elementwise functions with their derivatives,
the operators derived from the primitives, and the functions ``ad.exp``, ``ad.log``, ... that
work on either kind of value and on plain numbers.

Each mode defines only the primitives: ``+``, ``*``, ``** number``, ``@``, ``sum``, ``reshape``
and ``_unary(name)``, which applies one row of ``UNARY``. Everything else (``-``, ``/``, negation,
``mean``, a power with a variable exponent) is a one-liner on top of them, written once here.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

Array = np.ndarray


def _sigmoid(x: Array) -> Array:
    # 1 / (1 + e^-x) overflows for x << 0; the tanh form is the same function and never does.
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


# name -> (f, f') where f' takes the input x and the output y = f(x): several derivatives are
# cheapest in terms of y (exp' = exp, tanh' = 1 - tanh^2, sigmoid' = s(1 - s)).
UNARY: dict[str, tuple[Callable[[Array], Array], Callable[[Array, Array], Array]]] = {
    "exp": (np.exp, lambda x, y: y),
    "log": (np.log, lambda x, y: 1.0 / x),
    "sqrt": (np.sqrt, lambda x, y: 0.5 / y),
    "sin": (np.sin, lambda x, y: np.cos(x)),
    "cos": (np.cos, lambda x, y: -np.sin(x)),
    "tanh": (np.tanh, lambda x, y: 1.0 - y * y),
    "sinh": (np.sinh, lambda x, y: np.cosh(x)),
    "cosh": (np.cosh, lambda x, y: np.sinh(x)),
    "sigmoid": (_sigmoid, lambda x, y: y * (1.0 - y)),
    "relu": (lambda x: np.maximum(x, 0.0), lambda x, y: (x > 0).astype(x.dtype)),  # 0 at 0, as torch
}


class DerivedOps:
    """Operators built from the primitives; ``Tensor`` (reverse) and ``Dual`` (forward) inherit them."""

    __array_ufunc__ = None  # so that `ndarray + Tensor` calls Tensor.__radd__ instead of looping
    shape: tuple[int, ...]

    @classmethod
    def _lift(cls, other: Any) -> Any:
        return other if isinstance(other, cls) else cls(other)

    def __neg__(self): return self * -1.0
    def __sub__(self, other): return self + (-self._lift(other))
    def __rsub__(self, other): return self._lift(other) + (-self)
    def __truediv__(self, other): return self * self._lift(other) ** -1.0
    def __rtruediv__(self, other): return self._lift(other) * self ** -1.0
    def __radd__(self, other): return self + other
    def __rmul__(self, other): return self * other
    def __rpow__(self, other): return self._lift(other) ** self
    def __rmatmul__(self, other): return self._lift(other) @ self
    def _pow_variable(self, exponent): return (exponent * self.log()).exp()  # a^b = e^(b log a)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False):
        total = self.sum(axis, keepdims)
        return total * (math.prod(total.shape) / math.prod(self.shape))

    def exp(self): return self._unary("exp")
    def log(self): return self._unary("log")
    def sqrt(self): return self._unary("sqrt")
    def sin(self): return self._unary("sin")
    def cos(self): return self._unary("cos")
    def tanh(self): return self._unary("tanh")
    def sinh(self): return self._unary("sinh")
    def cosh(self): return self._unary("cosh")
    def sigmoid(self): return self._unary("sigmoid")
    def relu(self): return self._unary("relu")


def _elementwise(name: str) -> Callable[[Any], Any]:
    fn = UNARY[name][0]

    def apply(x: Any) -> Any:
        if isinstance(x, DerivedOps):
            return x._unary(name)
        return fn(np.asarray(x, dtype=np.float64))

    apply.__name__ = apply.__qualname__ = name
    apply.__doc__ = f"``{name}(x)`` of a reverse-mode Tensor, a forward-mode Dual, or a number/array."
    return apply


exp = _elementwise("exp")
log = _elementwise("log")
sqrt = _elementwise("sqrt")
sin = _elementwise("sin")
cos = _elementwise("cos")
tanh = _elementwise("tanh")
sinh = _elementwise("sinh")
cosh = _elementwise("cosh")
sigmoid = _elementwise("sigmoid")
relu = _elementwise("relu")


def matmul(a: Any, b: Any) -> Any:
    """``a @ b`` for Tensors, Duals or arrays."""
    return a @ b


def sum(x: Any, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Any:  # noqa: A001
    """Sum over ``axis`` (all axes by default) of a Tensor, a Dual or an array."""
    if isinstance(x, DerivedOps):
        return x.sum(axis, keepdims)
    return np.sum(x, axis=axis, keepdims=keepdims)


def mean(x: Any, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Any:
    """Mean over ``axis`` (all axes by default) of a Tensor, a Dual or an array."""
    if isinstance(x, DerivedOps):
        return x.mean(axis, keepdims)
    return np.mean(x, axis=axis, keepdims=keepdims)


def reshape(x: Any, shape: tuple[int, ...]) -> Any:
    """``x`` with a new shape (one entry may be -1), for a Tensor, a Dual or an array."""
    return x.reshape(shape) if isinstance(x, DerivedOps) else np.reshape(x, shape)
