"""LeNet-5 on MNIST: the tutorial loop against cnnlab's trainer, a plain loop with the speed pieces,
and the speedrun, measured alternately in one run.

    python benchmarks/bench_train.py [--repeats 3] [--quick] [--busy 2] [--no-trainer] [--no-speedrun]
                                      [--no-recipes]

Contenders, each one training epoch per repetition, run in turn (a, b, c, a, b, c, ...):

(t) tutorial: a ``DataLoader`` over a ``TensorDataset`` of normalized float images, batch 128,
    ``Adam(lr=1e-3)``: the loop of the PyTorch tutorials; the baseline of every ratio.
(a) trainer: ``cnnlab.train.fit`` with the default recipe (one epoch per repetition), wired with
    the speed pieces: its default thread count (``--threads`` here: the same count for every
    contender), bit-exact fast kernels, the set normalized once, fused Adam; with ``--quick`` it
    trains on the first 60 batches' images and its time is scaled to an epoch like the others.
(p) plain: the same LeNet-5 and batch 128 in a plain loop over the in-memory dataset normalized
    once, batches cut by a permutation (the speed pieces below switched off).
(f) pieces: (p) plus ``cnnlab.models.fast.apply`` (measured kernel swaps), channels_last and
    ``Adam(fused=True)``: what the trainer can wire in.
(s) speedrun: ``cnnlab.train.speedrun`` with its recipe, one seed per repetition (its whole run).
(d) default, whole run: bare ``cnnlab train`` (2 epochs, ``recipes/lenet5-fast-mnist.yaml``), one
    seed per repetition; its training seconds (the sum over epochs, evaluation excluded) against
    one tutorial epoch.
(3) 3 epochs, whole run: ``recipes/lenet5-mnist.yaml`` (the plain cross-entropy) the same way.

Printed: per-epoch seconds (median, min, max), ratios of medians against (t), GFLOP/s against a
matmul ceiling measured in the same run, the accuracies after the same epochs, evaluation
throughput (plain and 10-crop TTA), and the threads part: steps with torch's default thread count
against ``cnnlab.threads.default_threads`` and the probe while ``--busy N`` spinning processes
compete for the cores. ``--quick`` times 60 batches per epoch (scaled to an epoch) and skips the
speedrun.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _timing import BusyLoops, alternate, machine_line, matmul_gflops, summary, training_flops_per_image
from torch.utils.data import DataLoader, TensorDataset

from cnnlab import data, models, threads
from cnnlab.models import fast
from cnnlab.train import TrainConfig, fit
from cnnlab.train.config import load_config_file
from cnnlab.train.evaluation import predict_proba
from cnnlab.train.metrics import read_metrics_csv
from cnnlab.train.speedrun import Recipe, speedrun

BATCH = 128
RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def normalized(ds: data.Dataset, x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - ds.mean[0]) / ds.std[0]


class Tutorial:
    def __init__(self, ds: data.Dataset, batches: int | None) -> None:
        torch.manual_seed(0)
        self.loader = DataLoader(TensorDataset(normalized(ds, ds.train_x), ds.train_y), batch_size=BATCH, shuffle=True)
        self.model = models.create("lenet5")
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.batches = batches

    def epoch(self) -> float:
        self.model.train()
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(self.loader):
            if self.batches is not None and i == self.batches:
                break
            self.opt.zero_grad()
            F.cross_entropy(self.model(x), y).backward()
            self.opt.step()
        return _per_epoch(time.perf_counter() - t0, self.batches, len(self.loader))


class Plain:
    """The plain loop; ``pieces=True`` adds the fast kernels, channels_last and fused Adam."""

    def __init__(self, ds: data.Dataset, batches: int | None, *, pieces: bool) -> None:
        torch.manual_seed(0)
        self.x, self.y = normalized(ds, ds.train_x), ds.train_y  # normalized once
        self.model = models.create("lenet5")
        self.report = None
        if pieces:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.report = fast.apply(self.model, self.x[:BATCH].contiguous(memory_format=torch.channels_last))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=pieces or None)
        self.pieces, self.batches, self.g = pieces, batches, torch.Generator().manual_seed(0)

    def epoch(self) -> float:
        self.model.train()
        n = len(self.x)
        steps = -(-n // BATCH)
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=self.g)
        for i in range(steps if self.batches is None else self.batches):
            idx = order[i * BATCH:(i + 1) * BATCH]
            x = self.x[idx]
            if self.pieces:
                x = x.contiguous(memory_format=torch.channels_last)
            self.opt.zero_grad(set_to_none=True)
            F.cross_entropy(self.model(x), self.y[idx]).backward()
            self.opt.step()
        return _per_epoch(time.perf_counter() - t0, self.batches, steps)


def _per_epoch(seconds: float, batches: int | None, steps: int) -> float:
    return seconds if batches is None else seconds * steps / batches


@torch.inference_mode()
def test_top1(model: torch.nn.Module, ds: data.Dataset) -> float:
    model.eval()
    x = normalized(ds, ds.test_x)
    correct = sum((model(x[i:i + 2000]).argmax(1) == ds.test_y[i:i + 2000]).sum().item() for i in range(0, len(x), 2000))
    model.train()
    return correct / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="epochs of each contender, alternating (>= 3 for the targets)")
    p.add_argument("--quick", action="store_true", help="60 batches per epoch, scaled; no speedrun")
    p.add_argument("--no-trainer", action="store_true")
    p.add_argument("--no-speedrun", action="store_true")
    p.add_argument("--no-recipes", action="store_true", help="skip the whole runs of the default and the fast recipe")
    p.add_argument("--busy", type=int, default=2, help="spinning competitor processes for the threads part (0: skip)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the main part (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = data.load_dataset("mnist")
    batches = 60 if args.quick else None
    print(machine_line())
    ceiling = [matmul_gflops()]
    flops = training_flops_per_image(models.create("lenet5"), (1, 28, 28))
    print(f"LeNet-5: {flops / 1e6:.2f} MFLOP per training image, {flops * 60000 / 1e9:.1f} GFLOP per epoch")

    tut, plain, pieces = Tutorial(ds, batches), Plain(ds, batches, pieces=False), Plain(ds, batches, pieces=True)
    print("fast kernels:", "; ".join(pieces.report.lines()) or "none")
    contenders = {"(t) tutorial": tut.epoch, "(p) plain": plain.epoch, "(f) plain + pieces": pieces.epoch}
    trainer_runs: list[dict] = []
    if not args.no_trainer:
        train_ds = ds
        if batches is not None:  # the images of `batches` batches, timed and scaled to an epoch like the others
            n = batches * BATCH
            train_ds = data.Dataset(ds.name, ds.train_x[:n], ds.train_y[:n], ds.test_x, ds.test_y, ds.classes,
                                    ds.mean, ds.std)
        steps = -(-len(ds.train_y) // BATCH)
        trainer_lines: list[str] = []

        def trainer_epoch() -> float:
            with tempfile.TemporaryDirectory() as out:
                cfg = TrainConfig(epochs=1, batch_size=BATCH, seed=len(trainer_runs), threads=args.threads)
                s = fit(cfg, out, dataset=train_ds, log=trainer_lines.append)
                trainer_runs.append(s)
                seconds = read_metrics_csv(f"{out}/metrics.csv")[0]["train_seconds"]
                return _per_epoch(seconds, batches, steps)
        contenders["(a) trainer"] = trainer_epoch
    whole: dict[str, list[dict]] = {}
    if not (args.quick or args.no_trainer or args.no_recipes):
        # Whole runs, one seed per repetition: bare `cnnlab train` (the defaults, the same as
        # recipes/lenet5-fast-mnist.yaml) and the 3-epoch recipes/lenet5-mnist.yaml; their training
        # time against one tutorial epoch.
        three = TrainConfig.from_dict(load_config_file(RECIPES / "lenet5-mnist.yaml"))
        for key, make in (("(d) default, whole run", lambda seed: TrainConfig(seed=seed, threads=args.threads)),
                          ("(3) 3 epochs, whole run", lambda seed: three.updated({"seed": seed,
                                                                                   "threads": args.threads}))):
            runs = whole.setdefault(key, [])

            def whole_run(make=make, runs=runs) -> float:
                with tempfile.TemporaryDirectory() as out:
                    s = fit(make(len(runs)), out, dataset=ds)
                    runs.append(s)
                    return sum(r["train_seconds"] for r in read_metrics_csv(f"{out}/metrics.csv"))
            contenders[key] = whole_run
    seeds: list[dict] = []
    if not (args.quick or args.no_speedrun):
        def speedrun_run() -> float:
            r = speedrun(ds, seeds=[len(seeds)], threads=torch.get_num_threads())
            seeds.append(r["seeds"][0])
            return r["seeds"][0]["train_seconds"]
        contenders["(s) speedrun"] = speedrun_run
    times = alternate(contenders, args.repeats)
    ceiling.append(matmul_gflops())

    if trainer_runs:
        for line in dict.fromkeys(x for x in trainer_lines if x.startswith(("torch threads", "fast kernels"))):
            print(f"trainer: {line}")
    base = statistics.median(times["(t) tutorial"])
    print(f"\nmatmul ceiling {min(ceiling):.0f}-{max(ceiling):.0f} GFLOP/s (start, end)")
    print(f"{'contender':<22} {'seconds per epoch':<52} {'vs (t)':>7} {'GFLOP/s':>8}")
    for name, ts in times.items():
        gf = flops * 60000 / statistics.median(ts) / 1e9 if name[:3] in ("(t)", "(p)", "(f)", "(a)") else float("nan")
        print(f"{name:<22} {summary(ts):<52} {base / statistics.median(ts):6.2f}x {gf:8.1f}")
    if not args.quick:
        print(f"\ntest top-1 after {args.repeats} epochs: tutorial {test_top1(tut.model, ds):.2%}, plain "
              f"{test_top1(plain.model, ds):.2%}, plain + pieces {test_top1(pieces.model, ds):.2%}")
    print(f"target 1 (trainer >= 2.0x the tutorial): plain + pieces reach "
          f"{base / statistics.median(times['(f) plain + pieces']):.2f}x" +
          (f", the trainer {base / statistics.median(times['(a) trainer']):.2f}x" if trainer_runs else ""))
    for key, runs in whole.items():
        ratio = statistics.median(times[key]) / base
        accs = ", ".join(f"{r['test_top1']:.2%}" for r in runs)
        print(f"{'target 2 ' if key.startswith('(d)') else ''}({key}): {sum(r['test_top1'] >= 0.99 for r in runs)}/{len(runs)} seeds >= 99.0% ({accs}), "
              f"median training time {ratio:.2f} tutorial epochs" + (" (target <= 1.5)" if key.startswith("(d)") else ""))
    if seeds:
        ratio = statistics.median(times["(s) speedrun"]) / base
        accs = ", ".join(f"{s['top1']:.2%}" for s in seeds)
        print(f"target 3 (speedrun): {sum(s['top1'] >= 0.99 for s in seeds)}/{len(seeds)} seeds >= 99.0% "
              f"({accs}), median training time {ratio:.2f} tutorial epochs (target <= 0.75)")

    # --- evaluation throughput ---------------------------------------------------------------------
    loader = data.BatchLoader(ds.test_x, ds.test_y, batch_size=1000, mean=ds.mean, std=ds.std, shuffle=False)
    model = pieces.model
    ev = alternate({"plain": lambda: _timed(lambda: predict_proba(model, loader)),
                    "10crop": lambda: _timed(lambda: predict_proba(model, loader, tta="10crop"))}, args.repeats)
    print(f"\nevaluation, 10,000 test images: plain {10000 / statistics.median(ev['plain']):,.0f} img/s, "
          f"10-crop TTA {10000 / statistics.median(ev['10crop']):,.0f} img/s; 10-crop costs "
          f"{statistics.median(ev['10crop']) / statistics.median(ev['plain']):.1f}x the plain evaluation (target <= 10.5x)")

    # --- threads on a busy machine -----------------------------------------------------------------
    if args.busy:
        steps = 30
        probe_model = Plain(ds, steps, pieces=False)
        before = torch.get_num_threads()
        chosen = threads.default_threads()
        with BusyLoops(args.busy):
            def run(n: int) -> float:
                with threads.torch_threads(n):
                    return probe_model.epoch() * steps / 469
            counts = {f"torch default ({before})": before, f"default_threads() ({threads.default_threads()})": chosen,
                      "1 thread": 1}
            tt = alternate({k: (lambda n=n: run(n)) for k, n in counts.items()}, args.repeats)
            x = probe_model.x[:BATCH]
            def step() -> None:
                probe_model.opt.zero_grad()
                F.cross_entropy(probe_model.model(x), probe_model.y[:BATCH]).backward()
                probe_model.opt.step()
            probe = threads.probe_threads(step, [before, 1])
        print(f"\nthreads, with {args.busy} busy-loop competitors ({steps} steps each):")
        for k, ts in tt.items():
            print(f"  {k:<28} {summary(ts)} per {steps} steps")
        print(f"  {probe.message()}")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
