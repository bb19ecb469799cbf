"""Forward-mode autodiff with dual numbers (Ryu, ch. 3, "Forward-mode autodiff").

A ``Dual`` carries a value x and a tangent x' = dx/dt for one chosen direction t. Every operation
applies the chain rule on the spot, f(x + x' e) = f(x) + f'(x) x' e with e^2 = 0, so one pass gives
the directional derivative of the output. The gradient takes one pass per input, which is why
reverse mode wins when there are many inputs and one output (the lecture's Jacobian-chain argument).

    >>> x, y = Dual(3.0, 1.0), Dual(2.0, 0.0)  # the sweep for d/dx
    >>> f = y * x.log() + (y * x.log()).sqrt()
    >>> round(float(f.tangent), 6)
    0.891542
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cnnlab.autodiff.ops import UNARY, DerivedOps
from cnnlab.errors import CnnlabError


class Dual(DerivedOps):
    """A value and its tangent, both float64 arrays of the same shape (tangent 0: a constant)."""

    def __init__(self, value: Any, tangent: Any = None) -> None:
        self.value = np.asarray(value, dtype=np.float64)
        self.tangent = np.zeros_like(self.value) if tangent is None else np.asarray(tangent, np.float64)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    def __repr__(self) -> str:
        return f"Dual(value={self.value}, tangent={self.tangent})"

    # --- primitives: value and tangent side by side ---

    def __add__(self, other: Any) -> Dual:
        other = self._lift(other)
        return Dual(self.value + other.value, self.tangent + other.tangent)

    def __mul__(self, other: Any) -> Dual:
        other = self._lift(other)  # product rule
        return Dual(self.value * other.value, self.tangent * other.value + self.value * other.tangent)

    def __pow__(self, exponent: Any) -> Dual:
        if isinstance(exponent, Dual):
            return self._pow_variable(exponent)
        p = np.asarray(exponent, dtype=np.float64)
        return Dual(self.value ** p, p * self.value ** (p - 1) * self.tangent)

    def __matmul__(self, other: Any) -> Dual:
        other = self._lift(other)
        return Dual(self.value @ other.value, self.tangent @ other.value + self.value @ other.tangent)

    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Dual:
        return Dual(self.value.sum(axis, keepdims=keepdims), self.tangent.sum(axis, keepdims=keepdims))

    def reshape(self, *shape: int | tuple[int, ...]) -> Dual:
        return Dual(self.value.reshape(*shape), self.tangent.reshape(*shape))

    def _unary(self, name: str) -> Dual:
        f, df = UNARY[name]
        y = f(self.value)
        return Dual(y, df(self.value, y) * self.tangent)


def jvp(f: Callable[..., Any], primals: Sequence[Any], tangents: Sequence[Any]) -> tuple[Any, Any]:
    """``(f(*primals), J v)``: the value and the derivative of ``f`` in the direction ``tangents``.

    >>> jvp(lambda x, y: x * y, (3.0, 2.0), (1.0, 0.0))  # d(xy)/dx at (3, 2)
    (6.0, 2.0)
    """
    if len(primals) != len(tangents):
        raise CnnlabError(f"jvp needs one tangent per primal; received {len(primals)} primals "
                          f"and {len(tangents)} tangents")
    duals = [Dual(p, t) for p, t in zip(primals, tangents)]
    for i, d in enumerate(duals):
        if d.tangent.shape != d.value.shape:
            raise CnnlabError(f"tangent {i} must have the shape of its primal {d.value.shape}; "
                              f"received shape {d.tangent.shape}")
    out = f(*duals)
    if not isinstance(out, Dual):  # f ignored its inputs: a constant
        out = Dual(out)
    return tuple(float(a) if a.ndim == 0 else a for a in (out.value, out.tangent))
