"""Timing of the inspection tools on a trained run: the loss landscape (and, with --attacks, FGSM/PGD).

    python benchmarks/bench_inspect.py runs/lenet5-mnist [--grid 7] [--reps 3] [--full] [--attacks]

The loss landscape is timed against the previous implementation, kept below as the baseline
(``_baseline_landscape_2d``: the loader re-read and re-normalized at every point, batches of 1,000
with torch's intra-op threads, the weights rebuilt tensor by tensor). Both run on the same
``--grid`` x ``--grid`` plane over 2,000 training images, in alternating repetitions, so that a
shared, loaded machine slows both alike; the ratio of each pair is printed with its median. Also
printed: the largest difference between the two grids (they compute the same thing), the per-point
cost in wall and CPU seconds, the 21x21 time projected from it, and the CPU seconds of one point
evaluated by one thread (``workers=1``), from which the time on an idle 2-core machine is projected
(441 points x CPU seconds / 2). ``--full`` also times a real 21x21 grid with the new code.
The aim: a 21x21 grid for LeNet-5 on 2,000 images in under a minute.

Measured on the shared 2-core machine (Xeon, AVX-512; load average 10-12, torch 2.13 CPU),
``python benchmarks/bench_inspect.py RUN --grid 7 --reps 3`` with a 3-epoch LeNet-5 MNIST run:
baseline 0.714 s wall / 0.306 s CPU per point, new 0.189 s wall / 0.088 s CPU per point: 3.8x
wall (2.7-4.1x over the 3 pairs), 3.5x CPU; largest loss difference 4.9e-07 (relative 1.3e-07).
One point by one thread: 0.079 s CPU, i.e. about 17 s for 21x21 on two idle cores (35 s on one).
A real `cnnlab inspect landscape RUN --grid 21 --subset 2000` under the same load: 97.7 s for
the grid, 104 s wall and 42 s user CPU for the whole command (before: 486 s wall, 132 s user).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cnnlab import data, inspect  # noqa: E402
from cnnlab.inspect.landscape import _Subset, filter_normalized_direction  # noqa: E402
from cnnlab.train import load_model  # noqa: E402


# --- the previous implementation, kept as the baseline -------------------------------------------

@torch.no_grad()
def _baseline_evaluate(model, loader):
    total, correct, n = 0.0, 0, 0
    for x, y in loader:
        out = model(x)
        total += float(nn.functional.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        n += len(y)
    return total / n, correct / n


@torch.no_grad()
def _baseline_landscape_2d(model, loader, dirs, grid):
    params = dict(model.named_parameters())
    saved = {k: p.detach().clone() for k, p in params.items()}
    half = grid // 2
    coords = (torch.arange(grid, dtype=torch.float64) - half) / half
    loss = torch.empty(grid, grid, dtype=torch.float64)
    acc = torch.empty(grid, grid, dtype=torch.float64)
    was_training = model.training
    model.eval()
    for i, a in enumerate(coords.tolist()):
        for j, b in enumerate(coords.tolist()):
            for k, p in params.items():
                value = saved[k].to(p.device, p.dtype).clone()
                for d, c in zip(dirs, [a, b]):
                    value.add_(d[k].to(p.device, p.dtype), alpha=c)
                p.copy_(value)
            loss[i, j], acc[i, j] = _baseline_evaluate(model, loader)
    for k, p in params.items():
        p.copy_(saved[k])
    model.train(was_training)
    return loss, acc


# --- the measurements ----------------------------------------------------------------------------

def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - t0, time.process_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", nargs="?", default="runs/lenet5-mnist")
    ap.add_argument("--grid", type=int, default=7, help="odd points per side of the compared grids (default 7)")
    ap.add_argument("--reps", type=int, default=3, help="alternating repetitions (default 3)")
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--full", action="store_true", help="also time a real 21x21 grid (new code)")
    ap.add_argument("--attacks", action="store_true", help="also time FGSM and PGD-40 on 500 test images")
    args = ap.parse_args()

    model, state = load_model(args.run)
    ds = data.load_dataset(state["dataset"]["name"])
    idx = torch.randperm(len(ds.train_y), generator=torch.Generator().manual_seed(0))[:args.subset]
    loader = data.BatchLoader(ds.train_x[idx], ds.train_y[idx], batch_size=1000, mean=ds.mean, std=ds.std,
                              shuffle=False)  # as `cnnlab inspect landscape` builds it (--batch-size 1000)
    g = torch.Generator().manual_seed(0)
    dirs = [filter_normalized_direction(model, generator=g) for _ in range(2)]
    points = args.grid ** 2
    print(f"{state['config']['model']}, {len(idx):,} images, {args.grid}x{args.grid} grid, torch threads "
          f"{torch.get_num_threads()}")

    old_w, old_c, new_w, new_c, ratios = [], [], [], [], []
    for rep in range(args.reps):
        (old_loss, _), w0, c0 = _timed(lambda: _baseline_landscape_2d(model, loader, dirs, args.grid))
        land, w1, c1 = _timed(lambda: inspect.landscape_2d(model, loader, tuple(dirs), args.grid, 1.0))
        old_w.append(w0), old_c.append(c0), new_w.append(w1), new_c.append(c1), ratios.append(w0 / w1)
        print(f"rep {rep}: baseline {w0:6.1f} s wall {c0:6.1f} s CPU | new {w1:5.1f} s wall {c1:5.1f} s CPU | "
              f"ratio {w0 / w1:.1f}x wall, {c0 / c1:.1f}x CPU")
    diff = float((old_loss - land.loss).abs().max())
    rel = float(((old_loss - land.loss).abs() / old_loss.abs()).max())
    print(f"largest |baseline - new| loss on the grid: {diff:.2e} (relative {rel:.2e})")
    ow, nw = statistics.median(old_w) / points, statistics.median(new_w) / points
    oc, nc = statistics.median(old_c) / points, statistics.median(new_c) / points
    print(f"median ratio {statistics.median(ratios):.1f}x wall ({min(ratios):.1f}-{max(ratios):.1f}); "
          f"CPU ratio {oc / nc:.1f}x")
    print(f"per point: baseline {ow:.3f} s wall {oc:.3f} s CPU; new {nw:.3f} s wall {nc:.3f} s CPU")
    print(f"21x21 projected here (441 points): baseline {441 * ow:.0f} s, new {441 * nw:.0f} s")

    with _Subset(loader, workers=1) as subset:
        model.eval()
        subset.evaluate(model)
        one = []
        for _ in range(5):
            _, _, c = _timed(lambda: subset.evaluate(model))
            one.append(c)
    single = min(one)
    print(f"one point by one thread: {single:.3f} s CPU (best of 5) -> 21x21 on an idle 2-core machine "
          f"about {441 * single / 2:.0f} s (one core: {441 * single:.0f} s)")

    if args.full:
        land, w, c = _timed(lambda: inspect.landscape_2d(model, loader, tuple(dirs), 21, 1.0))
        print(f"21x21 measured (new): {w:.1f} s wall, {c:.1f} s CPU")

    if args.attacks:
        x, y = ds.test_x[:500].float() / 255, ds.test_y[:500]
        for method, steps in (("fgsm", 1), ("pgd", 40)):
            t0 = time.perf_counter()
            inspect.robustness_curve(model, x, y, [0.3], method=method, steps=steps, mean=ds.mean, std=ds.std)
            print(f"{method}{'-40' if steps > 1 else ''}: {(time.perf_counter() - t0) / 500 * 1000:.2f} ms per image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
