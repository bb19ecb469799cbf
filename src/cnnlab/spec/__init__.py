"""Networks written as layer lists, in the style of Karpathy's convnetjs ``layer_defs``.

Xiaolin Hu's *Deep Learning* (Tsinghua University), lecture 5 "CNNs II", teaches with the
convnetjs demos, whose networks are lists such as::

    [{"type": "input", "out_sx": 24, "out_sy": 24, "out_depth": 1},
     {"type": "conv", "sx": 5, "filters": 8, "stride": 1, "pad": 2, "activation": "relu"},
     {"type": "pool", "sx": 2, "stride": 2},
     {"type": "softmax", "num_classes": 10}]

    >>> from cnnlab import spec
    >>> layers = spec.load("convnetjs-mnist")            # a file, or the name of a shipped spec
    >>> model = spec.build(layers, input_size=(1, 28, 28), num_classes=10)
    >>> [row["size_formula"] for row in spec.table(layers)["rows"]][1]
    '⌊(24 − 5 + 2·2)/1 + 1⌋ = 24'

Layer kinds (keys, with convnetjs's defaults where convnetjs has the layer):

    input     out_sx, out_sy (= out_sx), out_depth
    conv      sx, filters, stride=1, pad=0, activation=None (relu|sigmoid|tanh), floor=false
    pool      sx, stride=2, pad=0, kind=max (max|avg), floor=false
    fc        num_neurons, activation=None
    relu, sigmoid, tanh
    dropout   drop_prob=0.5
    bn        (BatchNorm2d on maps, BatchNorm1d after an fc layer)
    lrn       n=5, k=2.0, alpha=1e-4, beta=0.75 (AlexNet's values; PyTorch's LocalResponseNorm)
    softmax   num_classes (taken from the dataset when left out)
    residual  filters, stride=1, floor=false (He et al. 2016's basic block: two 3x3 convs with BN, projection
              shortcut when the shape changes)
    inception n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_proj (Szegedy et al. 2014, Fig. 2b)

Sizes must fit: a window that does not tile its padded input (Ryu, ch. 3: "If stride 3,
dimensions don't fit") is refused, unless the layer says ``"floor": true``, which accepts
PyTorch's rounding down (the last rows and columns are ignored; ResNet's 7x7/2 stem on 224x224
and every 3x3/2 on an even size need it). The table flags such a layer either way.

As in convnetjs, ``softmax`` is a fully connected layer to ``num_classes`` outputs followed by the
softmax; the built network returns the logits (the cross-entropy loss applies the softmax).

The input layer and the data. When the data is larger than the declared input (the convnetjs
MNIST demo declares 24x24, MNIST is 28x28), the built network crops inside its first module:
a random crop per image in training (as the demo trained) and the center crop in eval mode, so
``cnnlab eval`` works on such a run unchanged. Other mismatches (fewer pixels, other channels, a
different class count) are refused.

Specs are data: JSON or YAML parsed with ``json.loads`` / ``yaml.safe_load``, never evaluated,
with limits on file size, layer count, sizes and total parameters. Every mistake is refused
with the layer's index and one sentence.
"""
from __future__ import annotations

import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

from cnnlab import shapes
from cnnlab.errors import CnnlabError

__all__ = ["KINDS", "MAX_LAYERS", "MAX_PARAMS", "build", "bundled", "load", "parse", "table", "validate"]

MAX_FILE_BYTES = 1_000_000
MAX_LAYERS = 200
MAX_SIDE = 2048  # input height/width
MAX_DEPTH = 64  # input channels
MAX_WIDTH = 4096  # filters, neurons, classes, inception branches
MAX_KERNEL = 64  # sx, stride, pad
MAX_ACTIVATIONS = 16_000_000  # elements of one layer's output, per image
MAX_PARAMS = 50_000_000
TOP_KEYS = ("name", "source", "description", "layers")

ACTIVATIONS = ("relu", "sigmoid", "tanh")
POOL_KINDS = ("max", "avg")

# kind -> {key: (type, default)}; default ``...`` means required. Types: "int" (positive unless
# the key is pad), "float", "prob" (in [0, 1)), or a tuple of accepted strings.
KINDS: dict[str, dict[str, tuple[Any, Any]]] = {
    "input": {"out_sx": ("int", ...), "out_sy": ("int", None), "out_depth": ("int", ...)},
    "conv": {"sx": ("int", ...), "filters": ("int", ...), "stride": ("int", 1), "pad": ("int", 0),
             "activation": (ACTIVATIONS, None), "floor": ("bool", False)},
    "pool": {"sx": ("int", ...), "stride": ("int", 2), "pad": ("int", 0), "kind": (POOL_KINDS, "max"),
             "floor": ("bool", False)},
    "fc": {"num_neurons": ("int", ...), "activation": (ACTIVATIONS, None)},
    "relu": {}, "sigmoid": {}, "tanh": {},
    "dropout": {"drop_prob": ("prob", 0.5)},
    "bn": {},
    "lrn": {"n": ("int", 5), "k": ("float", 2.0), "alpha": ("float", 1e-4), "beta": ("float", 0.75)},
    "softmax": {"num_classes": ("int", None)},
    "residual": {"filters": ("int", ...), "stride": ("int", 1), "floor": ("bool", False)},
    "inception": {"n1x1": ("int", ...), "n3x3red": ("int", ...), "n3x3": ("int", ...),
                  "n5x5red": ("int", ...), "n5x5": ("int", ...), "pool_proj": ("int", ...)},
}
_LIMITS = {"out_sx": MAX_SIDE, "out_sy": MAX_SIDE, "out_depth": MAX_DEPTH, "sx": MAX_KERNEL,
           "stride": MAX_KERNEL, "pad": MAX_KERNEL, "n": MAX_KERNEL}
_MAPS_ONLY = ("conv", "pool", "lrn", "residual", "inception")  # need a C x H x W input


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- reading ------------------------------------------------------------------------------------

def bundled() -> dict[str, Path]:
    """The specs shipped with cnnlab, by name (``convnetjs-mnist``, ``convnetjs-cifar10``)."""
    root = resources.files(__name__)
    return {p.name[:-5]: Path(str(p)) for p in root.iterdir() if p.name.endswith(".json")}


def load(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read and validate a spec file (JSON, or YAML for .yaml/.yml); a name such as
    ``convnetjs-mnist`` that is not a file picks a shipped spec. Returns the list of layers."""
    p = Path(path)
    if not p.exists() and str(path) in bundled():
        p = bundled()[str(path)]
    if not p.is_file():
        shipped = ", ".join(sorted(bundled()))
        raise CnnlabError(f"no such spec file: {_short(str(path))} (shipped specs: {shipped})")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CnnlabError(f"{p} is {size:,} bytes; a spec file may hold at most {MAX_FILE_BYTES:,}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CnnlabError(f"{p} is not a UTF-8 text file") from None
    fmt = "yaml" if p.suffix.lower() in (".yaml", ".yml") else "json" if p.suffix.lower() == ".json" else None
    return parse(text, fmt=fmt, source=str(p))


def parse(text: str, *, fmt: str | None = None, source: str = "the spec") -> list[dict[str, Any]]:
    """Parse spec text (``fmt`` "json", "yaml", or None: JSON, else YAML) and validate it.

    The document is either a list of layers or a mapping with a ``layers`` list (and optionally
    ``name``, ``source``, ``description``)."""
    if len(text) > MAX_FILE_BYTES:
        raise CnnlabError(f"{source} is {len(text):,} characters; a spec may hold at most {MAX_FILE_BYTES:,}")
    if fmt not in (None, "json", "yaml"):
        raise CnnlabError(f"unknown spec format {fmt!r}; valid: json, yaml")
    doc: Any = None
    if fmt in (None, "json"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            if fmt == "json":
                raise CnnlabError(f"{source} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
            fmt = "yaml"
    if fmt == "yaml":
        import yaml

        try:
            doc = yaml.safe_load(text)  # data only: no tags that construct Python objects
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise CnnlabError(f"{source} is not valid JSON or YAML{where}") from None
    if isinstance(doc, dict):
        unknown = [k for k in doc if k not in TOP_KEYS]
        if unknown:
            raise CnnlabError(f"{source} has unknown top-level key {_short(unknown[0])}; valid: {', '.join(TOP_KEYS)}")
        doc = doc.get("layers")
    if not isinstance(doc, list):
        raise CnnlabError(f"{source} must be a list of layers (or a mapping with a 'layers' list); "
                          f"received {type(doc).__name__}")
    validate(doc)
    return doc


def _check_value(i: int, kind: str, key: str, value: Any, rule: Any) -> Any:
    where = f"layer {i} ({kind})"
    if isinstance(rule, tuple):
        if value not in rule:
            raise CnnlabError(f"{where}: {key} must be one of {', '.join(rule)}; received {key}={_short(value)}")
        return value
    if rule == "bool":
        if not isinstance(value, bool):
            raise CnnlabError(f"{where}: {key} must be true or false; received {key}={_short(value)}")
        return value
    if rule == "int":
        low = 0 if key == "pad" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            kind_of = "a non-negative" if low == 0 else "a positive"
            raise CnnlabError(f"{where}: {key} must be {kind_of} integer; received {key}={_short(value)}")
        limit = _LIMITS.get(key, MAX_WIDTH)
        if value > limit:
            raise CnnlabError(f"{where}: {key} may be at most {limit}; received {key}={value}")
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise CnnlabError(f"{where}: {key} must be a number; received {key}={_short(value)}")
    if rule == "prob" and not 0 <= value < 1:
        raise CnnlabError(f"{where}: {key} must be in [0, 1); received {key}={value}")
    if rule == "float" and value <= 0:
        raise CnnlabError(f"{where}: {key} must be positive; received {key}={value}")
    return float(value)


def _layer_args(i: int, layer: Any) -> tuple[str, dict[str, Any]]:
    """Check one layer's keys and values; return its kind and every argument (defaults filled)."""
    if not isinstance(layer, dict):
        raise CnnlabError(f"layer {i} must be a mapping such as {{\"type\": \"conv\", ...}}; received {_short(layer)}")
    kind = layer.get("type")
    if kind not in KINDS:
        raise CnnlabError(f"layer {i} has unknown type {_short(kind)}; valid: {', '.join(KINDS)}")
    rules = KINDS[kind]
    unknown = [k for k in layer if k != "type" and k not in rules]
    if unknown:
        valid = ", ".join(rules) or "none"
        raise CnnlabError(f"layer {i} ({kind}) has unknown key {_short(unknown[0])}; valid keys: {valid}")
    args: dict[str, Any] = {}
    for key, (rule, default) in rules.items():
        if key in layer and layer[key] is not None:
            args[key] = _check_value(i, kind, key, layer[key], rule)
        elif default is ...:
            raise CnnlabError(f"layer {i} ({kind}) needs {key!r}")
        else:
            args[key] = default
    if kind == "input" and args["out_sy"] is None:
        args["out_sy"] = args["out_sx"]
    return kind, args


def validate(layers: Any) -> list[dict[str, Any]]:
    """Check every layer's keys and values and the order of the layers; return ``layers``.

    Shapes are checked by ``table`` and ``build``, which know the input size."""
    if not isinstance(layers, list) or not layers:
        raise CnnlabError(f"a spec is a non-empty list of layers; received {_short(layers)}")
    if len(layers) > MAX_LAYERS:
        raise CnnlabError(f"a spec may have at most {MAX_LAYERS} layers; received {len(layers)}")
    kinds = [_layer_args(i, layer)[0] for i, layer in enumerate(layers)]
    for i, kind in enumerate(kinds):
        if kind == "input" and i != 0:
            raise CnnlabError(f"layer {i} (input): the input layer must come first")
        if kind == "softmax" and i != len(kinds) - 1:
            raise CnnlabError(f"layer {i} (softmax): the softmax layer must be the last")
    if kinds[-1] != "softmax":
        raise CnnlabError(f"layer {len(kinds) - 1} ({kinds[-1]}): a spec must end with a softmax layer "
                          f"(the classifier), as in convnetjs")
    return layers


# --- shapes, parameters and the lecture's formulas -----------------------------------------------

def _size_formula(w: int, f: int, p: int, s: int) -> tuple[str, int, bool]:
    """The lecture's ⌊(W − F + 2P)/S + 1⌋ with the numbers filled in; (text, result, fits)."""
    out = shapes.conv_output_size(w, f, s, p)
    fits = (w - f + 2 * p) % s == 0 and out >= 1
    inner = f"({w} − {f} + 2·{p})/{s} + 1"
    if fits:
        return f"⌊{inner}⌋ = {out}", out, True
    exact = (w - f + 2 * p) / s + 1
    return f"⌊{inner}⌋ = ⌊{exact:.3g}⌋ = {out}", out, False


def _window(i: int, kind: str, shape: tuple[int, ...], f: int, s: int, p: int, floor: bool
            ) -> dict[str, Any]:
    c, h, w = shape
    if kind == "pool" and 2 * p > f:
        raise CnnlabError(f"layer {i} (pool): padding may be at most half the window; received pad={p} for sx={f}")
    text_h, out_h, fit_h = _size_formula(h, f, p, s)
    text_w, out_w, fit_w = _size_formula(w, f, p, s)
    text = text_h if h == w else f"H: {text_h}; W: {text_w}"
    error = None
    if out_h < 1 or out_w < 1:
        error = (f"layer {i} ({kind}) doesn't fit: a {f}×{f} window is larger than its {h}×{w} input "
                 f"padded by {p}")
    elif not (fit_h and fit_w) and not floor:
        bad, size = (h, "H") if not fit_h else (w, "W")
        error = (f"layer {i} ({kind}) doesn't fit: its input is {c}×{h}×{w} and ({size} − F + 2P)/S + 1 = "
                 f"({bad} − {f} + 2·{p})/{s} + 1 = {(bad - f + 2 * p) / s + 1:.3g} is not an integer; "
                 f"change the padding or the stride, or accept the floor with \"floor\": true")
    return {"out_hw": (out_h, out_w), "size_formula": text, "fits": fit_h and fit_w, "error": error}


def _row(i: int, kind: str, args: dict[str, Any], shape: tuple[int, ...], num_classes: int | None
         ) -> dict[str, Any]:
    """One layer of the table: output shape, parameters, formulas, fit flag (errors are raised)."""
    row: dict[str, Any] = {"size_formula": "", "params": 0, "params_formula": "", "fits": True, "error": None}
    maps = len(shape) == 3
    if kind in _MAPS_ONLY and not maps:
        raise CnnlabError(f"layer {i} ({kind}) needs a C×H×W input; it receives a flat vector of {shape[0]} "
                          f"(after an fc layer, only fc, activations, dropout, bn and softmax can follow)")
    flat = math.prod(shape)
    if kind == "conv":
        f, s, p, c_out = args["sx"], args["stride"], args["pad"], args["filters"]
        win = _window(i, kind, shape, f, s, p, args["floor"])
        hw = win.pop("out_hw")
        row.update(win)
        row["output"] = [c_out, *hw]
        row["params"] = shapes.conv_params(f, shape[0], c_out)
        row["params_formula"] = f"{f}²·{shape[0]}·{c_out} + {c_out} = {row['params']}"
    elif kind == "pool":
        win = _window(i, kind, shape, args["sx"], args["stride"], args["pad"], args["floor"])
        hw = win.pop("out_hw")
        row.update(win)
        row["output"] = [shape[0], *hw]
    elif kind in ("fc", "softmax"):
        n = args["num_neurons"] if kind == "fc" else args["num_classes"]
        if kind == "softmax":
            if n is None:
                n = num_classes
            elif num_classes is not None and n != num_classes:
                raise CnnlabError(f"layer {i} (softmax): the spec has num_classes={n} but the data has "
                                  f"{num_classes} classes; change num_classes or leave it out")
            if n is None:
                raise CnnlabError(f"layer {i} (softmax) needs num_classes (or train it on a dataset)")
            if n < 2:
                raise CnnlabError(f"layer {i} (softmax): num_classes must be at least 2; received {n}")
        row["output"] = [n]
        row["params"] = shapes.linear_params(flat, n)
        n_in = "·".join(map(str, shape))
        row["params_formula"] = f"{n_in}·{n} + {n} = {row['params']}"
        row["size_formula"] = f"{n}" if not maps else f"{n_in} = {flat} → {n}"
    elif kind == "bn":
        row["output"] = list(shape)
        row["params"] = 2 * shape[0]
        row["params_formula"] = f"2·{shape[0]} = {row['params']}"
    elif kind == "lrn":
        row["output"] = list(shape)
        if args["n"] > shape[0] * 2 + 1:
            raise CnnlabError(f"layer {i} (lrn): n={args['n']} spans more channels than its {shape[0]} "
                              f"input channels on either side")
    elif kind == "residual":
        c_in, c_out, s = shape[0], args["filters"], args["stride"]
        win = _window(i, kind, shape, 3, s, 1, args["floor"])
        hw = win.pop("out_hw")
        row.update(win)
        row["output"] = [c_out, *hw]
        convs = 9 * c_in * c_out + 9 * c_out * c_out
        row["params"] = convs + 4 * c_out
        row["params_formula"] = f"3²·{c_in}·{c_out} + 3²·{c_out}·{c_out} + 2·2·{c_out}"
        if c_in != c_out or s != 1:  # projection shortcut: strided 1x1 conv (no bias) + BN
            row["params"] += c_in * c_out + 2 * c_out
            row["params_formula"] += f" + {c_in}·{c_out} + 2·{c_out}"
        row["params_formula"] += f" = {row['params']}"
    elif kind == "inception":
        c = shape[0]
        a = args
        c_out = a["n1x1"] + a["n3x3"] + a["n5x5"] + a["pool_proj"]
        row["output"] = [c_out, shape[1], shape[2]]
        row["size_formula"] = f"{a['n1x1']} + {a['n3x3']} + {a['n5x5']} + {a['pool_proj']} = {c_out} channels"
        terms = [(1, c, a["n1x1"]), (1, c, a["n3x3red"]), (3, a["n3x3red"], a["n3x3"]),
                 (1, c, a["n5x5red"]), (5, a["n5x5red"], a["n5x5"]), (1, c, a["pool_proj"])]
        row["params"] = sum(shapes.conv_params(k, ci, co) for k, ci, co in terms)
        row["params_formula"] = " + ".join(f"({k}²·{ci}·{co} + {co})" for k, ci, co in terms) + f" = {row['params']}"
    else:  # input handled by the caller; activations, dropout keep the shape
        row["output"] = list(shape)
    if math.prod(row["output"]) > MAX_ACTIVATIONS:
        raise CnnlabError(f"layer {i} ({kind}) outputs {math.prod(row['output']):,} values per image; "
                          f"at most {MAX_ACTIVATIONS:,} are allowed")
    return row


def _label(kind: str, a: dict[str, Any]) -> str:
    act = f" + {a['activation']}" if a.get("activation") else ""
    if kind == "input":
        return f"input {a['out_depth']}×{a['out_sy']}×{a['out_sx']}"
    if kind == "conv":
        return f"conv {a['filters']}@{a['sx']}×{a['sx']}, stride {a['stride']}, pad {a['pad']}{act}"
    if kind == "pool":
        return f"{a['kind']} pool {a['sx']}×{a['sx']}, stride {a['stride']}" + (f", pad {a['pad']}" if a["pad"] else "")
    if kind == "fc":
        return f"fc {a['num_neurons']}{act}"
    if kind == "dropout":
        return f"dropout {a['drop_prob']:g}"
    if kind == "softmax":
        return "softmax" + (f" {a['num_classes']}" if a["num_classes"] else "")
    if kind == "residual":
        return f"residual {a['filters']}, stride {a['stride']}"
    if kind == "lrn":
        return f"lrn n={a['n']}"
    return kind


def _input(layers: list, input_size: tuple[int, ...] | None) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(declared, actual) input sizes as (C, H, W); refuses a mismatch that cropping cannot fix."""
    if input_size is not None:
        input_size = tuple(input_size)
        if len(input_size) != 3 or any(not isinstance(s, int) or s < 1 for s in input_size):
            raise CnnlabError(f"input_size must be (C, H, W) positive integers; received {_short(input_size)}")
    first = layers[0]
    if first.get("type") != "input":
        if input_size is None:
            raise CnnlabError("layer 0: the spec has no input layer, so an input size is needed "
                              "(add {\"type\": \"input\", \"out_sx\": 28, \"out_depth\": 1} or pass input_size)")
        return input_size, input_size
    _, a = _layer_args(0, first)
    declared = (a["out_depth"], a["out_sy"], a["out_sx"])
    if input_size is None or input_size == declared:
        return declared, declared
    if input_size[0] != declared[0]:
        raise CnnlabError(f"layer 0 (input) declares {declared[0]} channel(s) but the data has {input_size[0]} "
                          f"({'×'.join(map(str, input_size))} images)")
    if input_size[1] < declared[1] or input_size[2] < declared[2]:
        raise CnnlabError(f"layer 0 (input) declares {declared[1]}×{declared[2]} but the data is only "
                          f"{input_size[1]}×{input_size[2]}; a spec may crop the data, not enlarge it")
    return declared, input_size


def _plan(layers: list, input_size: tuple[int, ...] | None, num_classes: int | None, *, strict: bool
          ) -> dict[str, Any]:
    validate(layers)
    declared, actual = _input(layers, input_size)
    rows: list[dict[str, Any]] = []
    shape: tuple[int, ...] = declared
    error = None
    for i, layer in enumerate(layers):
        kind, args = _layer_args(i, layer)
        if kind == "input":
            crop = actual != declared
            row = {"output": list(declared), "params": 0, "params_formula": "", "fits": True, "error": None,
                   "size_formula": (f"{actual[1]}×{actual[2]} cropped to {declared[1]}×{declared[2]} "
                                    f"(random in training, center in eval)") if crop else ""}
        else:
            try:
                row = _row(i, kind, args, shape, num_classes)
            except CnnlabError as e:
                if strict:
                    raise
                rows.append({"index": i, "type": kind, "label": _label(kind, args), "input": list(shape),
                             "output": None, "params": 0, "size_formula": "", "params_formula": "",
                             "fits": False, "error": str(e)})
                error = str(e)
                break
        if row["error"] is not None:
            if strict:
                raise CnnlabError(row["error"])
            error = error or row["error"]
        rows.append({"index": i, "type": kind, "label": _label(kind, args), "input": list(shape), **row})
        shape = tuple(row["output"])
        if row["output"][-1] < 1 or (len(shape) == 3 and min(shape[1:]) < 1):
            break
    total = sum(r["params"] for r in rows)
    if total > MAX_PARAMS and error is None:
        error = f"the network has {total:,} parameters; at most {MAX_PARAMS:,} are allowed"
        if strict:
            raise CnnlabError(error)
    return {"rows": rows, "total_params": total, "input": list(actual), "declared_input": list(declared),
            "output": rows[-1]["output"], "error": error}


def table(layers: list, input_size: tuple[int, int, int] | None = None, num_classes: int | None = None
          ) -> dict[str, Any]:
    """The per-layer table, as the Build view of ``cnnlab lab`` shows it.

    Returns ``{"rows": [...], "total_params", "input", "declared_input", "output", "error"}``;
    each row has ``index``, ``type``, ``label``, ``input`` and ``output`` sizes, ``params``, the
    lecture's formulas with the numbers filled in (``size_formula`` such as
    ``⌊(28 − 5 + 2·2)/1 + 1⌋ = 28``, ``params_formula`` such as ``5²·1·6 + 6 = 156``), ``fits``
    (False when the window does not tile its input, Ryu ch. 3: "If stride 3, dimensions don't
    fit") and ``error``. A layer that does not fit is reported and the table goes on with the
    floor, as PyTorch would; a layer that cannot be computed at all ends the table. Mistakes in
    the keys or values of a layer are raised, as by ``validate``.
    """
    return _plan(layers, input_size, num_classes, strict=False)


def build(layers: list, *, input_size: tuple[int, int, int] | None = None, num_classes: int | None = None):
    """Build the network of ``layers`` for data of ``input_size`` (C, H, W) and ``num_classes``.

    Returns a ``SpecNet`` (an ``nn.Module``; ``model.layers[i]`` is spec layer ``i``). Refuses a
    layer that doesn't fit, with its index, its input size and the formula's non-integer result,
    before any tensor is allocated.
    """
    plan = _plan(layers, input_size, num_classes, strict=True)
    from cnnlab.spec.modules import SpecNet

    return SpecNet(layers, plan)
