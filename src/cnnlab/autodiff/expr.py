"""The lecture's computation-graph tables for an expression typed as text (Ryu, ch. 3, "Computation
graph example", "Forward-mode autodiff", "Reverse-mode autodiff (backprop)").

    print(trace_table("y*log(x) + sqrt(y*log(x))", parse_point("x=3,y=2"), "reverse"))

The text is parsed with Python's ``ast`` module and only whitelisted nodes (numbers, variables,
``+ - * / **``, unary minus, calls of the functions in ``UNARY``) are accepted; it is never
evaluated with ``eval``. Equal subexpressions become one node, so ``y*log(x)`` written twice is the
lecture's single node b, and the graph is the lecture's: x, y, a = log x, b = y a, c = sqrt b,
f = b + c. Every number is checked before it is used: a point outside the domain (log of a
non-positive number, sqrt of a negative one, division by zero) or an overflow is a ``CnnlabError``.
"""
from __future__ import annotations

import ast
import contextlib
import math
import operator
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnlab.autodiff import ops
from cnnlab.autodiff.forward import Dual
from cnnlab.autodiff.reverse import Tensor
from cnnlab.errors import CnnlabError, unknown_name

MODES = ("forward", "reverse")
BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
# One table evaluates a node on floats, on reverse-mode Tensors and on forward-mode Duals alike.
APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
         "**": operator.pow, "neg": operator.neg, **{f: getattr(ops, f) for f in ops.UNARY}}
EXAMPLE = "y*log(x) + sqrt(y*log(x))"


@dataclass(frozen=True)
class Const:
    """A number in the expression (a separate type so that the constant 1.0 never equals node 1)."""
    value: float


@dataclass(frozen=True)
class Node:
    """One row of the computation graph: y_l = f_l(inputs)."""
    op: str  # "var", a key of APPLY
    args: tuple[int | Const, ...] = ()  # an int is the index of an earlier node
    name: str = ""  # the variable's name when op == "var"


def _fmt(v: float) -> str:
    return f"{v:.6g}"


MAX_CHARS = 10_000  # an expression longer than this is refused before parsing
ECHO = 60  # characters of the expression quoted back in an error message


def _short(text: str, limit: int = ECHO) -> str:
    """``repr`` of ``text``, cut to ``limit`` characters, so that an error never echoes a page of input."""
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def _source(expr: str, t: ast.AST) -> str:
    """The text of the subexpression ``t``, quoted and cut short (``ast.unparse`` recurses)."""
    segment = ast.get_source_segment(expr, t)
    return _short(segment if segment is not None else type(t).__name__)


def parse(expr: str) -> tuple[list[Node], int]:
    """The nodes of ``expr`` in a topological order (variables first, sorted), and the output's index.

    The syntax tree is walked with an explicit stack, so a 1,500-term sum is no deeper for Python
    than ``x + y``; what Python's own parser cannot nest (about a thousand levels of parentheses
    or unary minus) is a ``CnnlabError``, as is text longer than ``MAX_CHARS``.
    """
    if not isinstance(expr, str):
        raise CnnlabError(f"an expression is text, e.g. {EXAMPLE!r}; received a {type(expr).__name__}")
    if len(expr) > MAX_CHARS:
        raise CnnlabError(f"the expression has {len(expr):,} characters; at most {MAX_CHARS:,} are accepted")
    expr = expr.strip()
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError as err:
        raise CnnlabError(f"cannot parse expression {_short(expr)}: {err.msg} at column {err.offset}; "
                          f"write e.g. {EXAMPLE!r}") from None
    except (ValueError, RecursionError, MemoryError) as err:  # null bytes, absurd nesting
        reason = "it is nested too deeply" if isinstance(err, RecursionError) else _short(str(err))
        raise CnnlabError(f"cannot parse expression {_short(expr)}: {reason}") from None
    callees = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    variables = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in callees})
    nodes = [Node("var", name=v) for v in variables]
    index = {node: i for i, node in enumerate(nodes)}
    where = _short(expr)

    def add(op: str, args: list[int | Const]) -> int | Const:
        if all(isinstance(a, Const) for a in args):  # fold constants: log(2) is a number, not a node
            return Const(_checked(op, [a.value for a in args], [True] * len(args), expr))
        node = Node(op, tuple(args))
        if node not in index:  # a repeated subexpression is the same node
            index[node] = len(nodes)
            nodes.append(node)
        return index[node]

    def children(t: ast.AST) -> list[ast.AST]:
        """The operands of ``t``, after checking that ``t`` is an accepted kind of node."""
        if isinstance(t, ast.Constant) and type(t.value) in (int, float):
            return []
        if isinstance(t, ast.Name):
            if t.id in ops.UNARY:
                raise CnnlabError(f"{t.id!r} in {where} is a function; call it as {t.id}(...)")
            return []
        if isinstance(t, ast.UnaryOp) and isinstance(t.op, (ast.USub, ast.UAdd)):
            return [t.operand]
        if isinstance(t, ast.BinOp) and type(t.op) in BINARY:
            return [t.left, t.right]
        if isinstance(t, ast.BinOp) and isinstance(t.op, ast.BitXor):
            raise CnnlabError(f"'^' in {where} is not a power; write x**2 for x squared")
        if isinstance(t, ast.Call):
            name = t.func.id if isinstance(t.func, ast.Name) else ast.get_source_segment(expr, t.func) or "?"
            if name not in ops.UNARY:
                raise unknown_name("function", name[:ECHO], ops.UNARY)
            if len(t.args) != 1 or t.keywords:
                raise CnnlabError(f"{name} takes exactly one argument; received {_source(expr, t)}")
            return [t.args[0]]
        raise CnnlabError(f"{_source(expr, t)} is not allowed in an expression; accepted: "
                          f"numbers, variables, + - * / **, and {', '.join(ops.UNARY)} of one argument")

    def combine(t: ast.AST, args: list[int | Const]) -> int | Const:
        if isinstance(t, ast.Constant):
            value = float(t.value) if abs(t.value) < 1e308 else math.inf
            if not math.isfinite(value):
                raise CnnlabError(f"the number {_source(expr, t)} in {where} is not finite")
            return Const(value)
        if isinstance(t, ast.Name):
            return index[Node("var", name=t.id)]
        if isinstance(t, ast.UnaryOp):
            return add("neg", args) if isinstance(t.op, ast.USub) else args[0]
        if isinstance(t, ast.BinOp):
            return add(BINARY[type(t.op)], args)
        return add(t.func.id, args)  # a Call, checked in children()

    # Post-order walk with an explicit stack: operands before the operation, left before right.
    results: dict[int, int | Const] = {}
    pending: dict[int, list[ast.AST]] = {}
    stack: list[ast.AST] = [tree]
    while stack:
        t = stack[-1]
        if id(t) not in pending:
            pending[id(t)] = children(t)
            stack.extend(reversed(pending[id(t)]))
        else:
            stack.pop()
            results[id(t)] = combine(t, [results.pop(id(k)) for k in pending.pop(id(t))])
    output = results[id(tree)]
    if isinstance(output, Const):
        raise CnnlabError(f"expression {where} has no variables, so there is nothing to differentiate")
    return nodes, output


def _domain_error(op: str, args: list[float], is_const: list[bool]) -> str | None:
    """Why ``op(*args)`` or its derivative is undefined, or None. Checked before NumPy sees it."""
    if op == "log" and args[0] <= 0:
        return "log needs a positive argument"
    if op == "sqrt" and args[0] <= 0:  # sqrt(0) exists, but its derivative 1/(2 sqrt 0) does not
        return "sqrt needs a positive argument (a negative one has no real root; 0 has no derivative)"
    if op == "/" and args[1] == 0:
        return "division by zero"
    if op == "**":
        base, p = args
        if not is_const[1] and base <= 0:  # b^p = e^(p log b) when p varies
            return "a power with a variable exponent needs a positive base"
        if base < 0 and p != int(p):
            return "a negative number has no real non-integer power"
        if base == 0 and p < 1:  # p x^(p-1) blows up at 0
            return "x**p at x = 0 needs p >= 1"
    return None


def _checked(op: str, args: list[float], is_const: list[bool], expr: str) -> float:
    """``op(*args)`` on floats, or a CnnlabError if it leaves the domain or overflows."""
    problem = _domain_error(op, args, is_const)
    call = f"{_fmt(args[0])} {op} {_fmt(args[1])}" if op in BINARY.values() else f"{op}({_fmt(args[0])})"
    if problem:
        raise CnnlabError(f"{problem}; received {call} while evaluating {_short(expr)} at this point")
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        try:
            return float(APPLY[op](*(np.float64(a) for a in args)))
        except (FloatingPointError, OverflowError):
            raise CnnlabError(f"{call} overflows while evaluating {_short(expr)} at this point") from None


def parse_point(text: str) -> dict[str, float]:
    """``"x=3,y=2"`` -> ``{"x": 3.0, "y": 2.0}``."""
    point: dict[str, float] = {}
    for part in text.split(","):
        name, eq, value = (s.strip() for s in part.partition("="))
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not eq or not name.isidentifier() or not math.isfinite(number):
            raise CnnlabError(f"a point is written as name=number pairs separated by commas, "
                              f"e.g. 'x=3,y=2'; received {_short(text)}")
        if name in point:
            raise CnnlabError(f"variable {_short(name)} is given twice in {_short(text)}")
        point[name] = number
    return point


def _label(node: Node) -> str:
    """The right-hand side of a row: ``x``, ``v2 * v3``, ``log(v1)``, ``-v4``."""
    a = [_fmt(x.value) if isinstance(x, Const) else f"v{x + 1}" for x in node.args]
    if node.op == "var":
        return node.name
    if node.op == "neg":
        return f"-{a[0]}"
    return f"{a[0]} {node.op} {a[1]}" if len(a) == 2 else f"{node.op}({a[0]})"


def _evaluate(nodes: list[Node], inputs: dict[str, Any]) -> list[Any]:
    """Every node's value, for inputs that are floats, Tensors or Duals: the forward pass."""
    values: list[Any] = []
    for node in nodes:
        args = [a.value if isinstance(a, Const) else values[a] for a in node.args]
        values.append(inputs[node.name] if node.op == "var" else APPLY[node.op](*args))
    return values


def _local_derivatives(node: Node, values: list[float]) -> list[tuple[int, float]]:
    """``(i, d f_l / d y_i)`` for each input edge i -> l: the lecture's ``f[l].grad(i)``, from a
    forward-mode pass through this one operation with tangent 1 on edge i."""
    out = []
    for slot, a in enumerate(node.args):
        if isinstance(a, int):
            args = [b.value if isinstance(b, Const) else Dual(values[b], float(k == slot))
                    for k, b in enumerate(node.args)]
            out.append((a, float(APPLY[node.op](*args).tangent)))
    return out


def _prepare(expr: str, point: dict[str, float], mode: str) -> tuple[list[Node], int, list[float]]:
    if mode not in MODES:
        raise unknown_name("mode", mode, MODES)
    nodes, output = parse(expr)
    used = [n.name for n in nodes if n.op == "var"]
    for name in point:
        if name not in used:
            raise unknown_name("variable", name[:ECHO], used if len(used) <= 20 else [*used[:20], "..."])
    for name in used:
        if name not in point:
            raise CnnlabError(f"variable {name[:ECHO]!r} of {_short(expr)} has no value; received values for "
                              f"{_short(', '.join(point) or 'nothing')}; add {name[:ECHO]}=NUMBER to the point")
        if not math.isfinite(point[name]):
            raise CnnlabError(f"variable {name!r} must be a finite number; received {point[name]}")
    values: list[float] = []
    for node in nodes:  # the forward pass on plain floats, every step checked
        args = [a.value if isinstance(a, Const) else values[a] for a in node.args]
        consts = [isinstance(a, Const) for a in node.args]
        values.append(float(point[node.name]) if node.op == "var" else _checked(node.op, args, consts, expr))
    return nodes, output, values


def differentiate(expr: str, point: dict[str, float],
                  mode: str = "reverse") -> tuple[float, dict[str, float]]:
    """The value of ``expr`` at ``point`` and its gradient, by the chosen mode.

    >>> differentiate("x*y", {"x": 3.0, "y": 2.0})
    (6.0, {'x': 2.0, 'y': 3.0})
    """
    nodes, output, values = _prepare(expr, point, mode)
    return values[output], _gradient(nodes, output, point, mode, expr)


def _gradient(nodes: list[Node], output: int, point: dict[str, float], mode: str,
              expr: str) -> dict[str, float]:
    names = [n.name for n in nodes if n.op == "var"]
    with _strict(expr):
        if mode == "reverse":  # one backward pass gives every partial
            leaves = {v: Tensor(point[v]) for v in names}
            _evaluate(nodes, leaves)[output].backward()
            return {v: float(leaves[v].grad) for v in names}
        return {v: _sweep(nodes, point, v, expr)[output] for v in names}  # one pass per input


def _sweep(nodes: list[Node], point: dict[str, float], seed: str, expr: str) -> list[float]:
    """Forward mode: every node's tangent d(node)/d(seed), from one pass with Duals."""
    with _strict(expr):
        duals = {v: Dual(x, float(v == seed)) for v, x in point.items()}
        return [float(d.tangent) for d in _evaluate(nodes, duals)]


@contextlib.contextmanager
def _strict(expr: str) -> Iterator[None]:
    """Turn NumPy's overflow into a CnnlabError instead of a warning and an inf."""
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        try:
            yield
        except FloatingPointError:
            raise CnnlabError(f"a derivative of {_short(expr)} overflows at this point") from None


def trace_table(expr: str, point: dict[str, float], mode: str = "reverse") -> str:
    """The lecture's tables as text: the nodes in topological order with their values, then each
    forward-mode step (one sweep per input) or each backward step, ending in the gradient."""
    nodes, output, values = _prepare(expr, point, mode)
    gradient = _gradient(nodes, output, point, mode, expr)
    names = [n.name for n in nodes if n.op == "var"]
    rows = [f"v{i + 1} = {_label(n)}" for i, n in enumerate(nodes)]
    rows = [r.ljust(max(map(len, rows))) for r in rows]
    at = ", ".join(f"{v} = {_fmt(point[v])}" for v in names)
    lines = [f"f({', '.join(names)}) = {expr.strip()}  at  {at}", "",
             "Computation graph, nodes in topological order:"]
    for i, row in enumerate(rows):
        lines.append(f"  {row}  = {_fmt(values[i])}" + ("   <- f" if i == output else ""))
    with _strict(expr):
        local = [_local_derivatives(n, values) for n in nodes]
    steps = _forward_steps if mode == "forward" else _backward_steps
    lines += ["", *steps(nodes, output, point, rows, local, expr), ""]
    lines.append("Gradient: " + ", ".join(f"df/d{v} = {_fmt(gradient[v])}" for v in names)
                 + f"   (f = {_fmt(values[output])})")
    return "\n".join(lines)


def _forward_steps(nodes: list[Node], output: int, point: dict[str, float], rows: list[str],
                   local: list[list[tuple[int, float]]], expr: str) -> list[str]:
    """Ryu, ch. 3, "Forward-mode autodiff": each node's tangent from its inputs' tangents, one
    sweep per input."""
    lines = ["Forward mode: one sweep per input; a node's tangent is the sum over its inputs",
             "of (local derivative) * (input's tangent)."]
    names = [n.name for n in nodes if n.op == "var"]
    for v in names:
        tangents = _sweep(nodes, point, v, expr)
        lines.append(f"  sweep for {v} (seed {', '.join(f'd{u}/d{v} = {int(u == v)}' for u in names)}):")
        for i in range(output + 1):
            if nodes[i].op == "var":
                step = f"{_fmt(tangents[i])}   (seed)"
            else:  # the chain rule: sum over the inputs j of (d v_i / d v_j) * (d v_j / d seed)
                chain = " + ".join(f"{_fmt(d)} * dv{j + 1}/d{v}" for j, d in local[i])
                step = f"{chain} = {_fmt(tangents[i])}"
            lines.append(f"    {rows[i]}  dv{i + 1}/d{v} = {step}")
    return lines


def _backward_steps(nodes: list[Node], output: int, point: dict[str, float], rows: list[str],
                    local: list[list[tuple[int, float]]], expr: str) -> list[str]:
    """Ryu, ch. 3, "Backprop on computation graph": g[L] = 1, then g[i] += g[l] * f[l].grad(i) for
    l = L, ..., 1, run here on scalars so that every step can be printed."""
    lines = ["Reverse mode (backprop): g[i] = df/dv_i; nodes in reverse topological order,",
             "g[i] += g[l] * dv_l/dv_i for each edge i -> l.",
             f"  g[{output + 1}] = 1   (seed: df/df = 1)"]
    g = [0.0] * len(nodes)
    g[output] = 1.0
    for l in range(output, -1, -1):
        for k, (i, d) in enumerate(local[l]):
            g[i] += g[l] * d
            head = rows[l] if k == 0 else " " * len(rows[l])
            lines.append(f"  {head}  g[{i + 1}] += g[{l + 1}] * dv{l + 1}/dv{i + 1} = "
                         f"{_fmt(g[l])} * {_fmt(d)}  ->  g[{i + 1}] = {_fmt(g[i])}")
    return lines
