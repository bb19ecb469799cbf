"""LeNet-5 on MNIST: cnnlab's trainer against the idiomatic PyTorch tutorial loop, in one run.

    python benchmarks/bench_train.py [--epochs-baseline 1] [--repeats 1]

(a) cnnlab: ``cnnlab.train.fit`` with its default recipe (batch 128, Adam/AdamW, one-cycle,
    channels_last, data held as uint8 and batched by permutation indexing).
(b) baseline: a ``DataLoader`` over a ``TensorDataset`` of normalized float images, batch 128,
    ``Adam(lr=1e-3)``, the loop from the PyTorch tutorials.

Both train the same model on the same 60,000 images and are evaluated on the same 10,000.
Printed: seconds per training epoch for each (median, min, max over epochs), their ratio
(baseline / cnnlab; > 1 means cnnlab is faster), the accuracies, and the time the default
``cnnlab train`` recipe needs to reach its final test accuracy.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from cnnlab import data, models
from cnnlab.train import TrainConfig, fit


def baseline(ds: data.Dataset, epochs: int, seed: int = 0) -> tuple[list[float], float]:
    """The idiomatic loop; returns per-epoch training seconds and the final test accuracy."""
    torch.manual_seed(seed)
    mean, std = ds.mean[0], ds.std[0]
    train = TensorDataset((ds.train_x.float() / 255 - mean) / std, ds.train_y)
    test = TensorDataset((ds.test_x.float() / 255 - mean) / std, ds.test_y)
    train_loader = DataLoader(train, batch_size=128, shuffle=True)
    test_loader = DataLoader(test, batch_size=1000)
    model = models.create("lenet5")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        for x, y in train_loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += (model(x).argmax(1) == y).sum().item()
    return times, correct / len(test)


def summary(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.2f} s (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs-baseline", type=int, default=2, help="epochs of the baseline loop")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = data.load_dataset("mnist")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    cfg = TrainConfig()  # the default recipe of `cnnlab train`
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        s = fit(cfg, out, dataset=ds)
        wall = time.perf_counter() - t0
        from cnnlab.train.metrics import read_metrics_csv
        rows = read_metrics_csv(f"{out}/metrics.csv")
    ours = [r["train_seconds"] for r in rows]
    print(f"(a) cnnlab default recipe ({cfg.epochs} epochs, batch {cfg.batch_size}): per epoch {summary(ours)}; "
          f"test top-1 {s['test_top1']:.2%} after {s['train_seconds']:.1f} s of training ({wall:.1f} s wall)")

    base, acc = baseline(ds, args.epochs_baseline)
    print(f"(b) idiomatic DataLoader loop (batch 128, Adam 1e-3): per epoch {summary(base)}; "
          f"test top-1 {acc:.2%} after {len(base)} epochs")
    print(f"ratio (b)/(a), median epoch time: {statistics.median(base) / statistics.median(ours):.2f}x "
          f"(target >= 1.5x); default recipe reaches {s['test_top1']:.2%} in {s['train_seconds']:.1f} s "
          f"(target >= 99.0% within 15 s)")


if __name__ == "__main__":
    main()
