"""The lectures' math from the command line: ``cnnlab shapes conv``, ``cnnlab shapes rf``,
``cnnlab pool`` and ``cnnlab gradcheck``.

    cnnlab shapes conv --input 7 --kernel 3 --stride 3      # Ryu, ch. 3: "dimensions don't fit"
    cnnlab shapes rf 3,1 3,1                                 # two 3x3 convs see 5x5
    cnnlab pool --example                                    # the lecture's 4x4 max/avg pool
    cnnlab gradcheck my_layer.py:MySigmoid --shape 3,4       # your autograd.Function, in float64
"""
from __future__ import annotations

import argparse

from cnnlab.errors import CnnlabError

# Ryu, ch. 3, "Pooling": the 4x4 channel pooled by 2x2 windows with stride 2.
EXAMPLE = [[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]]


def add_parsers(sub) -> None:
    p = sub.add_parser("shapes", help="the conv output-size formula and receptive fields, with your numbers",
                       description="The lecture's layer formulas (Ryu, ch. 3, 'Convolution summary').")
    what = p.add_subparsers(dest="what", metavar="{conv,rf}")
    c = what.add_parser("conv", help="W_out = floor((W - F + 2P) / S) + 1, and whether it fits")
    c.add_argument("--input", type=int, required=True, metavar="W", help="input width (or height)")
    c.add_argument("--kernel", type=int, required=True, metavar="F", help="filter size")
    c.add_argument("--stride", type=int, default=1, metavar="S")
    c.add_argument("--padding", type=int, default=0, metavar="P")
    c.add_argument("--dilation", type=int, default=1, metavar="D")
    c.set_defaults(func=_cmd_conv)
    r = what.add_parser("rf", help="receptive field of a stack of layers given as KERNEL,STRIDE[,DILATION]")
    r.add_argument("layers", nargs="+", metavar="K,S[,D]", help="e.g. 3,1 3,1 (two 3x3 convs)")
    r.set_defaults(func=_cmd_rf)
    p.set_defaults(func=lambda args: _missing(p))

    q = sub.add_parser("pool", help="max and average pooling of a small matrix, as in the lecture",
                       description="Max and average pooling (cnnlab.manual's hand-derived layers) of a matrix.")
    q.add_argument("--example", action="store_true", help="the lecture's 4x4 example (Ryu, ch. 3, 'Pooling')")
    q.add_argument("--matrix", metavar="ROWS", help="rows separated by ';', entries by ',' or spaces, e.g. '1,2;3,4'")
    q.add_argument("--kernel", type=int, default=2, metavar="F", help="window size (default 2)")
    q.add_argument("--stride", type=int, metavar="S", help="stride (default: the window size)")
    q.set_defaults(func=_cmd_pool)

    g = sub.add_parser("gradcheck", help="check your own autograd.Function's backward in float64",
                       description="Load FILE.py, take its torch.autograd.Function subclass CLASS, and compare its "
                                   "backward with finite differences in float64 (torch.autograd.gradcheck), the check "
                                   "cnnlab runs on its own hand-derived layers.")
    g.add_argument("target", metavar="FILE.py:CLASS")
    g.add_argument("--shape", action="append", metavar="D1,D2,...",
                   help="shape of one input, in forward's order (repeat per input; default one input of 3,4)")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=_cmd_gradcheck)


def _missing(p: argparse.ArgumentParser) -> int:
    raise CnnlabError("say what to compute: `cnnlab shapes conv ...` or `cnnlab shapes rf ...`")


def conv_report(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> str:
    """The formula with the numbers in, the output size, and whether the dimensions fit."""
    from cnnlab import shapes

    out = shapes.conv_output_size(size, kernel, stride, padding, dilation)
    span = dilation * (kernel - 1) + 1
    room = size - span + 2 * padding
    f = f"{span}" if dilation == 1 else f"{span} (F={kernel} dilated by {dilation})"
    lines = [f"W_out = floor((W - F + 2P) / S) + 1 = floor(({size} - {f} + 2*{padding}) / {stride}) + 1 = {out}"]
    if room < 0:
        lines.append(f"does not fit: the window ({span}) is larger than the padded input ({size + 2 * padding})")
    elif room % stride == 0:
        lines.append(f"fits: ({room}) / {stride} is a whole number; output {out}x{out} for a {size}x{size} input")
    else:
        fix = next((p for p in range(padding + 1, padding + stride + span) if (size - span + 2 * p) % stride == 0), None)
        lines.append(f"dimensions don't fit: {room} / {stride} is not a whole number, so the last {room % stride} "
                     f"input(s) are never covered (PyTorch drops them)"
                     + (f"; padding {fix} would make it fit" if fix is not None else ""))
    return "\n".join(lines)


def rf_report(layers: list[tuple[int, ...]]) -> str:
    from cnnlab import shapes

    rf, jump = 1, 1
    lines = ["layer  kernel stride dilation  receptive field  jump"]
    for i, layer in enumerate(layers, 1):
        k, s, d = (tuple(layer) + (1,))[:3] if len(layer) == 2 else layer
        rf, jump = shapes.receptive_field_step(rf, jump, k, s, d)
        lines.append(f"{i:>5}  {k:>6} {s:>6} {d:>8}  {rf:>15}  {jump:>4}")
    lines.append(f"one output sees {rf}x{rf} input pixels")
    return "\n".join(lines)


def _parse_layer(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (2, 3) or any(v < 1 for v in values):
        raise CnnlabError(f"each layer is KERNEL,STRIDE or KERNEL,STRIDE,DILATION of positive integers; "
                          f"received {text[:50]!r}")
    return values


def _cmd_conv(args: argparse.Namespace) -> int:
    print(conv_report(args.input, args.kernel, args.stride, args.padding, args.dilation))
    return 0


def _cmd_rf(args: argparse.Namespace) -> int:
    print(rf_report([_parse_layer(t) for t in args.layers]))
    return 0


def parse_matrix(text: str) -> list[list[float]]:
    rows = [r for r in text.split(";") if r.strip()]
    try:
        matrix = [[float(v) for v in r.replace(",", " ").split()] for r in rows]
    except ValueError:
        matrix = []
    if not matrix or any(len(r) != len(matrix[0]) or not r for r in matrix):
        raise CnnlabError(f"--matrix needs rows of equal length, separated by ';'; received {text[:100]!r}")
    return matrix


def pool_report(matrix: list[list[float]], kernel: int = 2, stride: int | None = None) -> str:
    import torch

    from cnnlab.manual.pool import avg_pool2d, max_pool2d

    stride = stride or kernel
    h, w = len(matrix), len(matrix[0])
    if kernel < 1 or stride < 1 or kernel > min(h, w):
        raise CnnlabError(f"the window must be at least 1 and fit the {h}x{w} matrix, stride at least 1; "
                          f"received kernel {kernel}, stride {stride}")
    x = torch.tensor(matrix, dtype=torch.float64)[None, None]  # (1, 1, H, W)

    def show(m) -> str:
        return "\n".join("  " + "  ".join(f"{v:g}".rjust(5) for v in row) for row in m)

    return "\n".join([f"input {h}x{w}:", show(matrix),
                      f"max pool {kernel}x{kernel}, stride {stride}:", show(max_pool2d(x, kernel, stride)[0, 0].tolist()),
                      f"average pool {kernel}x{kernel}, stride {stride}:",
                      show(avg_pool2d(x, kernel, stride)[0, 0].tolist())])


def _cmd_pool(args: argparse.Namespace) -> int:
    if args.example == bool(args.matrix):
        raise CnnlabError("give either --example or --matrix ROWS (e.g. --matrix '1,2;3,4')")
    matrix = EXAMPLE if args.example else parse_matrix(args.matrix)
    print(pool_report(matrix, args.kernel, args.stride))
    return 0


def load_function(target: str):
    """The ``torch.autograd.Function`` subclass named by ``FILE.py:CLASS``."""
    import importlib.util
    from pathlib import Path

    import torch

    path, sep, name = target.rpartition(":")
    if not sep or not path or not name:
        raise CnnlabError(f"give FILE.py:CLASS; received {target[:200]!r}")
    if not Path(path).is_file():
        raise CnnlabError(f"no file {path[:200]!r}")
    spec = importlib.util.spec_from_file_location(f"_cnnlab_user_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file: report, do not crash
        raise CnnlabError(f"importing {path[:200]} failed: {type(e).__name__}: {str(e)[:150]}") from None
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.autograd.Function)):
        found = [k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, torch.autograd.Function)
                 and v is not torch.autograd.Function]
        raise CnnlabError(f"{path[:200]} has no torch.autograd.Function named {name[:50]!r}; "
                          f"it has: {', '.join(found) or 'none'}")
    return cls


def gradcheck_function(cls, shapes: list[tuple[int, ...]], seed: int = 0) -> tuple[bool, str]:
    """Run ``cls.apply`` on random float64 inputs of ``shapes`` through ``torch.autograd.gradcheck``."""
    import importlib

    import torch

    GradcheckError = importlib.import_module("torch.autograd.gradcheck").GradcheckError  # the name is shadowed
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    try:
        ok = torch.autograd.gradcheck(cls.apply, xs, eps=1e-6, atol=1e-6, rtol=1e-5)
    except GradcheckError as e:
        first = str(e).strip().splitlines()[0]
        return False, f"backward differs from finite differences: {first[:300]}"
    except Exception as e:  # noqa: BLE001 - the user's code
        return False, f"{cls.__name__} failed on inputs of shapes {shapes}: {type(e).__name__}: {str(e)[:200]}"
    return ok, (f"{cls.__name__}: backward agrees with finite differences in float64 "
                f"(inputs {', '.join('x'.join(map(str, s)) for s in shapes)})")


def _cmd_gradcheck(args: argparse.Namespace) -> int:
    cls = load_function(args.target)
    shapes = []
    for text in args.shape or ["3,4"]:
        try:
            shape = tuple(int(v) for v in text.split(","))
        except ValueError:
            shape = ()
        if not shape or any(v < 1 for v in shape):
            raise CnnlabError(f"--shape needs positive integers separated by ','; received {text[:50]!r}")
        shapes.append(shape)
    ok, message = gradcheck_function(cls, shapes, args.seed)
    print(("PASS " if ok else "FAIL ") + message)
    return 0 if ok else 1
