"""cnnlab.autodiff: the lecture's worked examples, agreement with torch.autograd on random
expressions (arrays with broadcasting, and the same expressions typed as text), forward == reverse,
no_grad, zero_grad, and the NumPy-only promise."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from cnnlab import autodiff as ad
from cnnlab.errors import CnnlabError

LECTURE_F = "y*log(x) + sqrt(y*log(x))"
LECTURE_G = "sin(cosh(y**2 + x/z) + tanh(x*y*z)) / log(1 + exp(x))"
# Ryu, ch. 3, "Autodiff example": Mathematica's D[fn, x], D[fn, y], D[fn, z] at x=3.3, y=1.1, z=2.3.
LECTURE_G_POINT = {"x": 3.3, "y": 1.1, "z": 2.3}
LECTURE_G_PARTIALS = (-0.285274, -1.01578, 0.288027)


def lecture_f(x, y):
    return y * ad.log(x) + ad.sqrt(y * ad.log(x))


def lecture_f_partials(x: float, y: float) -> tuple[float, float]:
    # Closed form (Ryu, ch. 3, step 4'): df/dx = (y/x)(1 + 1/(2 sqrt(y log x))), df/dy = log x (1 + ...).
    s = 1 + 1 / (2 * math.sqrt(y * math.log(x)))
    return y / x * s, math.log(x) * s


def lecture_g(x, y, z, lib=ad):
    return lib.sin(lib.cosh(y**2 + x / z) + lib.tanh(x * y * z)) / lib.log(1 + lib.exp(x))


# --- the lecture's worked examples ---

def test_lecture_f_reverse_and_forward_modes_match_the_closed_form():
    expected = lecture_f_partials(3.0, 2.0)
    assert ad.grad(lecture_f)(3.0, 2.0) == pytest.approx(expected, rel=1e-12)
    value, dfdx = ad.jvp(lecture_f, (3.0, 2.0), (1.0, 0.0))
    _, dfdy = ad.jvp(lecture_f, (3.0, 2.0), (0.0, 1.0))
    assert value == pytest.approx(2 * math.log(3) + math.sqrt(2 * math.log(3)), rel=1e-12)
    assert (dfdx, dfdy) == pytest.approx(expected, rel=1e-12)
    # The lecture's numbers: df/dx = (2 + 1/sqrt(2 log 3))/3, df/dy = sqrt(log 3 / 2)/2 + log 3.
    assert dfdx == pytest.approx((2 + 1 / math.sqrt(2 * math.log(3))) / 3, rel=1e-12)
    assert dfdy == pytest.approx(math.sqrt(math.log(3) / 2) / 2 + math.log(3), rel=1e-12)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_lecture_g_partials_are_the_lectures_numbers(mode):
    x, y, z = LECTURE_G_POINT.values()
    if mode == "reverse":
        partials = ad.grad(lecture_g)(x, y, z)
    else:
        partials = [ad.jvp(lecture_g, (x, y, z), np.eye(3)[i])[1] for i in range(3)]
    assert partials == pytest.approx(LECTURE_G_PARTIALS, abs=6e-6)
    assert ad.differentiate(LECTURE_G, LECTURE_G_POINT, mode)[1] == pytest.approx(dict(zip("xyz", partials)), rel=1e-12)


def test_lecture_g_matches_torch_autograd():
    leaves = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in LECTURE_G_POINT.values()]
    lecture_g(*leaves, lib=torch).backward()
    assert ad.grad(lecture_g)(*LECTURE_G_POINT.values()) == pytest.approx([t.grad.item() for t in leaves], rel=1e-12)


# --- random expressions against torch.autograd ---

TORCH_UNARY = {"exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "sin": torch.sin,
               "cos": torch.cos, "tanh": torch.tanh, "sinh": torch.sinh, "cosh": torch.cosh,
               "sigmoid": torch.sigmoid, "relu": torch.relu}
SHAPES = [(3, 1), (1, 4), (4,), ()]


def random_tree(rng: np.random.Generator, depth: int, n_vars: int, array_constants: bool) -> tuple:
    """A random expression: ("var", i), ("const", c), (op, child, ...). log, sqrt, / and ** get a
    positive argument by construction (see `build`)."""
    if depth == 0 or rng.random() < 0.2:
        if rng.random() < 0.75:
            return ("var", int(rng.integers(n_vars)))
        shape = SHAPES[rng.integers(len(SHAPES))] if array_constants else ()
        return ("const", rng.uniform(-2, 2, size=shape))
    kind = rng.choice(["unary", "neg", "+", "-", "*", "/", "**", "**var"], p=[.4, .05, .15, .1, .15, .05, .05, .05])
    sub = lambda: random_tree(rng, depth - 1, n_vars, array_constants)  # noqa: E731
    if kind == "unary":
        return ("unary", str(rng.choice(list(ad.UNARY))), sub())
    if kind == "neg":
        return ("neg", sub())
    if kind == "**":
        return ("**", sub(), float(rng.choice([2.0, 3.0, -1.0, 0.5, 1.5])))
    return (str(kind), sub(), sub())


def build(tree: tuple, xs: list, lib: dict, const) -> object:
    """Evaluate a tree with `lib` (our ops or torch's) on the inputs `xs`."""
    op, *rest = tree
    pos = lambda a: a * a + 0.5  # noqa: E731 -- keeps log, sqrt, / and ** in their domain
    if op == "var":
        return xs[rest[0]]
    if op == "const":
        return const(rest[0])
    if op == "**":
        return pos(build(rest[0], xs, lib, const)) ** rest[1]
    args = [build(t, xs, lib, const) for t in rest if isinstance(t, tuple)]
    if op == "unary":
        name = rest[0]
        return lib[name](pos(args[0]) if name in ("log", "sqrt") else args[0])
    return {"neg": lambda: -args[0], "+": lambda: args[0] + args[1], "-": lambda: args[0] - args[1],
            "*": lambda: args[0] * args[1], "/": lambda: args[0] / pos(args[1]),
            "**var": lambda: pos(args[0]) ** args[1]}[op]()


def to_text(tree: tuple, names: str = "xyz") -> str:
    """The same tree as an expression string for the parser."""
    op, *rest = tree
    pos = lambda s: f"({s}*{s} + 0.5)"  # noqa: E731
    if op == "var":
        return names[rest[0]]
    if op == "const":
        return f"({rest[0].tolist()!r})"  # an array constant only appears in failure messages
    if op == "**":
        return f"({pos(to_text(rest[0]))}**({rest[1]!r}))"
    a = [to_text(t) for t in rest if isinstance(t, tuple)]
    if op == "unary":
        return f"{rest[0]}({pos(a[0]) if rest[0] in ('log', 'sqrt') else a[0]})"
    if op == "neg":
        return f"(-{a[0]})"
    if op == "/":
        return f"({a[0]} / {pos(a[1])})"
    return f"({pos(a[0])}**{a[1]})" if op == "**var" else f"({a[0]} {op} {a[1]})"


AD_LIB = {name: getattr(ad, name) for name in ad.UNARY}


def torch_gradients(tree, values):
    leaves = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    out = build(tree, leaves, TORCH_UNARY, lambda c: torch.tensor(c, dtype=torch.float64))
    total = out.sum() + sum((0 * t).sum() for t in leaves)  # every leaf in the graph, used or not
    total.backward()
    return total.item(), [t.grad.numpy() for t in leaves]


def random_cases(seed: int, count: int, shaped: bool):
    """Seeded (tree, input values); trees whose values overflow or get huge are drawn again."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        shapes = [SHAPES[i] for i in rng.integers(len(SHAPES), size=3)] if shaped else [()] * 3
        values = [rng.uniform(-1.5, 1.5, size=s) for s in shapes]
        tree = random_tree(rng, depth=4, n_vars=3, array_constants=shaped)
        if "'var'" not in repr(tree):  # a constant: nothing to differentiate
            continue
        with np.errstate(all="ignore"):
            total, grads = torch_gradients(tree, values)
        if math.isfinite(total) and abs(total) < 1e6 and all(np.all(np.abs(g) < 1e6) for g in grads):
            cases.append((tree, values, grads))
    return cases


@pytest.mark.parametrize("shaped", [False, True], ids=["scalars", "broadcast-arrays"])
def test_random_expressions_match_torch_autograd(shaped):
    for tree, values, expected in random_cases(seed=0 if shaped else 1, count=60, shaped=shaped):
        leaves = [ad.Tensor(v) for v in values]
        out = build(tree, leaves, AD_LIB, lambda c: c)
        (out.sum() + 0 * leaves[0].sum()).backward()
        for i, (t, g) in enumerate(zip(leaves, expected)):
            assert t.grad.shape == np.shape(values[i]), f"input {i} of {to_text(tree)}"
            np.testing.assert_allclose(t.grad, g, rtol=1e-9, atol=1e-9, err_msg=f"d/d{'xyz'[i]} of {to_text(tree)}")


@pytest.mark.parametrize("shaped", [False, True], ids=["scalars", "broadcast-arrays"])
def test_forward_mode_equals_reverse_mode_on_random_expressions(shaped):
    rng = np.random.default_rng(7)
    for tree, values, grads in random_cases(seed=2 if shaped else 3, count=30, shaped=shaped):
        f = lambda *xs: build(tree, list(xs), AD_LIB, lambda c: c).sum() + 0 * xs[0].sum()  # noqa: E731
        tangents = [rng.normal(size=np.shape(v)) for v in values]
        ours = ad.grad(f)(*values)
        value, directional = ad.jvp(f, values, tangents)
        assert value == pytest.approx(float(f(*[ad.Tensor(v) for v in values]).data), rel=1e-12)
        expected = sum(float(np.sum(g * t)) for g, t in zip(ours, tangents))
        assert directional == pytest.approx(expected, rel=1e-9, abs=1e-9), to_text(tree)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_random_expression_strings_differentiate_like_torch(mode):
    for tree, values, expected in random_cases(seed=4, count=40, shaped=False):
        text = to_text(tree)
        used = {n.name for n in ad.parse(text)[0] if n.op == "var"}
        point = {name: float(v) for name, v in zip("xyz", values) if name in used}
        _, gradient = ad.differentiate(text, point, mode)
        for name, g in zip("xyz", expected):
            assert gradient.get(name, 0.0) == pytest.approx(float(g), rel=1e-9, abs=1e-9), f"d/d{name} of {text}"


def test_matmul_sum_mean_reshape_with_broadcasting_match_torch():
    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(2, 3, 4)), "w": rng.normal(size=(4, 5)), "b": rng.normal(size=(5,)),
              "v": rng.normal(size=(5,)), "u": rng.normal(size=(3,))}

    def f(a, w, b, v, u, lib):
        h = lib.sigmoid(a @ w + b)  # (2, 3, 5): batched matmul, bias broadcast
        s = (h @ v).sum(1, keepdims=True)  # (2, 3) -> (2, 1): matrix @ vector
        r = (u @ h.reshape(2, 3, 5)).mean(0)  # (5,): vector @ batch of matrices
        return (s * r.reshape(1, 5)).mean() + h.mean()

    leaves = [ad.Tensor(x) for x in arrays.values()]
    f(*leaves, lib=ad).backward()
    torch_leaves = [torch.tensor(x, requires_grad=True) for x in arrays.values()]
    f(*torch_leaves, lib=torch).backward()
    for name, ours, theirs in zip(arrays, leaves, torch_leaves):
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    # forward mode through the same ops: directional derivative = <gradient, tangent>
    tangents = [rng.normal(size=x.shape) for x in arrays.values()]
    _, directional = ad.jvp(lambda *xs: f(*xs, lib=ad), list(arrays.values()), tangents)
    assert directional == pytest.approx(sum(float(np.sum(t.grad * d)) for t, d in zip(leaves, tangents)), rel=1e-10)


def test_backward_with_a_gradient_is_a_vector_jacobian_product():
    x = np.array([[0.5, -1.0], [2.0, 0.3]])
    seed = np.array([[1.0, 2.0], [3.0, -1.0]])
    t = ad.Tensor(x)
    (t * t).tanh().backward(seed)
    tt = torch.tensor(x, requires_grad=True)
    (tt * tt).tanh().backward(torch.tensor(seed))
    np.testing.assert_allclose(t.grad, tt.grad.numpy(), rtol=1e-12)


# --- the engine's behaviour ---

def test_broadcast_gradients_are_summed_to_each_inputs_shape():
    a, b, c = ad.Tensor(np.ones((3, 1))), ad.Tensor(np.arange(4.0)), ad.Tensor(2.0)
    (a * b + c).sum().backward()
    assert a.grad.shape == (3, 1) and np.all(a.grad == 6.0)  # 0 + 1 + 2 + 3
    assert b.grad.shape == (4,) and np.all(b.grad == 3.0)
    assert c.grad.shape == () and c.grad == 12.0


def test_no_grad_records_nothing_and_restores_recording():
    x = ad.Tensor(2.0)
    with ad.no_grad():
        y = ad.exp(x * 3.0 + 1.0)
    assert y._prev == () and x.grad == 0.0
    y.backward()
    assert x.grad == 0.0  # y is a leaf: nothing flows back to x
    with pytest.raises(RuntimeError), ad.no_grad():
        raise RuntimeError("the context must still restore recording")
    z = x * 3.0
    assert z._prev and z._prev[0] is x
    z.backward()
    assert x.grad == 3.0


def test_gradients_accumulate_until_zero_grad():
    x = ad.Tensor(3.0)
    for expected in (6.0, 12.0):
        (x * x).backward()
        assert x.grad == expected
    x.zero_grad()
    assert x.grad == 0.0


def test_a_shared_node_gets_the_sum_of_its_uses():
    x = ad.Tensor(1.5)
    b = x * x  # used twice below, as the lecture's node b
    (b + b.sqrt()).backward()
    assert float(x.grad) == pytest.approx(2 * 1.5 * (1 + 1 / (2 * 1.5)), rel=1e-12)


def test_topological_order_puts_each_node_after_its_inputs_and_handles_long_chains():
    x = ad.Tensor(1.0)
    y = x
    for _ in range(5000):  # far deeper than Python's recursion limit
        y = y * 1.0001
    order = y.topological_order()
    assert order[0] is x and order[-1] is y and len(order) == 5001 + 5000  # each constant is a leaf too
    y.backward()
    assert float(x.grad) == pytest.approx(1.0001**5000, rel=1e-9)


def test_functions_dispatch_on_tensors_duals_and_plain_numbers():
    assert ad.log(math.e) == pytest.approx(1.0)
    np.testing.assert_allclose(ad.relu(np.array([-1.0, 2.0])), [0.0, 2.0])
    assert isinstance(ad.exp(ad.Tensor(0.0)), ad.Tensor)
    assert isinstance(ad.exp(ad.Dual(0.0, 1.0)), ad.Dual)
    assert ad.sum(np.ones((2, 3)), axis=0).shape == (3,)
    # a NumPy array on the left defers to our operators instead of looping over elements
    assert isinstance(np.ones(3) + ad.Tensor(np.ones(3)), ad.Tensor)
    assert isinstance(np.float64(2.0) * ad.Dual(1.0, 1.0), ad.Dual)
    assert ad.grad(lambda x: 2.0 ** x)(3.0) == pytest.approx((8 * math.log(2),))
    assert ad.grad(lambda x: 1.0 - 1.0 / x)(2.0) == pytest.approx((0.25,))


def test_grad_of_a_constant_function_is_zero():
    assert ad.grad(lambda x, y: 5.0)(1.0, 2.0) == (0.0, 0.0)
    assert ad.jvp(lambda x: 5.0, (1.0,), (1.0,)) == (5.0, 0.0)


def test_misuse_raises_cnnlab_error():
    with pytest.raises(CnnlabError, match="scalar output"):
        ad.Tensor(np.ones(3)).backward()
    with pytest.raises(CnnlabError, match="one tangent per primal"):
        ad.jvp(lambda x, y: x * y, (1.0, 2.0), (1.0,))
    with pytest.raises(CnnlabError, match="shape"):
        ad.jvp(lambda x: x.sum(), (np.ones(3),), (np.ones(2),))


def test_the_package_imports_numpy_but_not_torch():
    code = "import sys, cnnlab.autodiff; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
