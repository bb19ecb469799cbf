"""Fuzzing the text parsers that take user input: any input gives a result or a ``CnnlabError`` of
one short line, never another exception (the augmentation spec, ``parse_input_size``, the autodiff
expression and point parsers)."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab import autodiff as ad
from cnnlab.data.augment import OPS, parse_augment
from cnnlab.errors import CnnlabError
from cnnlab.inspect.check import parse_input_size

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def one_short_line(call, *args):
    """Run ``call``; a CnnlabError must be one line that quotes at most 200 characters of input."""
    try:
        return call(*args)
    except CnnlabError as err:
        message = str(err)
        assert "\n" not in message, message
        assert len(message) <= 600, message[:300]
        return None


# Text near the grammar: op names, separators, numbers, and noise.
_AUG_ATOMS = st.sampled_from([*OPS, "none", ":", "/", ",", "=", "-", "p", "size", "fill", "random", "reflect",
                              "0", "1", "4", "0.5", "-1", "1e999", "nan", "inf", "9" * 50, " ", "x", "é", "\x00"])
AUGMENT_SPECS = st.one_of(st.lists(_AUG_ATOMS, max_size=12).map("".join), st.text(max_size=80),
                          st.tuples(st.sampled_from(sorted(OPS)), st.sampled_from("9a,/-"), st.integers(100, 6000))
                          .map(lambda t: f"{t[0]}:{t[1] * t[2]}"))


@FAST
@given(AUGMENT_SPECS)
def test_augmentation_spec_parser_never_raises_anything_else(spec):
    pipeline = one_short_line(parse_augment, spec)
    if pipeline is not None:  # what parses prints back to a spec that parses to the same pipeline
        assert parse_augment(str(pipeline)) == pipeline


_SIZE_ATOMS = st.sampled_from(["3", "x", "X", "224", "0", "-1", " ", "+", "1_0", "²", "٣", "9" * 5000, "1e3", ""])
INPUT_SIZES = st.one_of(
    st.lists(_SIZE_ATOMS, max_size=8).map("".join), st.text(max_size=40),
    st.lists(st.one_of(st.integers(-5, 2 ** 70), st.floats(), st.booleans(), st.text(max_size=3)), max_size=5),
    st.integers(), st.none(), st.floats(),
)


@FAST
@given(INPUT_SIZES)
def test_parse_input_size_never_raises_anything_else(size):
    parsed = one_short_line(parse_input_size, size)
    if parsed is not None:
        assert parsed and all(isinstance(s, int) and s >= 1 for s in parsed)


_EXPR_ATOMS = st.sampled_from(["x", "y", "z1", "+", "-", "*", "/", "**", "(", ")", "log", "exp", "sqrt", "tanh",
                               "relu", "sigmoid", "2", "0", "0.5", "1e308", "1e999", ".", ",", " ", "^", "//",
                               "lambda", ":", "'", "[", "]", "__import__", "\x00", "é", "1j", "True"])
EXPRESSIONS = st.one_of(st.lists(_EXPR_ATOMS, max_size=25).map("".join), st.text(max_size=60),
                        st.integers(1, 3000).map(lambda n: "+".join(["x"] * n)),
                        st.integers(1, 3000).map(lambda n: "(" * n + "x" + ")" * n),
                        st.integers(1, 3000).map(lambda n: "-" * n + "x"))


@FAST
@given(EXPRESSIONS, st.sampled_from(["reverse", "forward"]),
       st.fixed_dictionaries({"x": st.floats(-1e3, 1e3), "y": st.floats(0.1, 10), "z1": st.floats(-3, 3)}))
def test_autodiff_expression_parser_never_raises_anything_else(text, mode, point):
    result = one_short_line(ad.trace_table, text, point, mode)
    if result is None:
        return
    for name in [n.name for n in ad.parse(text)[0] if n.op == "var"]:
        assert f"df/d{name} = " in result.splitlines()[-1]


@FAST
@given(st.one_of(st.text(max_size=60), st.lists(st.sampled_from(["x", "=", "3", ",", "y", "nan", "-", "1e9999",
                                                                   " ", "9" * 400]), max_size=10).map("".join)))
def test_autodiff_point_parser_never_raises_anything_else(text):
    point = one_short_line(ad.parse_point, text)
    if point is not None:
        assert all(isinstance(v, float) for v in point.values())


@pytest.mark.parametrize("text", ["sqrt(x) * " * 700 + "x", "x" + "**x" * 400, "exp(" * 150 + "x" + ")" * 150])
def test_long_and_deep_expressions_are_a_result_or_one_line(text):
    one_short_line(ad.trace_table, text, {"x": 2.0}, "reverse")
