"""The manual backend against torch's built-in layers: LeNet-5 on MNIST, same recipe, one run.

    python benchmarks/bench_manual.py [--epochs 3]

Trains the default recipe with ``backend="torch"`` and then ``backend="manual"`` (cnnlab.manual's
hand-derived backward passes) and prints per-epoch training time (median, min, max), the ratio
manual / built-in (target: no worse than 2x) and both test accuracies (target for manual: >= 98.5%).
A per-layer profile of one training step follows, to show where the time goes.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
import torch.nn.functional as F

from cnnlab import data, models
from cnnlab.train import TrainConfig, fit
from cnnlab.train.metrics import read_metrics_csv


def run(ds: data.Dataset, backend: str, epochs: int) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as out:
        s = fit(TrainConfig(backend=backend, epochs=epochs), out, dataset=ds)
        return [r["train_seconds"] for r in read_metrics_csv(f"{out}/metrics.csv")], s["test_top1"]


def profile(backend: str) -> str:
    model = models.create("lenet5", backend=backend)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    for _ in range(3):
        F.cross_entropy(model(x), y).backward()
    with torch.profiler.profile() as prof:
        for _ in range(10):
            F.cross_entropy(model(x), y).backward()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="also print a per-op profile of each backend")
    args = p.parse_args()
    ds = data.load_dataset("mnist")
    torch_t, torch_acc = run(ds, "torch", args.epochs)
    manual_t, manual_acc = run(ds, "manual", args.epochs)
    fmt = lambda xs: f"median {statistics.median(xs):.2f} s (min {min(xs):.2f}, max {max(xs):.2f})"
    print(f"built-in: per epoch {fmt(torch_t)}, test top-1 {torch_acc:.2%}")
    print(f"manual:   per epoch {fmt(manual_t)}, test top-1 {manual_acc:.2%}")
    print(f"ratio manual / built-in (median epoch): {statistics.median(manual_t) / statistics.median(torch_t):.2f}x "
          f"(target <= 2x); manual accuracy target >= 98.5%")
    if args.profile:
        for backend in ("torch", "manual"):
            print(f"\n--- {backend}: where one training step's time goes ---\n{profile(backend)}")


if __name__ == "__main__":
    main()
