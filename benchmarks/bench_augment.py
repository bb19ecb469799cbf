"""Augmentation throughput: one MNIST training epoch of augmentation against one LeNet-5 training epoch.

    python benchmarks/bench_augment.py [--repeats 3] [--threads N] [--spec flip,crop:2 --spec ...]
    python benchmarks/bench_augment.py --per-op [--threads 1]   # where the time goes, op by op

For each spec, the time spent inside ``Pipeline.__call__`` over the 60,000 training images in
batches of 128 (469 batches: float images in [0, 1], each batch drawn by the same permutation
indexing as the loader). The reference is one LeNet-5 training epoch in the same run: a plain loop
over ``cnnlab.data.BatchLoader`` with AdamW and cross-entropy. Repeats interleave the two so that
a busy machine slows both alike. Printed: seconds per epoch (median, min, max over the repeats) and
the ratio of the medians. Target: every pipeline costs less than 5% of a LeNet-5 epoch. ``--quick``
times 60 batches of each (scaled to an epoch). The fresh float batch is given away to the pipeline
(``inplace_ok=True``), as a loader that makes a new float batch every step does; ``--no-inplace``
keeps it (every op then allocates its output, the first op's never being written in place).

``--per-op`` times every op of every spec on its own instead: milliseconds per batch of 128 (the
op's input is the previous ops' output, as in the pipeline), both wall-clock and the CPU time of
the calling thread; with ``--threads 1`` the CPU time hardly moves when other programs share the
machine, which makes it the figure to compare kernels by.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from _timing import plain_epoch

from cnnlab import data, models
from cnnlab.data.augment import parse_augment

DEFAULT_SPECS = ["flip,crop:2", "crop:2,affine:10/10/0.1,cutout:8", "rrc:0.35-1,erase,mixup:0.2"]


def augment_epoch(ds: data.Dataset, spec: str, *, batch_size: int, seed: int, device: torch.device,
                  batches: int | None = None, inplace_ok: bool = True) -> float:
    """Seconds spent augmenting every training image once."""
    pipeline = parse_augment(spec)
    x_all, y_all = ds.train_x.to(device), ds.train_y.to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(seed)).to(device)
    spent = 0.0
    starts = range(0, len(order), batch_size)
    for start in starts if batches is None else starts[:batches]:
        idx = order[start:start + batch_size]
        x, y = x_all[idx].float().div_(255), y_all[idx]
        t0 = time.perf_counter()
        out, _ = pipeline(x, y, num_classes=ds.num_classes, generator=g, inplace_ok=inplace_ok)
        if device.type == "cuda":
            torch.cuda.synchronize()
        spent += time.perf_counter() - t0
        assert out.shape == x.shape
    return spent if batches is None else spent * len(starts) / batches


def per_op(ds: data.Dataset, spec: str, *, batch_size: int, device: torch.device, batches: int,
           repeats: int, inplace_ok: bool = True) -> list[tuple[str, float, float]]:
    """(op, wall ms per batch, thread CPU ms per batch) for each op of ``spec``, best of ``repeats``;
    an op writes in place where the pipeline would let it (``Pipeline.__call__``'s ``inplace_ok``)."""
    pipeline = parse_augment(spec)
    x_all, y_all = ds.train_x[:batches * batch_size].to(device), ds.train_y[:batches * batch_size].to(device)
    wall = [float("inf")] * len(pipeline.ops)
    cpu = [float("inf")] * len(pipeline.ops)
    for r in range(repeats + 1):  # the first pass warms up
        g = torch.Generator(device=device).manual_seed(r)
        spent_wall, spent_cpu = [0.0] * len(pipeline.ops), [0.0] * len(pipeline.ops)
        for start in range(0, len(x_all), batch_size):
            x, y = x_all[start:start + batch_size].float().div_(255), y_all[start:start + batch_size]
            if pipeline.soft_targets:
                y = F.one_hot(y, ds.num_classes).float()
            for i, (op, values) in enumerate(pipeline.ops):
                if op.inplace and (inplace_ok or i > 0):
                    values = dict(values, inplace=True)
                t0, c0 = time.perf_counter(), time.thread_time()
                if op.soft:
                    x, y = op.kernel(x, y, g, **values)
                else:
                    x = op.kernel(x, g, **values)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                spent_wall[i] += time.perf_counter() - t0
                spent_cpu[i] += time.thread_time() - c0
        if r:
            wall = [min(a, b) for a, b in zip(wall, spent_wall)]
            cpu = [min(a, b) for a, b in zip(cpu, spent_cpu)]
    n = len(x_all) // batch_size
    return [(str(type(pipeline)([o])), 1e3 * w / n, 1e3 * c / n) for o, w, c in zip(pipeline.ops, wall, cpu)]


def summary(xs: list[float]) -> str:
    return f"median {statistics.median(xs):6.2f} s (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="epochs of each measurement")
    p.add_argument("--spec", action="append", help=f"augmentation spec (repeatable; default {DEFAULT_SPECS})")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="60 batches per epoch, scaled to an epoch")
    p.add_argument("--per-op", action="store_true", help="time each op of each spec, in ms per batch")
    p.add_argument("--no-inplace", action="store_true",
                   help="keep the caller's batch (inplace_ok=False): the first op never writes in place")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = args.spec or DEFAULT_SPECS
    device = torch.device(args.device)
    ds = data.load_dataset("mnist")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"{os.cpu_count()} CPUs, load average {load} (a busy machine: expect noise)")
    print(f"MNIST: {len(ds.train_x)} training images in batches of {args.batch_size}")
    if args.per_op:
        print(f"{'op':<36} {'wall ms/batch':>14} {'CPU ms/batch':>13}   (best of {args.repeats}, 40 batches)")
        for s in specs:
            rows = per_op(ds, s, batch_size=args.batch_size, device=device, batches=40, repeats=args.repeats,
                          inplace_ok=not args.no_inplace)
            for name, wall, cpu in rows:
                print(f"{name:<36} {wall:14.3f} {cpu:13.3f}")
            print(f"{'= ' + s:<36} {sum(r[1] for r in rows):14.3f} {sum(r[2] for r in rows):13.3f}")
        return

    torch.manual_seed(0)
    model = models.create("lenet5").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = data.BatchLoader(ds.train_x, ds.train_y, batch_size=args.batch_size, mean=ds.mean, std=ds.std,
                              seed=0, device=device)
    train_s: list[float] = []
    aug_s: dict[str, list[float]] = {s: [] for s in specs}
    for r in range(args.repeats):
        loader.set_epoch(r)
        batches = 60 if args.quick else None
        train_s.append(plain_epoch(model, opt, loader, batches))
        for s in specs:
            aug_s[s].append(augment_epoch(ds, s, batch_size=args.batch_size, seed=r, device=device, batches=batches,
                                          inplace_ok=not args.no_inplace))

    base = statistics.median(train_s)
    print(f"{'LeNet-5 training epoch':<40} {summary(train_s)}")
    for s in specs:
        ratio = statistics.median(aug_s[s]) / base
        verdict = "meets" if ratio < 0.05 else "misses"
        print(f"{'augment ' + s:<40} {summary(aug_s[s])}  = {100 * ratio:5.1f}% of the LeNet-5 epoch "
              f"({verdict} the < 5% target)")


if __name__ == "__main__":
    main()
