"""The manual backend against torch's built-in layers: LeNet-5 on MNIST, alternating, in one run.

    python benchmarks/bench_manual.py [--repeats 3] [--quick] [--profile] [--layers]
    python benchmarks/bench_manual.py --threads 1 --cpu-steps 20 --repeats 7
    python benchmarks/bench_manual.py --trainer --repeats 3

Two LeNet-5s with the same initial weights train in a plain loop over ``cnnlab.data.BatchLoader``
(batch 128, Adam 1e-3): one with ``torch.nn`` layers, one converted to ``cnnlab.manual``'s
hand-derived layers. Each repetition runs one epoch of each, in turn, so a busy machine slows
both alike. Printed: seconds per epoch (median, min, max), the ratio manual / built-in (target
<= 1.5x) and both test accuracies after the same epochs. ``--quick`` times 60 batches per epoch
(scaled to an epoch). ``--profile`` adds a per-op profile of one training step of each backend;
``--layers`` a per-layer table (forward and backward ms per batch of 128, each layer's autograd
node as the profiler times it, wall clock, inside a whole training step; a backward row is keyed
by the shape of the gradient it receives, i.e. the layer's output; ``--threads 1`` steadies it
on a shared machine). ``--cpu-steps N`` times only training steps on one fixed batch, in CPU
seconds (``time.process_time``): N steps of each backend, each in a fresh process of its own, in
turn per repetition. With ``--threads 1`` the steadiest figure on a machine that other jobs share;
separate processes because a backend's timing depends on what else lives in its process's heap.
``--trainer`` times what a user runs: one ``cnnlab train --epochs 1`` epoch with each backend, each
in a process of its own, in turn per repetition (the trainer's ``train_seconds``).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from _timing import alternate, machine_line, plain_epoch, summary

from cnnlab import data, manual, models


def epoch_fn(model: torch.nn.Module, loader: data.BatchLoader, batches: int | None):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = {"epoch": 0}

    def run() -> float:
        loader.set_epoch(state["epoch"])
        state["epoch"] += 1
        return plain_epoch(model, opt, loader, batches)

    return run


@torch.inference_mode()
def top1(model: torch.nn.Module, ds: data.Dataset) -> float:
    model.eval()
    loader = data.BatchLoader(ds.test_x, ds.test_y, batch_size=2000, mean=ds.mean, std=ds.std, shuffle=False)
    return sum((model(x).argmax(1) == y).sum().item() for x, y in loader) / len(ds.test_y)


def profile(backend: str) -> str:
    model = models.create("lenet5", backend=backend)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    for _ in range(3):
        F.cross_entropy(model(x), y).backward()
    with torch.profiler.profile() as prof:
        for _ in range(10):
            F.cross_entropy(model(x), y).backward()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)


# The profiler events that are one layer's forward or backward, built-in and manual.
_LAYER_EVENTS = {
    "aten::convolution": "conv", "aten::convolution_backward": "conv", "_Conv2d": "conv", "_Conv2dBackward": "conv",
    "aten::max_pool2d_with_indices": "max pool", "aten::max_pool2d_with_indices_backward": "max pool",
    "_MaxPool2d": "max pool", "_MaxPool2dBackward": "max pool",
    "aten::relu": "relu", "aten::threshold_backward": "relu", "_ReLU": "relu", "_ReLUBackward": "relu",
    "aten::linear": "linear", "AddmmBackward0": "linear", "_Linear": "linear", "_LinearBackward": "linear",
}


def layer_times(backend: str, steps: int = 20) -> dict[tuple[str, str], float]:
    """{(layer, "fwd" / "bwd"): ms per step} for the layers of one LeNet-5 training step."""
    model = models.create("lenet5", backend=backend)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    for _ in range(3):
        F.cross_entropy(model(x), y).backward()
    with torch.profiler.profile(record_shapes=True) as prof:
        for _ in range(steps):
            F.cross_entropy(model(x), y).backward()
    out: dict[tuple[str, str], float] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        kind = _LAYER_EVENTS.get(e.key)
        if kind is None:
            continue
        direction = "bwd" if "ackward" in e.key else "fwd"
        shape = e.input_shapes[0] if e.input_shapes else []
        key = (f"{kind} {tuple(shape)}", direction)
        out[key] = out.get(key, 0.0) + e.cpu_time_total / steps / 1e3
    return out


def layers_table() -> str:
    torch_t, manual_t = layer_times("torch"), layer_times("manual")
    rows = sorted({name for name, _ in torch_t} | {name for name, _ in manual_t})
    lines = [f"{'layer (input shape)':<34}{'built-in fwd':>13}{'bwd':>8}{'manual fwd':>12}{'bwd':>8}   ms per step"]
    totals = [0.0] * 4
    for name in rows:
        vals = [torch_t.get((name, "fwd"), 0.0), torch_t.get((name, "bwd"), 0.0),
                manual_t.get((name, "fwd"), 0.0), manual_t.get((name, "bwd"), 0.0)]
        totals = [a + b for a, b in zip(totals, vals)]
        lines.append(f"{name:<34}{vals[0]:13.2f}{vals[1]:8.2f}{vals[2]:12.2f}{vals[3]:8.2f}")
    lines.append(f"{'total':<34}{totals[0]:13.2f}{totals[1]:8.2f}{totals[2]:12.2f}{totals[3]:8.2f}")
    return "\n".join(lines)


def solo_steps(backend: str, steps: int) -> float:
    """CPU milliseconds per training step of one backend's LeNet-5 on one fixed batch (3 warm-up steps)."""
    torch.manual_seed(0)
    model = models.create("lenet5", backend=backend)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    t0 = time.process_time()
    for _ in range(steps):
        step()
    return (time.process_time() - t0) / steps * 1e3


def cpu_steps(steps: int, rounds: int, threads: int | None) -> dict[str, list[float]]:
    """CPU ms per training step (``time.process_time``), each backend in a process of its own,
    alternating, ``rounds`` times. CPU time is not inflated by other jobs holding the cores as wall
    time is. Separate processes, because two backends in one process share its heap: a variant of
    the manual backend that kept its layers' results between steps made the built-in step next to
    it 15-40% slower than alone (and an in-process ratio look better than it was)."""
    times: dict[str, list[float]] = {"built-in": [], "manual": []}
    for _ in range(rounds):
        for name, backend in (("built-in", "torch"), ("manual", "manual")):
            cmd = [sys.executable, __file__, "--solo", backend, "--cpu-steps", str(steps)]
            if threads:
                cmd += ["--threads", str(threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            times[name].append(float(out.split()[-1]))
    return times


def trainer_epochs(rounds: int, threads: int | None) -> dict[str, list[float]]:
    """Seconds of one ``cnnlab train --epochs 1`` epoch (its ``train_seconds``: training only) with
    ``--backend torch`` and ``--backend manual``, each a process of its own as a user runs them,
    alternating, ``rounds`` times. Everything else is the default recipe (fast kernels, fused Adam,
    channels_last: whatever each backend gets by default)."""
    import csv
    import tempfile

    times: dict[str, list[float]] = {"built-in": [], "manual": []}
    for _ in range(rounds):
        for name, backend in (("built-in", "torch"), ("manual", "manual")):
            with tempfile.TemporaryDirectory() as out:
                cmd = [sys.executable, "-m", "cnnlab", "train", "--epochs", "1", "--backend", backend,
                       "--out", out, "--overwrite", "--no-progress"] + (["--threads", str(threads)] if threads else [])
                subprocess.run(cmd, check=True, capture_output=True, text=True)
                with open(f"{out}/metrics.csv") as f:
                    times[name].append(float(next(csv.DictReader(f))["train_seconds"]))
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="60 batches per epoch, scaled to an epoch")
    p.add_argument("--profile", action="store_true", help="also print a per-op profile of each backend")
    p.add_argument("--layers", action="store_true", help="also print per-layer forward/backward times")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cpu-steps", type=int, default=0, metavar="N",
                   help="only time N training steps of each backend in CPU seconds, one process per backend and round")
    p.add_argument("--trainer", action="store_true",
                   help="only time one `cnnlab train --epochs 1` epoch per backend, each in its own process")
    p.add_argument("--solo", choices=["torch", "manual"], help=argparse.SUPPRESS)  # one --cpu-steps process
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.solo:
        print(f"{solo_steps(args.solo, args.cpu_steps or 20):.4f}")
        return
    if args.trainer:
        times = trainer_epochs(args.repeats, args.threads)
        print(machine_line())
        for name, ts in times.items():
            print(f"{name:<9} cnnlab train epoch {summary(ts)}")
        ratio = statistics.median(times["manual"]) / statistics.median(times["built-in"])
        print(f"ratio manual / built-in (median `cnnlab train` epoch): {ratio:.2f}x (target <= 1.5x)")
        return
    if args.cpu_steps:
        times = cpu_steps(args.cpu_steps, args.repeats, args.threads)
        for name, ts in times.items():
            print(f"{name:<9} CPU per step {summary(ts, 'ms')}")
        ratio = statistics.median(times["manual"]) / statistics.median(times["built-in"])
        print(f"ratio manual / built-in (median CPU time per step): {ratio:.2f}x (target <= 1.5x)")
        return
    ds = data.load_dataset("mnist")
    print(machine_line())
    torch.manual_seed(0)
    builtin = models.create("lenet5")
    handmade = manual.convert(copy.deepcopy(builtin))
    loaders = [data.BatchLoader(ds.train_x, ds.train_y, batch_size=128, mean=ds.mean, std=ds.std, seed=0)
               for _ in range(2)]
    batches = 60 if args.quick else None
    times = alternate({"built-in": epoch_fn(builtin, loaders[0], batches),
                       "manual": epoch_fn(handmade, loaders[1], batches)}, args.repeats)
    for name, ts in times.items():
        print(f"{name:<9} per epoch {summary(ts)}")
    ratio = statistics.median(times["manual"]) / statistics.median(times["built-in"])
    print(f"ratio manual / built-in (median epoch): {ratio:.2f}x (target <= 1.5x)")
    if not args.quick:
        print(f"test top-1 after {args.repeats} epochs: built-in {top1(builtin, ds):.2%}, manual {top1(handmade, ds):.2%}")
    if args.layers:
        print(f"\n--- where one training step's time goes, layer by layer ---\n{layers_table()}")
    if args.profile:
        for backend in ("torch", "manual"):
            print(f"\n--- {backend}: where one training step's time goes ---\n{profile(backend)}")


if __name__ == "__main__":
    main()
