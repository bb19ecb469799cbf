"""Data augmentation on whole batches: the spec grammar, the table of ops, the ``Pipeline`` and the contact sheet.

    >>> from cnnlab.data.augment import parse_augment
    >>> pipeline = parse_augment("flip,crop:4,cutout:8")
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = pipeline(x, y, num_classes=10, generator=g)  # x: float (B, C, H, W) in [0, 1]

The lectures list the variations (Hu, lecture 5, "Commonly used variations for images": flips,
translations, crops and scales, stretching, shearing, cutout or erasing, mixup, colour jittering;
"Drop pixels: a data augmentation method") and say why (Ryu, ch. 3): augmentation "applies
transforms to the data while preserving meaning and label", injects prior knowledge, removes
spurious correlations, and "is usually applied only on training data". Pick only invariances the
data has: Ryu, ch. 3, strikes the horizontal flip out for digits, so ``flip`` suits CIFAR, not MNIST.

Grammar (``describe()`` prints it with every op's parameters):

    spec  := "none" | "" | op ("," op)*
    op    := NAME [":" arg ("/" arg)*]
    arg   := VALUE | KEY "=" VALUE          VALUE: a number, a range LO-HI, or a word
    e.g.    flip,crop:4,cutout:8    affine:15/10/0.1    crop:pad=2/mode=reflect    rrc:0.35-1

Ops are separated by commas, the arguments of one op by slashes, so the two never clash. Each op
draws its own random parameters for every sample from the generator passed in, so a seeded
generator reproduces the batch exactly. The kernels are in ``cnnlab.data.augment_ops``.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cnnlab.data import augment_ops as K
from cnnlab.errors import CnnlabError, unknown_name
from cnnlab.fileio import atomic_open


@dataclass(frozen=True)
class Param:
    """One parameter of an op: how it is written, checked and defaulted."""

    name: str
    kind: str  # "int", "float", "range" (LO-HI or one number), "choice", "fill" (a number or "random")
    default: Any
    accepts: str  # completes "<op> <name> must be ...", e.g. "a probability in [0, 1]"
    valid: Callable[[Any], bool]
    help: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpSpec:
    """An augmentation: its name, kernel, parameters and where it comes from."""

    name: str
    kernel: Callable[..., Any]
    params: tuple[Param, ...]
    summary: str
    source: str
    soft: bool = False  # mixes labels: the pipeline then returns soft targets
    inplace: bool = False  # the kernel takes ``inplace=``: it may then write into the batch it is given
    # (pad or size) -> the largest image side it needs, checked when a batch arrives
    min_side: Callable[[dict[str, Any]], int] | None = None


def _prob(v: float) -> bool:
    return 0.0 <= v <= 1.0


def _share_range(v: tuple[float, float]) -> bool:
    return 0.0 < v[0] <= v[1] <= 1.0


def _ratio_range(v: tuple[float, float]) -> bool:
    return 0.0 < v[0] <= v[1]


_P = "a probability in [0, 1]"
_SHARE = "a range LO-HI of area shares with 0 < LO <= HI <= 1"
_RATIO = "a range LO-HI of aspect ratios with 0 < LO <= HI"
_FILL01 = "a value in [0, 1]"

OPS: dict[str, OpSpec] = {op.name: op for op in (
    OpSpec("flip", K.flip,
           (Param("p", "float", 0.5, _P, _prob, "probability of mirroring each image"),),
           "random horizontal flip (not for digits or text)",
           "lectures 000 'Invariances' and 002 'Random flip'; airbench batch_flip_lr", inplace=True),
    OpSpec("crop", K.crop,
           (Param("pad", "int", 4, "an integer >= 1", lambda v: v >= 1,
                  "pixels padded on each side; the content moves by up to pad pixels each way"),
            Param("mode", "choice", "zero", "one of zero, reflect", lambda v: True,
                  "padding: zero (He et al. 2016, §4.2) or reflect (airbench)", ("zero", "reflect"))),
           "translation: pad, then crop back to H x W at a random offset",
           "Hu, lecture 5, 'translations'/'Random crops'; airbench batch_crop",
           min_side=lambda v: v["pad"] + 1),
    OpSpec("rrc", K.resized_crop,
           (Param("scale", "range", (0.08, 1.0), _SHARE, _share_range, "share of the image's area kept"),
            Param("ratio", "range", (3 / 4, 4 / 3), _RATIO, _ratio_range, "aspect ratio (width/height) of the box")),
           "random resized crop, resized back bilinearly",
           "Hu, lecture 5, 'Scale then crop'; Szegedy et al. 2015 (GoogLeNet) §6"),
    OpSpec("affine", K.affine,
           (Param("degrees", "float", 15.0, "an angle in [0, 180]", lambda v: 0 <= v <= 180,
                  "rotation drawn from U(-degrees, degrees)"),
            Param("shear", "float", 10.0, "an angle in [0, 60]", lambda v: 0 <= v <= 60,
                  "x-shear angle drawn from U(-shear, shear), in degrees"),
            Param("stretch", "float", 0.1, "a fraction in [0, 1)", lambda v: 0 <= v < 1,
                  "each axis scaled by its own factor in U(1 - stretch, 1 + stretch)")),
           "rotation, shear and stretch about the centre, bilinear, zeros outside",
           "Hu, lecture 5, 'stretching, shearing'"),
    OpSpec("cutout", K.cutout,
           (Param("size", "int", 8, "an integer >= 1", lambda v: v >= 1, "side of the square, in pixels"),
            Param("fill", "float", 0.0, _FILL01, _prob, "value written into the square")),
           "fill a size x size square centred anywhere (clipped at the border)",
           "Hu, lecture 5, 'Random cutout or erasing'; DeVries & Taylor 2017",
           min_side=lambda v: v["size"], inplace=True),
    OpSpec("erase", K.erase,
           (Param("p", "float", 0.5, _P, _prob, "probability of erasing a box in each image"),
            Param("scale", "range", (0.02, 0.4), _SHARE, _share_range, "share of the image's area erased"),
            Param("ratio", "range", (0.3, 1 / 0.3), _RATIO, _ratio_range, "aspect ratio (width/height) of the box"),
            Param("fill", "fill", "random", "'random' or a value in [0, 1]", lambda v: v == "random" or _prob(v),
                  "uniform noise ('random') or a constant")),
           "random erasing of a box of random size and shape inside the image",
           "Hu, lecture 5, 'Random cutout or erasing'; Zhong et al. 2017, Alg. 1", inplace=True),
    OpSpec("droppixel", K.drop_pixels,
           (Param("p", "float", 0.1, "a probability in [0, 1)", lambda v: 0 <= v < 1,
                  "probability of zeroing each pixel"),),
           "zero each pixel independently",
           "Hu, lecture 5, 'Drop pixels: a data augmentation method'", inplace=True),
    OpSpec("jitter", K.jitter,
           tuple(Param(n, "float", 0.4, "a fraction in [0, 1]", _prob, f"{n} factor drawn from U(1 - {n}, 1 + {n})")
                 for n in ("brightness", "contrast", "saturation")),
           "colour jitter; saturation only acts on RGB",
           "Hu, lecture 5, 'color jittering'; torchvision ColorJitter"),
    OpSpec("mixup", K.mixup,
           (Param("alpha", "float", 0.2, "a positive number", lambda v: v > 0,
                  "lambda ~ Beta(alpha, alpha); 0.1-0.4 for ImageNet, 1 for CIFAR in the paper"),),
           "blend each image and its target with a random partner from the batch",
           "Hu, lecture 5, 'mixup'; Zhang et al. 2017", soft=True),
    OpSpec("cutmix", K.cutmix,
           (Param("alpha", "float", 1.0, "a positive number", lambda v: v > 0,
                  "lambda ~ Beta(alpha, alpha); the box covers 1 - lambda of the image"),),
           "paste a box from a random partner; targets weighted by pixel share",
           "Yun et al. 2019", soft=True, inplace=True),
)}

_INT = re.compile(r"^[+-]?\d+$")
_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_RANGE = re.compile(rf"^({_NUM})-({_NUM})$")


def _quote(text: str, limit: int = 60) -> str:
    """``repr`` of user text cut to ``limit`` characters, so an error never echoes a page of input."""
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def _fmt(v: Any) -> str:
    """A value as the grammar writes it, shortest form that reads back to the same value."""
    if isinstance(v, tuple):
        return _fmt(v[0]) if v[0] == v[1] else f"{_fmt(v[0])}-{_fmt(v[1])}"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    return str(v)


def _convert(op: OpSpec, param: Param, raw: str, token: str) -> Any:
    """Read one argument, or raise the error that names the op and what it received."""
    def fail() -> CnnlabError:
        return CnnlabError(f"{op.name} {param.name} must be {param.accepts}; received {_quote(raw)} in {_quote(token)}")

    text = raw.strip().lower()
    if len(text) > 40:  # no accepted value is this long (and int() refuses 4,300+ digits)
        raise fail()
    if param.kind == "int":
        if not _INT.match(text):
            raise fail()
        value: Any = int(text)
    elif param.kind in ("float", "fill"):
        if param.kind == "fill" and text == "random":
            value = "random"
        else:
            try:
                value = float(text)
            except ValueError:
                raise fail() from None
            if not math.isfinite(value):
                raise fail()
    elif param.kind == "range":
        m = _RANGE.match(text)
        try:
            value = (float(m.group(1)), float(m.group(2))) if m else (float(text),) * 2
        except ValueError:
            raise fail() from None
    else:
        assert param.kind == "choice", param.kind
        if text not in param.choices:
            raise fail()
        value = text
    if not param.valid(value):
        raise fail()
    return value


def _parse_op(token: str, spec: str) -> tuple[OpSpec, dict[str, Any]]:
    name, colon, args = token.partition(":")
    name = name.strip().lower()
    if name not in OPS:
        if re.match(r"[\d.+-]", name):  # "affine:15,10,0.1" split at the commas
            raise CnnlabError(f"augmentation arguments are separated by '/', not ','; received {_quote(spec)} "
                              f"(e.g. affine:15/10/0.1)")
        raise unknown_name("augmentation", name[:60], OPS)
    op = OPS[name]
    values = {p.name: p.default for p in op.params}
    if not colon:
        return op, values
    parts = args.split("/")
    if any(not a.strip() for a in parts):
        raise CnnlabError(f"{name} has an empty argument; received {_quote(token)} "
                          f"(write {name}:{'/'.join(p.name.upper() for p in op.params)})")
    by_name = {p.name: p for p in op.params}
    seen: set[str] = set()
    for i, arg in enumerate(parts):
        key, eq, raw = arg.partition("=")
        if eq:
            key = key.strip().lower()
            if key not in by_name:
                raise unknown_name(f"{name} parameter", key[:60], by_name)
            param = by_name[key]
        else:
            if i >= len(op.params):
                raise CnnlabError(f"{name} takes at most {len(op.params)} argument(s) "
                                  f"({'/'.join(by_name)}); received {_quote(token)}")
            param, raw = op.params[i], arg
        if param.name in seen:
            raise CnnlabError(f"{name} {param.name} is given twice; received {_quote(token)}")
        seen.add(param.name)
        values[param.name] = _convert(op, param, raw, token)
    return op, values


class Pipeline:
    """A sequence of augmentations applied, in order, to whole training batches.

    ``pipeline(x, y, num_classes=K, generator=g)`` takes float images (B, C, H, W) in [0, 1] (before
    normalization) and int64 labels (B,), and returns the augmented images (same shape, dtype and
    device) with the labels, which become float soft targets (B, K) when the pipeline mixes labels
    (``soft_targets``; ``F.cross_entropy`` accepts such probability targets).

    The caller's ``x`` is never modified, unless it gives the batch away with ``inplace_ok=True``
    (a loader that makes a fresh float batch every step). Every batch made inside the pipeline is
    its own, so the ops after the first that can (``OpSpec.inplace``: flip, cutout, erase,
    droppixel, cutmix) write into their input instead of allocating another full batch; the result
    is the same, value for value, as out of place.
    """

    def __init__(self, ops: Sequence[tuple[OpSpec, dict[str, Any]]] = ()) -> None:
        self.ops: tuple[tuple[OpSpec, dict[str, Any]], ...] = tuple((op, dict(v)) for op, v in ops)

    @property
    def soft_targets(self) -> bool:
        return any(op.soft for op, _ in self.ops)

    @property
    def is_identity(self) -> bool:
        return not self.ops

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, num_classes: int, generator: torch.Generator,
                 inplace_ok: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if self.is_identity:
            return x, y
        if x.ndim != 4 or not x.is_floating_point() or len(y) != len(x):
            raise CnnlabError(f"augmentation expects float images (B, C, H, W) and B labels; received "
                              f"{tuple(x.shape)} {x.dtype} images and {len(y)} labels")
        if generator.device.type != x.device.type:
            raise CnnlabError(f"the augmentation generator must live on the images' device {x.device}; "
                              f"received a generator on {generator.device}")
        H, W = x.shape[2:]
        for op, values in self.ops:
            if op.min_side and op.min_side(values) > min(H, W):
                given = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
                raise CnnlabError(f"{op.name} with {given} needs images of at least {op.min_side(values)} pixels "
                                  f"a side; received {H}x{W} images")
        if self.soft_targets and y.ndim == 1:
            if num_classes < 1:
                raise CnnlabError(f"mixing labels needs num_classes >= 1; received num_classes={num_classes}")
            # (B, K) soft targets from here on: one_hot as a scatter into zeros (F.one_hot first scans y
            # for its range, which costs more than the rest); a label outside 0 .. K-1 is still refused.
            y = torch.zeros((len(y), num_classes), device=y.device).scatter_(1, y.view(-1, 1), 1.0)
        # The batch may be written into when the caller gave it away, or once an op has made a new one
        # (never a tensor that autograd tracks, nor one sharing the caller's memory).
        given = x.untyped_storage().data_ptr()
        owned = inplace_ok
        for op, values in self.ops:
            owned = (owned or x.untyped_storage().data_ptr() != given) and not x.requires_grad
            kwargs = dict(values, inplace=True) if owned and op.inplace else values
            if op.soft:
                x, y = op.kernel(x, y, generator, **kwargs)
            else:
                x = op.kernel(x, generator, **kwargs)
        return x, y

    def __str__(self) -> str:
        """The canonical spec: ops joined by ',', arguments by '/'; the first argument is always
        written, so a saved spec does not depend on the defaults, and trailing defaults after it are left out."""
        if self.is_identity:
            return "none"
        out = []
        for op, values in self.ops:
            args = [values[p.name] for p in op.params]
            while len(args) > 1 and args[-1] == op.params[len(args) - 1].default:
                args.pop()
            out.append(op.name + (":" + "/".join(_fmt(a) for a in args) if args else ""))
        return ",".join(out)

    def __repr__(self) -> str:
        return f"Pipeline({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and [(o.name, v) for o, v in self.ops] == [(o.name, v) for o, v in other.ops]

    def __hash__(self) -> int:
        return hash(str(self))


def parse_augment(spec: str) -> Pipeline:
    """Parse a spec such as ``"flip,crop:4,cutout:8"``; ``""`` or ``"none"`` is the identity."""
    if not isinstance(spec, str):
        raise CnnlabError(f"an augmentation spec is a string such as 'flip,crop:4'; received a {type(spec).__name__}")
    text = spec.strip()
    if text.lower() in ("", "none"):
        return Pipeline()
    ops = []
    for token in text.split(","):
        if not token.strip():
            raise CnnlabError(f"an augmentation spec has an empty op (a stray ','); received {_quote(spec)}")
        ops.append(_parse_op(token.strip(), spec))
    return Pipeline(ops)


def describe() -> str:
    """Help text: the grammar, then every op with its parameters and defaults."""
    lines = [
        "Augmentations run on whole training batches, in the order written; evaluation never augments.",
        "Grammar: OP[:ARG/ARG/...] joined by ','; ARG is a value or KEY=VALUE; a range is LO-HI; 'none' for none.",
        "Examples: flip,crop:4,cutout:8   crop:2/reflect,affine:10/5/0.1   rrc:0.35-1,mixup:0.2",
        "",
    ]
    for op in OPS.values():
        sig = f"{op.name}:{'/'.join(p.name.upper() for p in op.params)}"
        lines.append(f"{sig:<38} {op.summary}" + ("  [soft targets]" if op.soft else ""))
        for p in op.params:
            choices = f" ({'|'.join(p.choices)})" if p.choices else ""
            default = "-".join(f"{v:.4g}" for v in p.default) if p.kind == "range" else _fmt(p.default)
            lines.append(f"    {p.name:<11} default {default:<12} {p.help}{choices}")
        lines.append(f"    source: {op.source}")
    return "\n".join(lines)


def contact_sheet(x: torch.Tensor, pipeline: Pipeline, path: str | os.PathLike, *, rows: int = 4, n: int = 12,
                  seed: int = 0, num_classes: int = 10, title: str = "") -> None:
    """Save a PNG grid: the first ``n`` images of ``x`` (uint8 (N, C, H, W)) on the top row, then
    ``rows - 1`` rows of augmented draws of them (one seeded generator, successive draws)."""
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3) or len(x) == 0:
        raise CnnlabError(f"a contact sheet needs uint8 images (N, 1 or 3, H, W); received {tuple(x.shape)} {x.dtype}")
    if rows < 2 or n < 1:
        raise CnnlabError(f"a contact sheet needs rows >= 2 and n >= 1; received rows={rows}, n={n}")
    from matplotlib.figure import Figure  # drawn without pyplot: the global backend is left alone

    images = x[:n].float().div(255)
    labels = torch.zeros(len(images), dtype=torch.int64, device=x.device)
    g = torch.Generator(device=x.device).manual_seed(seed)
    grid = [images] + [pipeline(images, labels, num_classes=num_classes, generator=g)[0] for _ in range(rows - 1)]
    B, C, H, W = images.shape
    tiles = torch.stack(grid).detach().float().cpu().clamp(0, 1)  # (rows, B, C, H, W)
    tiles = F.pad(tiles, (1, 0, 1, 0), value=0.5)  # a one-pixel gray line above and left of each tile
    sheet = tiles.permute(0, 3, 1, 4, 2).reshape(rows * (H + 1), B * (W + 1), C)
    sheet = F.pad(sheet, (0, 0, 0, 1, 0, 1), value=0.5)  # close the grid on the right and bottom
    fig = Figure(figsize=(max(4.0, 0.6 * B), 0.6 * rows + (0.5 if title else 0.2)))
    ax = fig.subplots()
    ax.imshow(sheet.squeeze(2).numpy() if C == 1 else sheet.numpy(), cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([1 + r * (H + 1) + (H - 1) / 2 for r in range(rows)],
                  ["original"] + [f"draw {r}" for r in range(1, rows)])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title or str(pipeline), fontsize=9)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
