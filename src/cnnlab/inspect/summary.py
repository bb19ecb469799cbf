"""Per-layer summaries (``cnnlab summary``) and the zoo table (``cnnlab zoo``).

    >>> from cnnlab import models
    >>> s = summary(models.create("lenet5"), (1, 28, 28))
    >>> s.total_params, s.params_by_type
    (61706, {'Linear': 59134, 'Conv2d': 2572})
    >>> s.rows[0].name, s.rows[0].output_shape, s.rows[0].receptive_field
    ('features.0', (1, 6, 28, 28), (5, 5))

How the numbers are obtained:

- The model runs once on a ``meta`` tensor (shapes only, nothing computed; see
  ``check.meta_forward``), in eval mode, so a 143M-parameter VGG costs nothing. If the meta
  device cannot run the model, it runs for real on zeros under ``torch.no_grad()``.
- MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2). It counts the
  matrix products (convolution, linear, matmul); elementwise operations, pooling and
  normalization count 0, as in the papers' tables. Each call of a module gets the MACs spent
  inside it minus those of the modules it calls.
- Rows are the calls, in execution order, of the leaf modules and of the modules that own
  parameters or MACs directly; a module called twice gives two rows and its parameters are
  counted at its first call. Modules that never run in eval mode (auxiliary classifiers) are
  listed at the end with no shape, so the rows' parameters add up to ``total_params``.
- Receptive fields follow every tensor: a convolution or pooling layer widens its input's field
  with ``cnnlab.shapes.receptive_field_step`` (padding does not count), every other operation
  passes its inputs' field on. Where branches meet (residual additions, Inception's
  concatenation) the widest field among the inputs of the output's spatial size is kept; inputs
  broadcast from a smaller map (squeeze-and-excitation's channel weights) do not count, so the
  column follows the main path. A map that shrinks by an operation that is not a layer
  (adaptive or global pooling by function, strided slicing) is treated as a window of
  ceil(in / out) with stride in // out; once the spatial layout is gone (flatten, global mean)
  each feature sees the whole map, and later layers keep that field. A field never exceeds the
  input: padding pixels are not input, so each row's field is clipped to the input's size, and
  a single-position output (a fully connected layer, a global pool) whose field covers the
  input is shown as "whole input".
- ``nn.Identity`` computes nothing and gets no row (a ResNet without squeeze-and-excitation
  keeps an ``Identity`` in its place).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from cnnlab import models, shapes
from cnnlab.errors import CnnlabError
from cnnlab.inspect.check import (
    InputSize, check_input_size, format_size, meta_forward, parse_input_size, training_mode, window_of,
)


@dataclass(frozen=True)
class LayerRow:
    """One call of one layer."""

    name: str  # module path in the model, e.g. "features.0"; "" for the model itself
    type: str  # class name, e.g. "Conv2d"
    output_shape: tuple[int, ...] | None  # (B, C, H, W) of the output; None if it never ran
    params: int  # parameters owned by this module (not its children), counted at the first call
    macs: int  # multiply-accumulates of this call, children excluded
    receptive_field: tuple[int, ...] | None  # input pixels one output sees, per spatial dimension


@dataclass(frozen=True)
class Summary:
    """What ``summary(model, input_size)`` found; ``str(s)`` renders the table."""

    input_size: tuple[int, ...]  # (C, H, W) of one example
    batch_size: int
    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    macs: int  # for the whole batch
    params_by_type: dict[str, int]  # e.g. {"Linear": 58631144, "Conv2d": 2469696}, largest first
    output_shape: tuple[int, ...] = field(default=())

    def field_text(self, row: LayerRow) -> str:
        """The receptive-field cell: ``"5x5"``, ``"whole input"``, or ``"-"``."""
        if row.receptive_field is None:
            return "-"
        spatial = tuple(self.input_size[1:])
        single = row.output_shape is not None and all(n == 1 for n in row.output_shape[2:])
        if single and tuple(row.receptive_field) == spatial:
            return "whole input"
        return format_size(row.receptive_field)

    def format(self) -> str:
        headers = ["Layer", "Type", "Output shape", "Params", "MACs", "Receptive field"]
        table = [
            [row.name or "(model)", row.type,
             format_size(row.output_shape) if row.output_shape is not None else "(not run)",
             row.params, row.macs, self.field_text(row)]
            for row in self.rows
        ]
        total = max(self.total_params, 1)
        split = ", ".join(f"{kind} {count:,} ({100 * count / total:.0f}%)"
                          for kind, count in self.params_by_type.items())
        lines = [
            format_table(table, headers),
            f"Input: {format_size((self.batch_size, *self.input_size))}",
            f"Total params: {self.total_params:,} (trainable {self.trainable_params:,})",
            f"Params by layer type: {split}",
            f"MACs: {self.macs:,} ({self.macs / 1e9:.3g} G) for a batch of {self.batch_size}",
        ]
        return "\n".join(lines)

    __str__ = format


def format_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """A plain-text table: integers with thousands separators and right-aligned, text left-aligned.

    >>> print(format_table([["conv", 456], ["fc", 10]], ["layer", "params"]))
    layer  params
    -----  ------
    conv      456
    fc         10
    """
    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    numeric = [all(isinstance(row[i], int) or row[i] is None for row in rows) and bool(rows)
               for i in range(len(headers))]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


# ---------------------------------------------------------------------------------------------
# Receptive fields, carried by every tensor of one forward pass


@dataclass(frozen=True)
class _Field:
    rf: tuple[int, ...]  # receptive field per spatial dimension, in input pixels
    jump: tuple[int, ...]  # input pixels between neighbouring positions of this map


def _tensors(tree: object) -> Iterator[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (tuple, list)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


class _FieldTracker(TorchFunctionMode):
    """Annotates every tensor computed from the input with its receptive field (rules in the
    module docstring). Tensors are kept alive for the pass, so that their ids stay unique."""

    def __init__(self, ndim: int) -> None:
        super().__init__()
        self.ndim = ndim
        self.fields: dict[int, _Field] = {}
        self.alive: list[torch.Tensor] = []

    def set(self, tensor: torch.Tensor, value: _Field) -> None:
        self.fields[id(tensor)] = value
        self.alive.append(tensor)

    def get(self, tensor: object) -> _Field | None:
        return self.fields.get(id(tensor)) if isinstance(tensor, torch.Tensor) else None

    def spatial(self, t: torch.Tensor) -> tuple[int, ...] | None:
        return tuple(t.shape[-self.ndim:]) if self.ndim and t.dim() >= self.ndim + 2 else None

    def widen(self, f: _Field, size: Sequence[int], out: Sequence[int]) -> _Field:
        """A map of ``size`` turned into one of ``out`` by something that is not a layer."""
        rf, jump = [], []
        for r, j, s, o in zip(f.rf, f.jump, size, out):
            if o < s:  # a window of ceil(s / o), stride s // o (exact for adaptive pooling)
                r, j = shapes.receptive_field_step(r, j, math.ceil(s / o), s // o)
            elif o > s:  # upsampling: neighbours move closer; padding keeps the jump
                j = max(1, j * s // o)
            rf.append(r)
            jump.append(j)
        return _Field(tuple(rf), tuple(jump))

    def combine(self, inputs: list[torch.Tensor], out: torch.Tensor) -> _Field:
        out_size = self.spatial(out)
        if out_size is None:  # spatial layout gone: each feature sees the whole map
            fields = [self.widen(self.fields[id(t)], size, (1,) * len(size))
                      if (size := self.spatial(t)) else self.fields[id(t)] for t in inputs]
        elif same := [t for t in inputs if self.spatial(t) == out_size]:
            fields = [self.fields[id(t)] for t in same]
        else:
            fields = [self.widen(self.fields[id(t)], self.spatial(t) or out_size, out_size) for t in inputs]
        return max(fields, key=lambda f: math.prod(f.rf))

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in _tensors((args, kwargs)) if id(t) in self.fields]
        if inputs:
            for t in _tensors(out):
                self.set(t, self.combine(inputs, t))
        return out

    def after_window(self, module: nn.Module, args: tuple, output: object) -> None:
        """Forward hook: a convolution or pooling layer's exact effect on the field."""
        window = window_of(module, self.ndim)
        f = self.get(args[0]) if args else None
        if window is None or f is None or not isinstance(output, torch.Tensor):
            return
        steps = [shapes.receptive_field_step(r, j, k, s, d)
                 for r, j, k, s, d in zip(f.rf, f.jump, window.kernel, window.stride, window.dilation)]
        self.set(output, _Field(tuple(r for r, _ in steps), tuple(j for _, j in steps)))


# ---------------------------------------------------------------------------------------------
# The pass that fills the rows


def _own_params(model: nn.Module) -> dict[nn.Module, list[nn.Parameter]]:
    """Each module's own parameters, read before the pass (``functional_call`` swaps them during it)."""
    return {m: list(m.parameters(recurse=False)) for m in model.modules()}


def _first_tensor(output: object) -> torch.Tensor | None:
    return next(_tensors(output), None)


def _clip(rf: tuple[int, ...], size: tuple[int, ...]) -> tuple[int, ...]:
    """A receptive field in input pixels is at most the input (the rest would be padding)."""
    return tuple(min(r, n) for r, n in zip(rf, size))


def _trace(model: nn.Module, x: torch.Tensor, ndim: int, on_meta: bool) -> tuple[list[LayerRow], int, tuple]:
    names = {m: name for name, m in model.named_modules()}
    owned = _own_params(model)
    counter = FlopCounterMode(display=False)
    tracker = _FieldTracker(ndim)
    tracker.set(x, _Field((1,) * ndim, (1,) * ndim))
    rows: list[LayerRow | None] = []
    stack: list[list] = []  # [row index, flops at entry, flops of nested calls]
    counted: set[int] = set()

    def enter(module: nn.Module, args: tuple) -> None:
        rows.append(None)
        stack.append([len(rows) - 1, counter.get_total_flops(), 0])

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        index, start, nested = stack.pop()
        total = counter.get_total_flops() - start
        if stack:
            stack[-1][2] += total
        own = [p for p in owned[module] if id(p) not in counted]
        is_leaf = next(module.children(), None) is None
        if not (is_leaf or owned[module] or total > nested) or isinstance(module, nn.Identity):
            return
        counted.update(id(p) for p in own)
        out = _first_tensor(output)
        f = tracker.get(out)
        rows[index] = LayerRow(
            name=names.get(module, "?"), type=type(module).__name__,
            output_shape=tuple(out.shape) if out is not None else None,
            params=sum(p.numel() for p in own), macs=(total - nested) // 2,
            receptive_field=_clip(f.rf, tuple(x.shape[2:])) if f is not None and ndim else None,
        )

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(enter))
        if window_of(module, ndim) is not None:
            handles.append(module.register_forward_hook(tracker.after_window))
        handles.append(module.register_forward_hook(leave))
    try:
        with counter, tracker:
            if on_meta:
                output = meta_forward(model, x)
            else:
                with torch.no_grad():
                    output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    out = _first_tensor(output)
    done = [row for row in rows if row is not None]
    # Modules that never ran (e.g. auxiliary classifiers in eval mode), so the parameters add up.
    for module, name in names.items():
        own = [p for p in owned[module] if id(p) not in counted]
        if own:
            counted.update(id(p) for p in own)
            done.append(LayerRow(name, type(module).__name__, None, sum(p.numel() for p in own), 0, None))
    return done, counter.get_total_flops() // 2, tuple(out.shape) if out is not None else ()


def params_by_type(model: nn.Module) -> dict[str, int]:
    """Parameters per layer class (each module's own, shared ones once), largest first."""
    seen: set[int] = set()
    totals: dict[str, int] = {}
    for module, params in _own_params(model).items():
        own = [p for p in params if id(p) not in seen]
        seen.update(id(p) for p in own)
        if own:
            kind = type(module).__name__
            totals[kind] = totals.get(kind, 0) + sum(p.numel() for p in own)
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def summary(model: nn.Module, input_size: InputSize, *, batch_size: int = 1) -> Summary:
    """Per-layer output shape, parameters, MACs and receptive field of ``model`` on a batch of
    ``batch_size`` inputs of ``input_size`` (C, H, W), or ``"3x224x224"``.

    Raises ``CnnlabError`` (naming the layer) if the input is too small for the model.
    """
    size = parse_input_size(input_size)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CnnlabError(f"batch_size must be a positive integer; received batch_size={batch_size!r}")
    with training_mode(model, False):
        check_input_size(model, size, batch_size=batch_size)
        try:
            rows, macs, out_shape = _trace(model, torch.empty((batch_size, *size), device="meta"),
                                           len(size) - 1, on_meta=True)
        except (NotImplementedError, RuntimeError):
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            x = torch.zeros((batch_size, *size), device=device)
            rows, macs, out_shape = _trace(model, x, len(size) - 1, on_meta=False)
    return Summary(
        input_size=size, batch_size=batch_size, rows=rows,
        total_params=models.count_params(model),
        trainable_params=models.count_params(model, trainable_only=True),
        macs=macs, params_by_type=params_by_type(model), output_shape=out_shape,
    )


def count_macs(model: nn.Module, input_size: InputSize) -> int:
    """Multiply-accumulates of one forward pass in eval mode on one input of ``input_size``,
    counted by ``FlopCounterMode`` on the meta device (for a model built on any device)."""
    size = parse_input_size(input_size)
    counter = FlopCounterMode(display=False)
    with training_mode(model, False), counter:
        meta_forward(model, torch.empty((1, *size), device="meta"))
    return counter.get_total_flops() // 2


# ---------------------------------------------------------------------------------------------
# The zoo


@dataclass(frozen=True)
class ZooRow:
    name: str
    family: str
    year: int
    paper: str
    input_size: tuple[int, ...]  # native (C, H, W)
    params: int  # counted, at the native class count and input, without training-only heads
    published: int | None  # the paper's count, from the registry, without training-only heads
    macs: int | None  # one image at the native input; None if the model cannot run on meta
    aliases: tuple[str, ...] = ()  # other names that ``create`` accepts for this model
    aux_params: int = 0  # counted parameters of heads used only in training (GoogLeNet's auxiliary classifiers)


ZOO_HEADERS = ["Model", "Aliases", "Family", "Year", "Paper", "Input", "Params", "Published", "MACs", "Notes"]


def _training_only_params(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Parameters of the modules that an eval-mode forward pass never calls (auxiliary heads)."""
    called: set[nn.Module] = set()
    handles = [m.register_forward_pre_hook(lambda m, args: called.add(m)) for m in model.modules()]
    try:
        with training_mode(model, False):
            meta_forward(model, torch.empty((1, *input_size), device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    seen = {id(p) for m in called for p in m.parameters(recurse=False)}
    unused = {id(p): p for m in model.modules() if m not in called
              for p in m.parameters(recurse=False) if id(p) not in seen}
    return sum(p.numel() for p in unused.values())


def zoo_table(names: Sequence[str] | None = None) -> list[ZooRow]:
    """One row per registered model (or per name or alias in ``names``), oldest first. Models are
    built on the meta device, so parameters and MACs are counted without allocating or computing.

    ``params`` and ``published`` leave out heads that only training uses, as the papers' tables
    do (GoogLeNet: 6,998,552, its two auxiliary classifiers adding 6,379,728); ``aux_params``
    holds those."""
    rows = []
    for name in names if names is not None else models.names():
        entry = models.info(name)
        kwargs = {"num_classes": entry.num_classes, "in_channels": entry.input_size[0]}
        try:
            with torch.device("meta"):
                model = models.create(name, **kwargs)
        except (NotImplementedError, RuntimeError):
            model = models.create(name, **kwargs)
        try:
            macs = count_macs(model, entry.input_size)
            aux = _training_only_params(model, entry.input_size)
        except (NotImplementedError, RuntimeError):
            macs, aux = None, 0
        published = None if entry.params is None else entry.params - entry.aux_params
        rows.append(ZooRow(entry.name, entry.family, entry.year, entry.paper, entry.input_size,
                           models.count_params(model) - aux, published, macs, entry.aliases, aux))
    return sorted(rows, key=lambda r: (r.year, r.family, r.name))


def _short(text: str, width: int = 36) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_zoo(rows: Sequence[ZooRow]) -> str:
    """The zoo table as text (what ``cnnlab zoo`` prints)."""
    return format_table(
        [[r.name, ", ".join(r.aliases), r.family, str(r.year), _short(r.paper), format_size(r.input_size),
          r.params, r.published, r.macs,
          f"+{r.aux_params:,} in training-only auxiliary heads" if r.aux_params else ""] for r in rows],
        ZOO_HEADERS,
    )

