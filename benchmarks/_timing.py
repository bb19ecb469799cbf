"""Shared by the benchmarks: alternating repetitions, medians with min/max, a matmul ceiling, FLOPs.

A busy machine slows whatever runs at the moment: every benchmark runs its contenders one after
the other within each repetition (a, b, c, a, b, c, ...), so that load hits all alike, and reports
ratios of medians measured in the same run, never absolute times alone.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def alternate(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each contender once per repetition, in turn; each returns its own measured seconds."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            times[name].append(fn())
    return times


def summary(xs: list[float], unit: str = "s") -> str:
    return f"median {statistics.median(xs):7.3f} {unit} (min {min(xs):.3f}, max {max(xs):.3f}, n={len(xs)})"


def ratio_line(name: str, base: list[float], other: list[float], target: str = "") -> str:
    r = statistics.median(base) / statistics.median(other)
    return f"{name}: {r:.2f}x{'  ' + target if target else ''}"


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """The best GFLOP/s of an n x n float32 matmul: the ceiling a CNN's kernels could approach."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def training_flops_per_image(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Multiply-adds x 2 of the convs and linears in one forward pass, x 3 for forward + backward
    (the backward computes two products of the forward's size: input and weight gradients)."""
    flops = 0.0

    def hook(m, args, out):
        nonlocal flops
        if isinstance(m, nn.Conv2d):
            flops += 2 * out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            flops += 2 * out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in handles:
        h.remove()
    return 3 * flops


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        x += 1


class BusyLoops:
    """``with BusyLoops(2):`` runs two processes that spin on a core each: a laptop with other work."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.stop = mp.Event()
        self.procs: list[mp.Process] = []

    def __enter__(self) -> BusyLoops:
        self.procs = [mp.Process(target=_spin, args=(self.stop,), daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()


def machine_line() -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
            f"(affinity {len(os.sched_getaffinity(0))}), load average {load}")


def plain_epoch(model: nn.Module, opt: torch.optim.Optimizer, loader, batches: int | None = None) -> float:
    """Seconds for one plain training epoch over ``loader`` (a ``cnnlab.data.BatchLoader``):
    cross-entropy, backward, step; with ``batches``, that many batches timed and scaled to an epoch."""
    model.train()
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if batches is not None and i == batches:
            break
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    if loader.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return seconds if batches is None else seconds * len(loader) / batches
