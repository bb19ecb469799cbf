"""The loss landscape (Li et al. 2018, "Visualizing the loss landscape of neural nets"; Saremi 2024
shows their ResNet-56 surfaces with and without skips): the loss along a line between two weight
vectors (Goodfellow et al. 2015) and on a plane through the trained weights spanned by two random,
filter-normalized directions.

    >>> line = landscape_1d(model, init_state, trained_state, loader, steps=25)
    >>> grid = landscape_2d(model, loader, grid=21, span=1.0)          # grid.loss: (21, 21)

Filter normalization: a random Gaussian direction d gets, for every filter i of every weight
(dimension 0: a conv's output channel, a linear layer's output unit), d_i ← d_i · ||w_i|| / ||d_i||,
so that a step of size 1 changes each filter by its own norm; biases and BatchNorm parameters
(every parameter with at most one dimension) get a zero direction, as in Li et al.

The loss is evaluated on whatever ``loader`` yields (a fixed subset: the same batches at every
point) with the model in eval mode, so BatchNorm uses its running statistics. The model's weights
and mode are restored afterwards. Cost: (points) × (images in the loader) × (one forward pass),
i.e. grid² × subset × forward for the plane.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnnlab.errors import CnnlabError

LossFn = Callable[[Tensor, Tensor], Tensor]  # (output, y) -> summed loss of the batch
Progress = Callable[[int], None]


@dataclass
class Landscape:
    """The loss on the plane θ* + α d1 + β d2; ``loss[i, j]`` is at (alphas[i], betas[j])."""

    alphas: Tensor  # (grid,)
    betas: Tensor  # (grid,)
    loss: Tensor  # (grid, grid)
    accuracy: Tensor  # (grid, grid)
    seconds: float = 0.0

    def rows(self) -> list[list[float]]:
        return [[float(a), float(b), float(self.loss[i, j]), float(self.accuracy[i, j])]
                for i, a in enumerate(self.alphas) for j, b in enumerate(self.betas)]


@dataclass
class Line:
    """The loss at θ(α) = (1 - α) θ_a + α θ_b."""

    alphas: Tensor
    loss: Tensor
    accuracy: Tensor
    seconds: float = 0.0


def _sum_ce(output: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(output, y, reduction="sum")


def filter_normalized_direction(model: nn.Module, *, generator: torch.Generator | None = None
                                ) -> dict[str, Tensor]:
    """A random direction in parameter space, one tensor per parameter, filter-normalized."""
    direction = {}
    for name, p in model.named_parameters():
        if p.dim() <= 1:
            direction[name] = torch.zeros_like(p, memory_format=torch.contiguous_format).detach()
            continue
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype, device="cpu").to(p.device)
        w = p.detach().reshape(len(p), -1)
        dn = d.reshape(len(p), -1)
        dn.mul_(w.norm(dim=1, keepdim=True) / (dn.norm(dim=1, keepdim=True) + 1e-10))
        direction[name] = d
    return direction


@torch.no_grad()
def evaluate_loss(model: nn.Module, loader: Iterable, loss_fn: LossFn | None = None) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` over ``loader``'s batches, in the model's current mode."""
    loss_fn = loss_fn or _sum_ce
    total, correct, n = 0.0, 0, 0
    for x, y in loader:
        out = model(x)
        total += float(loss_fn(out, y))
        if out.ndim == 2 and y.ndim == 1:
            correct += int((out.argmax(1) == y).sum())
        n += len(y)
    if n == 0:
        raise CnnlabError("the loader yielded no images to evaluate the loss on")
    return total / n, correct / n


class _Weights:
    """Set the model's parameters to base + Σ c_k d_k; restore the originals and the mode on exit."""

    def __init__(self, model: nn.Module, base: dict[str, Tensor] | None = None,
                 buffers: dict[str, Tensor] | None = None) -> None:
        self.model = model
        self.params = dict(model.named_parameters())
        self.saved = {k: p.detach().clone() for k, p in self.params.items()}
        self.saved_buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
        self.base = base or self.saved

    def __enter__(self) -> _Weights:
        self.was_training = self.model.training
        self.model.eval()
        return self

    @torch.no_grad()
    def set(self, directions: list[dict[str, Tensor]], coeffs: list[float]) -> None:
        for k, p in self.params.items():
            value = self.base[k].to(p.device, p.dtype).clone()
            for d, c in zip(directions, coeffs):
                value.add_(d[k].to(p.device, p.dtype), alpha=c)
            p.copy_(value)

    @torch.no_grad()
    def set_state(self, state: dict[str, Tensor]) -> None:
        for k, t in self.model.state_dict(keep_vars=True).items():
            if k in state and t.is_floating_point():
                t.copy_(state[k].to(t.device, t.dtype))

    @torch.no_grad()
    def __exit__(self, *exc) -> None:
        for k, p in self.params.items():
            p.copy_(self.saved[k])
        for k, b in self.model.named_buffers():
            b.copy_(self.saved_buffers[k])
        self.model.train(self.was_training)


def _check_directions(model: nn.Module, directions: list[dict[str, Tensor]]) -> None:
    for d in directions:
        for name, p in model.named_parameters():
            if name not in d or d[name].shape != p.shape:
                raise CnnlabError(f"a direction must hold a tensor of the parameter's shape for every parameter; "
                                  f"{name!r} is missing or has the wrong shape")


def landscape_2d(model: nn.Module, loader: Iterable, directions: str | tuple[dict, dict] = "filter",
                 grid: int = 21, span: float = 1.0, *, generator: torch.Generator | None = None,
                 loss_fn: LossFn | None = None, progress: Progress | None = None) -> Landscape:
    """The loss and accuracy on a ``grid`` × ``grid`` plane of half-width ``span`` centred at the
    model's weights. ``directions="filter"`` draws two filter-normalized directions (from
    ``generator``, else the global RNG); or pass two direction dicts. ``loss_fn(out, y)`` returns
    the summed loss of a batch (default: cross-entropy). ``progress(1)`` after each point."""
    if grid < 2:
        raise CnnlabError(f"the grid needs at least 2 points per side; received grid={grid}")
    if not span > 0:
        raise CnnlabError(f"the span must be positive; received span={span}")
    if directions == "filter":
        dirs = [filter_normalized_direction(model, generator=generator) for _ in range(2)]
    elif isinstance(directions, (tuple, list)) and len(directions) == 2:
        dirs = list(directions)
        _check_directions(model, dirs)
    else:
        raise CnnlabError(f"directions is 'filter' or a pair of direction dicts; received {str(directions)[:60]!r}")
    half = grid // 2
    # exact zero at the centre of an odd grid, so the centre is the trained model itself
    if grid % 2:
        coords = span * (torch.arange(grid, dtype=torch.float64) - half) / half
    else:
        coords = torch.linspace(-span, span, grid, dtype=torch.float64)
    loss = torch.empty(grid, grid, dtype=torch.float64)
    acc = torch.empty(grid, grid, dtype=torch.float64)
    start = time.perf_counter()
    with _Weights(model) as w:
        for i, a in enumerate(coords.tolist()):
            for j, b in enumerate(coords.tolist()):
                w.set(dirs, [a, b])
                loss[i, j], acc[i, j] = evaluate_loss(model, loader, loss_fn)
                if progress is not None:
                    progress(1)
    return Landscape(coords, coords.clone(), loss, acc, time.perf_counter() - start)


def landscape_1d(model: nn.Module, theta_a: dict[str, Tensor], theta_b: dict[str, Tensor], loader: Iterable,
                 steps: int = 25, *, lo: float = 0.0, hi: float = 1.0, loss_fn: LossFn | None = None,
                 progress: Progress | None = None) -> Line:
    """The loss along θ(α) = (1 - α) θ_a + α θ_b for ``steps`` values of α in [lo, hi].

    ``theta_a`` and ``theta_b`` are state dicts (parameters, and optionally floating-point
    buffers such as BatchNorm's running statistics, which are interpolated too); entries missing
    from either keep the model's current value.
    """
    if steps < 2:
        raise CnnlabError(f"a line needs at least 2 points; received steps={steps}")
    keys = [k for k, t in model.state_dict().items() if t.is_floating_point() and k in theta_a and k in theta_b]
    for k in keys:
        if theta_a[k].shape != theta_b[k].shape:
            raise CnnlabError(f"the two weight vectors disagree on {k!r}: {tuple(theta_a[k].shape)} vs "
                              f"{tuple(theta_b[k].shape)}")
    alphas = torch.linspace(lo, hi, steps, dtype=torch.float64)
    loss = torch.empty(steps, dtype=torch.float64)
    acc = torch.empty(steps, dtype=torch.float64)
    start = time.perf_counter()
    with _Weights(model) as w:
        for i, a in enumerate(alphas.tolist()):
            w.set_state({k: torch.lerp(theta_a[k].double(), theta_b[k].double(), a) for k in keys})
            loss[i], acc[i] = evaluate_loss(model, loader, loss_fn)
            if progress is not None:
                progress(1)
    return Line(alphas, loss, acc, time.perf_counter() - start)


def direction_line(model: nn.Module, direction: dict[str, Tensor], loader: Iterable, steps: int = 25,
                   span: float = 1.0, **kw) -> Line:
    """The loss along θ* + α d for α in [-span, span] (a 1-d slice through the trained weights)."""
    base = {k: p.detach().clone() for k, p in model.named_parameters()}
    end = {k: base[k] + direction[k].to(base[k]) for k in base}
    return landscape_1d(model, base, end, loader, steps, lo=-span, hi=span, **kw)
