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

The loss is evaluated on whatever ``loader`` yields (read once and kept: the same images at every
point) with the model in eval mode, so BatchNorm uses its running statistics. The model's weights
and mode are restored afterwards. Cost: (points) × (images in the loader) × (one forward pass),
i.e. grid² × subset × forward for the plane; nothing else is repeated per point but setting the
weights in place. On the CPU the forward passes run in chunks of 256 images, one thread per
chunk and as many chunks at once as torch has threads (see ``_Subset``): for LeNet-5 on 2,000
MNIST images that is about 0.08 CPU-seconds per point, so a 21×21 plane takes about 20 s on two
idle cores.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
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


_CPU_CHUNK = 256  # images per forward on the CPU: LeNet-5's first feature maps stay in the L2 cache
_KEEP_LIMIT = 1 << 30  # bytes of images read into memory once; a larger loader is re-read at every point


class _Subset:
    """The loader's images read ONCE and evaluated in chunks: the same data at every point.

    On the CPU the images are cut into chunks of ``_CPU_CHUNK`` (or the loader's batch size if that
    is smaller: the caller's bound on memory) and the chunks are shared among ``workers`` threads
    (default: torch's thread count) that each run single-threaded forward passes of the same model
    in eval mode; torch's intra-op thread count is 1 meanwhile and restored afterwards. Small
    single-threaded operations are cache-friendly and need no per-operation synchronization (on a
    loaded machine, 2-thread operations on small chunks were ten times slower than one thread).
    The model's forward must not change the model (true in eval mode for torch's layers). Memory:
    ``workers`` chunks' activations at once. On other devices the
    loader's own batches are kept (their size is the caller's choice for the device's memory) and
    evaluated one after the other. The loss of a point is the sum of the chunks' summed losses,
    added in a fixed order, divided by the number of images: the result does not depend on
    ``workers`` (bit for bit: the chunks and their single-threaded passes are the same). Use it
    as a context manager (it owns the thread pool and the thread count).
    """

    def __init__(self, loader: Iterable, loss_fn: LossFn | None = None, *, workers: int | None = None) -> None:
        if workers is not None and not (isinstance(workers, int) and workers >= 1):
            raise CnnlabError(f"workers is a number of threads, at least 1; received {str(workers)[:40]!r}")
        self.loss_fn = loss_fn or _sum_ce
        self.loader = loader
        self.chunks: list[tuple[Tensor, Tensor]] | None = []
        size = 0
        for x, y in loader:
            self.chunks.append((x, y))
            size += x.nelement() * x.element_size()
            if size > _KEEP_LIMIT:
                self.chunks = None  # too large to keep: stream the loader at every point
                break
        if self.chunks is not None:
            self.n = sum(len(y) for _, y in self.chunks)
            if self.n == 0:
                raise CnnlabError("the loader yielded no images to evaluate the loss on")
            cpu = all(x.device.type == "cpu" for x, _ in self.chunks)
            if cpu and len({tuple(x.shape[1:]) for x, _ in self.chunks}) == 1 and \
                    all(isinstance(y, Tensor) and y.ndim >= 1 for _, y in self.chunks):
                step = min(_CPU_CHUNK, max(len(y) for _, y in self.chunks))  # never more than the loader's
                xs = torch.cat([x for x, _ in self.chunks])
                ys = torch.cat([y for _, y in self.chunks])
                self.chunks = list(zip(xs.split(step), ys.split(step)))
            self.cpu = cpu
            self.workers = min(workers or torch.get_num_threads(), len(self.chunks)) if cpu else 1
        else:
            self.cpu, self.workers = False, 1
        self.pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> _Subset:
        if self.cpu:  # single-threaded forwards: small operations spread over threads wait on each other
            self.threads = torch.get_num_threads()
            torch.set_num_threads(1)
            if self.workers > 1:
                self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cnnlab-landscape")
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        if self.cpu:
            torch.set_num_threads(self.threads)

    def _chunk(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, int]:
        with torch.no_grad():  # grad mode is per thread: set it in the worker
            out = model(x)
            loss = float(self.loss_fn(out, y))
            correct = int((out.argmax(1) == y).sum()) if out.ndim == 2 and y.ndim == 1 else 0
        return loss, correct

    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        """(mean loss, accuracy) of ``model`` on the subset, in the model's current mode."""
        if self.chunks is None:
            pairs, n = [], 0
            for x, y in self.loader:
                pairs.append(self._chunk(model, x, y))
                n += len(y)
            if n == 0:
                raise CnnlabError("the loader yielded no images to evaluate the loss on")
        else:
            n = self.n
            if self.pool is not None:
                pairs = list(self.pool.map(lambda c: self._chunk(model, *c), self.chunks))
            else:
                pairs = [self._chunk(model, x, y) for x, y in self.chunks]
        total = 0.0
        for loss, _ in pairs:  # a fixed order of summation, whatever thread finished first
            total += loss
        return total / n, sum(c for _, c in pairs) / n


def evaluate_loss(model: nn.Module, loader: Iterable, loss_fn: LossFn | None = None, *,
                  workers: int | None = None) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` over ``loader``'s batches, in the model's current mode
    (evaluated as one landscape point is: see ``_Subset``)."""
    with _Subset(loader, loss_fn, workers=workers) as subset:
        return subset.evaluate(model)


class _Weights:
    """Set the model's parameters to base + Σ c_k d_k in place; restore the originals and the mode on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        named = list(model.named_parameters())
        self.names = [k for k, _ in named]
        self.params = [p for _, p in named]
        self.saved = [p.detach().clone() for p in self.params]
        self.saved_buffers = {k: b.detach().clone() for k, b in model.named_buffers()}

    def __enter__(self) -> _Weights:
        self.was_training = self.model.training
        self.model.eval()
        return self

    def aligned(self, direction: dict[str, Tensor]) -> list[Tensor]:
        """A direction as a list matching the parameters, on their device and dtype (done once)."""
        return [direction[k].to(p.device, p.dtype) for k, p in zip(self.names, self.params)]

    @torch.no_grad()
    def set(self, directions: list[list[Tensor]], coeffs: list[float]) -> None:
        """θ = θ* + Σ c_k d_k, with the same float operations, in the same order, as
        ``θ*.clone().add_(d_1, alpha=c_1).add_(d_2, alpha=c_2)``."""
        if not self.params:
            return
        torch._foreach_copy_(self.params, self.saved)
        for d, c in zip(directions, coeffs):
            torch._foreach_add_(self.params, d, alpha=c)

    @torch.no_grad()
    def set_state(self, state: dict[str, Tensor]) -> None:
        for k, t in self.model.state_dict(keep_vars=True).items():
            if k in state and t.is_floating_point():
                t.copy_(state[k].to(t.device, t.dtype))

    @torch.no_grad()
    def __exit__(self, *exc) -> None:
        for p, s in zip(self.params, self.saved):
            p.copy_(s)
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
                 loss_fn: LossFn | None = None, progress: Progress | None = None,
                 workers: int | None = None) -> Landscape:
    """The loss and accuracy on a ``grid`` × ``grid`` plane of half-width ``span`` centred at the
    model's weights. ``directions="filter"`` draws two filter-normalized directions (from
    ``generator``, else the global RNG); or pass two direction dicts. ``loss_fn(out, y)`` returns
    the summed loss of a batch (default: cross-entropy). ``progress(1)`` after each point.

    ``loader`` is read once; on the CPU its images are evaluated in chunks of 256 by ``workers``
    threads (default ``torch.get_num_threads()``), each single-threaded: torch's (process-wide)
    intra-op thread count is 1 during the call and restored afterwards; see ``_Subset``. The
    weights of each point are set in place."""
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
    with _Weights(model) as w, _Subset(loader, loss_fn, workers=workers) as subset:
        d = [w.aligned(direction) for direction in dirs]
        for i, a in enumerate(coords.tolist()):
            for j, b in enumerate(coords.tolist()):
                w.set(d, [a, b])
                loss[i, j], acc[i, j] = subset.evaluate(model)
                if progress is not None:
                    progress(1)
    return Landscape(coords, coords.clone(), loss, acc, time.perf_counter() - start)


def landscape_1d(model: nn.Module, theta_a: dict[str, Tensor], theta_b: dict[str, Tensor], loader: Iterable,
                 steps: int = 25, *, lo: float = 0.0, hi: float = 1.0, loss_fn: LossFn | None = None,
                 progress: Progress | None = None, workers: int | None = None) -> Line:
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
    with _Weights(model) as w, _Subset(loader, loss_fn, workers=workers) as subset:
        for i, a in enumerate(alphas.tolist()):
            w.set_state({k: torch.lerp(theta_a[k].double(), theta_b[k].double(), a) for k in keys})
            loss[i], acc[i] = subset.evaluate(model)
            if progress is not None:
                progress(1)
    return Line(alphas, loss, acc, time.perf_counter() - start)


def direction_line(model: nn.Module, direction: dict[str, Tensor], loader: Iterable, steps: int = 25,
                   span: float = 1.0, **kw) -> Line:
    """The loss along θ* + α d for α in [-span, span] (a 1-d slice through the trained weights)."""
    base = {k: p.detach().clone() for k, p in model.named_parameters()}
    end = {k: base[k] + direction[k].to(base[k]) for k in base}
    return landscape_1d(model, base, end, loader, steps, lo=-span, hi=span, **kw)
