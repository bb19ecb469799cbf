"""cnnlab.autodiff.expr: the lecture's tables for an expression typed as text, and every bad input
(malformed expression, unknown function or variable, missing or malformed point, a point outside
the domain) as one clear CnnlabError, without NumPy warnings and without eval."""
from __future__ import annotations

import builtins
import math
import warnings

import pytest

from cnnlab import autodiff as ad
from cnnlab.errors import CnnlabError

LECTURE_F = "y*log(x) + sqrt(y*log(x))"
AT = {"x": 3.0, "y": 2.0}
DFDX = (2 + 1 / math.sqrt(2 * math.log(3))) / 3  # Ryu, ch. 3, step 4'
DFDY = math.sqrt(math.log(3) / 2) / 2 + math.log(3)


def test_parse_point_reads_name_value_pairs():
    assert ad.parse_point("x=3,y=2") == {"x": 3.0, "y": 2.0}
    assert ad.parse_point(" x = -1.5e-1 , long_name=4 ") == {"x": -0.15, "long_name": 4.0}


def test_repeated_subexpression_is_one_node_as_in_the_lectures_graph():
    nodes, output = ad.parse(LECTURE_F)
    # x, y, a = log x, b = y a, c = sqrt b, f = b + c: six nodes, not eight
    assert [n.op for n in nodes] == ["var", "var", "log", "*", "sqrt", "+"]
    assert output == 5 and nodes[5].args == (3, 4)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_both_modes_give_the_lectures_gradient(mode):
    value, gradient = ad.differentiate(LECTURE_F, AT, mode)
    assert value == pytest.approx(2 * math.log(3) + math.sqrt(2 * math.log(3)), rel=1e-12)
    assert gradient == pytest.approx({"x": DFDX, "y": DFDY}, rel=1e-12)


def test_table_lists_the_nodes_in_topological_order_with_values():
    table = ad.trace_table(LECTURE_F, AT, "reverse")
    rows = [line.split() for line in table.splitlines() if line.startswith("  v")][:6]
    assert [" ".join(r[:r.index("=", 2)]) for r in rows] == [
        "v1 = x", "v2 = y", "v3 = log(v1)", "v4 = v2 * v3", "v5 = sqrt(v4)", "v6 = v4 + v5"]
    assert [r[r.index("=", 2) + 1] for r in rows] == ["3", "2", "1.09861", "2.19722", "1.4823", "3.67953"]


def test_forward_table_has_one_sweep_per_input_with_the_lectures_tangents():
    table = ad.trace_table(LECTURE_F, {"y": 2.0, "x": 3.0}, "forward")  # inputs listed by name
    assert table.index("sweep for x (seed dx/dx = 1, dy/dx = 0)") < table.index("sweep for y (seed dx/dy = 0, dy/dy = 1)")
    # step 1: da/dx = 1/x = 1/3; step 2: db/dx = 2/3, db/dy = a = log 3; step 4: df/dx
    assert "dv3/dx = 0.333333 * dv1/dx = 0.333333" in table
    assert "dv4/dx = 1.09861 * dv2/dx + 2 * dv3/dx = 0.666667" in table
    assert "dv4/dy = 1.09861 * dv2/dy + 2 * dv3/dy = 1.09861" in table
    assert f"dv6/dx = 1 * dv4/dx + 1 * dv5/dx = {DFDX:.6g}" in table
    assert table.splitlines()[-1] == f"Gradient: df/dx = {DFDX:.6g}, df/dy = {DFDY:.6g}   (f = 3.67953)"


def test_reverse_table_accumulates_adjoints_in_reverse_topological_order():
    table = ad.trace_table(LECTURE_F, AT, "reverse")
    steps = [line for line in table.splitlines() if "  ->  g[" in line]
    assert [s.split("+=")[0].split()[-1] for s in steps] == ["g[4]", "g[5]", "g[4]", "g[2]", "g[3]", "g[1]"]
    # 2': df/db = 1/(2 sqrt b) + 1, after both uses of b are in; 4': df/dx = df/da * 1/x
    assert steps[2].endswith(f"g[4] = {1 / (2 * math.sqrt(2 * math.log(3))) + 1:.6g}")
    assert steps[-1].endswith(f"g[1] = {DFDX:.6g}")
    assert table.splitlines()[-1] == f"Gradient: df/dx = {DFDX:.6g}, df/dy = {DFDY:.6g}   (f = 3.67953)"


def test_reverse_table_gradient_is_the_engines_and_the_loops():
    table = ad.trace_table("sin(cosh(y**2 + x/z) + tanh(x*y*z)) / log(1 + exp(x))",
                           {"x": 3.3, "y": 1.1, "z": 2.3}, "reverse")
    assert "Gradient: df/dx = -0.285274, df/dy = -1.01578, df/dz = 0.288027" in table
    last = {}  # the running adjoint of each input after its last update in the loop
    for line in table.splitlines():
        if "  ->  g[" in line:
            name, value = line.split("->")[1].split(" = ")
            last[name.strip()] = value.strip()
    assert (last["g[1]"], last["g[2]"], last["g[3]"]) == ("-0.285274", "-1.01578", "0.288027")


def test_constants_unary_minus_and_powers_are_shown_inline():
    table = ad.trace_table("-x**2 + 2**x - 1/x", {"x": 2.0}, "reverse")
    for row in ("v2 = v1 ** 2", "v3 = -v2", "v4 = 2 ** v1", "v6 = 1 / v1"):
        assert row in table
    _, gradient = ad.differentiate("-x**2 + 2**x - 1/x", {"x": 2.0})
    assert gradient["x"] == pytest.approx(-4 + 4 * math.log(2) + 0.25, rel=1e-12)


BAD_EXPRESSIONS = {
    "unclosed parenthesis": ("y*log(x", "cannot parse"),
    "dangling operator": ("x +", "cannot parse"),
    "empty": ("", "cannot parse"),
    "two expressions": ("x y", "cannot parse"),
    "statement": ("x = 3", "cannot parse"),
    "unknown function": ("foo(x)", "unknown function 'foo'"),
    "capitalised function": ("Log(x)", "did you mean 'log'"),
    "builtin call": ("__import__('os').system('true')", "unknown function"),
    "two arguments": ("log(x, y)", "exactly one argument"),
    "keyword argument": ("log(x=1)", "exactly one argument"),
    "function as a variable": ("log + x", "is a function"),
    "attribute": ("x.real", "not allowed"),
    "subscript": ("x[0]", "not allowed"),
    "comparison": ("x < y", "not allowed"),
    "string": ("'a' * x", "not allowed"),
    "lambda": ("(lambda: 1)() + x", "unknown function"),
    "floor division": ("x // y", "not allowed"),
    "caret": ("x ^ 2", "write x\\*\\*2"),
    "boolean": ("True * x", "not allowed"),
    "complex": ("1j * x", "not allowed"),
    "no variables": ("2 + 3", "no variables"),
    "infinite constant": ("1e999 * x", "not finite"),
}


@pytest.mark.parametrize("expr,match", BAD_EXPRESSIONS.values(), ids=BAD_EXPRESSIONS.keys())
def test_malformed_expressions_raise_one_clear_line(expr, match, monkeypatch):
    monkeypatch.setattr(builtins, "eval", lambda *a: pytest.fail("the parser called eval"))
    with pytest.raises(CnnlabError, match=match) as err:
        ad.trace_table(expr, {"x": 1.0, "y": 2.0}, "reverse")
    assert "\n" not in str(err.value)


BAD_POINTS = ["x=3,y", "x=abc", "x=1,x=2", "=3", "x=", "", "3=4", "x=nan", "x=inf", "x:3", "x=3;y=2"]


@pytest.mark.parametrize("text", BAD_POINTS)
def test_malformed_points_raise(text):
    with pytest.raises(CnnlabError) as err:
        ad.parse_point(text)
    assert "\n" not in str(err.value) and repr(text) in str(err.value)


OUTSIDE_DOMAIN = {
    "log of a negative number": ("log(x)", {"x": -1.0}, "log needs a positive argument"),
    "log of zero": ("y*log(1 + x)", {"x": -1.0, "y": 2.0}, "log needs a positive argument"),
    "sqrt of a negative number": ("sqrt(x)", {"x": -4.0}, "sqrt needs a positive argument"),
    "sqrt at 0 has no derivative": ("sqrt(x)", {"x": 0.0}, "sqrt needs a positive argument"),
    "division by zero": ("x / (y - 2)", {"x": 1.0, "y": 2.0}, "division by zero"),
    "constant division by zero": ("x + 1/0", {"x": 1.0}, "division by zero"),
    "constant log": ("x * log(-2)", {"x": 1.0}, "log needs a positive argument"),
    "fractional power of a negative": ("x**0.5", {"x": -1.0}, "non-integer power"),
    "negative power of zero": ("x**-1", {"x": 0.0}, "needs p >= 1"),
    "variable exponent, negative base": ("x**y", {"x": -2.0, "y": 2.0}, "positive base"),
    "overflow": ("exp(x)", {"x": 1000.0}, "overflows"),
    "overflow in a derivative": ("x**-2", {"x": 1e-200}, "overflows"),
}


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("expr,point,match", OUTSIDE_DOMAIN.values(), ids=OUTSIDE_DOMAIN.keys())
def test_points_outside_the_domain_raise_without_numpy_warnings(expr, point, match, mode):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning from NumPy would fail the test
        with pytest.raises(CnnlabError, match=match) as err:
            ad.trace_table(expr, point, mode)
    assert "\n" not in str(err.value)


def test_unknown_and_missing_variables_and_modes_raise():
    with pytest.raises(CnnlabError, match="unknown variable 'w'"):
        ad.trace_table(LECTURE_F, {"x": 3.0, "y": 2.0, "w": 1.0}, "reverse")
    with pytest.raises(CnnlabError, match="variable 'y' .* has no value"):
        ad.trace_table(LECTURE_F, {"x": 3.0}, "forward")
    with pytest.raises(CnnlabError, match="finite"):
        ad.differentiate(LECTURE_F, {"x": math.inf, "y": 2.0})
    with pytest.raises(CnnlabError, match="unknown mode 'sideways'"):
        ad.trace_table(LECTURE_F, AT, "sideways")
