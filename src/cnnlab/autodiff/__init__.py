"""Automatic differentiation from scratch, NumPy only (Ryu, ch. 3, "Backprop is an instance of autodiff").

    >>> from cnnlab import autodiff as ad
    >>> f = lambda x, y: y * ad.log(x) + ad.sqrt(y * ad.log(x))   # the lecture's example
    >>> [round(g, 6) for g in ad.grad(f)(3.0, 2.0)]                # reverse mode: every partial
    [0.891542, 1.469188]
    >>> [round(v, 6) for v in ad.jvp(f, (3.0, 2.0), (1.0, 0.0))]    # forward mode: (f, df/dx)
    [3.679528, 0.891542]
    >>> table = ad.trace_table("y*log(x) + sqrt(y*log(x))", ad.parse_point("x=3,y=2"), "forward")
    >>> table.splitlines()[-1]
    'Gradient: df/dx = 0.891542, df/dy = 1.46919   (f = 3.67953)'

Modules: ``reverse`` (``Tensor``, ``backward``, ``no_grad``, ``grad``), ``forward`` (``Dual``,
``jvp``), ``ops`` (the derivative table both modes share, and ``exp``, ``log``, ... that accept a
Tensor, a Dual or a plain number), ``expr`` (an expression typed as text, and the lecture's tables).
"""
from __future__ import annotations

from cnnlab.autodiff.expr import differentiate, parse, parse_point, trace_table
from cnnlab.autodiff.forward import Dual, jvp
from cnnlab.autodiff.ops import (UNARY, cos, cosh, exp, log, matmul, mean, relu, reshape, sigmoid, sin,
                                 sinh, sqrt, sum, tanh)
from cnnlab.autodiff.reverse import Tensor, grad, no_grad

__all__ = [
    "Tensor", "grad", "no_grad", "Dual", "jvp", "UNARY",
    "exp", "log", "sqrt", "sin", "cos", "tanh", "sinh", "cosh", "sigmoid", "relu",
    "matmul", "sum", "mean", "reshape",
    "parse", "parse_point", "trace_table", "differentiate",
]
