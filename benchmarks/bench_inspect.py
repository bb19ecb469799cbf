"""Timing of the inspection tools on a trained run: the loss landscape and the attacks.

    python benchmarks/bench_inspect.py runs/lenet5-mnist

Prints the seconds for one loss evaluation on 2,000 training images (the cost of one landscape
point), the projected time of a 21x21 grid (441 points), the measured time of a small grid, and the
seconds per image of FGSM and PGD-40. The issue's aim: a 21x21 grid for LeNet-5 on 2,000 images
in under a minute.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cnnlab import data, inspect  # noqa: E402
from cnnlab.inspect.landscape import evaluate_loss  # noqa: E402
from cnnlab.train import load_model  # noqa: E402


def main() -> int:
    run = sys.argv[1] if len(sys.argv) > 1 else "runs/lenet5-mnist"
    model, state = load_model(run)
    ds = data.load_dataset(state["dataset"]["name"])
    idx = torch.randperm(len(ds.train_y), generator=torch.Generator().manual_seed(0))[:2000]
    loader = data.BatchLoader(ds.train_x[idx], ds.train_y[idx], batch_size=1000, mean=ds.mean, std=ds.std,
                              shuffle=False)
    evaluate_loss(model, loader)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(5):
        evaluate_loss(model, loader)
    point, point_cpu = (time.perf_counter() - t0) / 5, (time.process_time() - c0) / 5
    print(f"one point (2,000 images): {point:.3f} s wall, {point_cpu:.3f} s CPU; 21x21 projected {441 * point:.0f} s")
    t0 = time.perf_counter()
    land = inspect.landscape_2d(model, loader, grid=5, generator=torch.Generator().manual_seed(0))
    print(f"5x5 grid measured: {time.perf_counter() - t0:.1f} s ({land.seconds / 25:.3f} s per point)")
    x, y = ds.test_x[:500].float() / 255, ds.test_y[:500]
    for method, steps in (("fgsm", 1), ("pgd", 40)):
        t0 = time.perf_counter()
        inspect.robustness_curve(model, x, y, [0.3], method=method, steps=steps, mean=ds.mean, std=ds.std)
        print(f"{method}{'-40' if steps > 1 else ''}: {(time.perf_counter() - t0) / 500 * 1000:.2f} ms per image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
