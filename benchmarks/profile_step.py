"""Where a LeNet-5 training step spends its time: torch.profiler over the trainer's own step.

    python benchmarks/profile_step.py [--steps 60] [--threads N] [--no-pieces] [--top 15]

The step is the one ``cnnlab train`` runs with its default recipe (LeNet-5, batch 128, the set
normalized once, channels_last, the bit-exact fast kernels, fused Adam) on in-memory MNIST
batches; ``--no-pieces`` profiles the plain step instead. Printed: the operators by self CPU
time with their share of the step, then each layer's forward and backward in milliseconds per
step and the GFLOP/s it reaches, against a matmul ceiling measured in the same run. Use it to see
which kernels stand between the trainer and the matmul rate; it is a profile, not a speed goal.
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F
from _timing import machine_line, matmul_gflops
from torch import nn

from cnnlab import data, models, threads
from cnnlab.models import fast

BATCH = 128


def _layer_timings(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[tuple[str, float, float, int]]:
    """(layer, forward ms, backward ms, MACs per step) for each leaf layer, by hooks with a barrier
    of time stamps: the forward and backward of one layer are the time between its hooks."""
    stamps: dict[str, list[float]] = {}
    handles = []
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    for name, module in leaves:
        def pre(m, inp, name=name):
            stamps.setdefault(name + ":f0", []).append(time.perf_counter())

        def post(m, inp, out, name=name):
            stamps.setdefault(name + ":f1", []).append(time.perf_counter())

        def bpre(m, grad_out, name=name):
            stamps.setdefault(name + ":b0", []).append(time.perf_counter())

        def bpost(m, grad_in, grad_out, name=name):
            stamps.setdefault(name + ":b1", []).append(time.perf_counter())

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post),
                    module.register_full_backward_pre_hook(bpre), module.register_full_backward_hook(bpost)]
    ends = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the first layer's hook fires early: timed to the end below
            for _ in range(steps):
                F.cross_entropy(model(x), y).backward()
                ends.append(time.perf_counter())
                model.zero_grad(set_to_none=True)
    finally:
        for h in handles:
            h.remove()
    out = []
    for name, module in leaves:
        f = [b - a for a, b in zip(stamps.get(name + ":f0", []), stamps.get(name + ":f1", []))]
        b = [d - c for c, d in zip(stamps.get(name + ":b0", []), stamps.get(name + ":b1", []))]
        if name == leaves[0][0]:  # no input gradient: its weight gradient is the backward's last work
            b = [e - c for c, e in zip(stamps.get(name + ":b0", []), ends)]
        out.append((f"{name} ({type(module).__name__})", 1e3 * sorted(f)[len(f) // 2] if f else 0.0,
                    1e3 * sorted(b)[len(b) // 2] if b else 0.0, _macs(module, model, x)))
    return out


def _macs(module: nn.Module, model: nn.Module, x: torch.Tensor) -> int:
    shapes = {}
    def keep(m, i, o):
        shapes.setdefault("out", o.shape)  # returns None: the output is left as it is

    h = module.register_forward_hook(keep)
    with torch.no_grad():
        model(x[:1])
    h.remove()
    out = shapes.get("out")
    if isinstance(module, nn.Conv2d) and out is not None:
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        return BATCH * out[1] * out[2] * out[3] * k
    if isinstance(module, nn.Linear):
        return BATCH * module.in_features * module.out_features
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cnnlab's default)")
    p.add_argument("--no-pieces", action="store_true", help="the plain step: no channels_last, kernels or fused Adam")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    n_threads = args.threads or threads.default_threads()
    with threads.torch_threads(n_threads):
        ds = data.load_dataset("mnist")
        x_all = ((ds.train_x[:BATCH * 8].float() / 255 - ds.mean[0]) / ds.std[0])
        y_all = ds.train_y[:BATCH * 8]
        torch.manual_seed(0)
        model = models.create("lenet5")
        pieces = not args.no_pieces
        if pieces:
            model = model.to(memory_format=torch.channels_last)
            x_all = x_all.contiguous(memory_format=torch.channels_last)
            fast.apply(model, x_all[:BATCH])
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=pieces or None)
        batches = [(x_all[i:i + BATCH], y_all[i:i + BATCH]) for i in range(0, len(x_all), BATCH)]

        def step(i: int) -> None:
            x, y = batches[i % len(batches)]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        for i in range(10):  # warm up the kernels' caches
            step(i)
        t0 = time.perf_counter()
        for i in range(args.steps):
            step(i)
        step_ms = 1e3 * (time.perf_counter() - t0) / args.steps
        ceiling = matmul_gflops()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for i in range(args.steps):
                step(i)
        print(machine_line())
        print(f"LeNet-5 training step, batch {BATCH}, {n_threads} thread(s), "
              f"{'trainer pieces' if pieces else 'plain'}: {step_ms:.2f} ms per step "
              f"({step_ms * 469 / 1e3:.2f} s per epoch); matmul ceiling {ceiling:.0f} GFLOP/s")
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        print(f"\n{'operator':44s} {'self ms/step':>12s} {'share':>7s}")
        for e in events[:args.top]:
            print(f"{e.key[:44]:44s} {e.self_cpu_time_total / 1e3 / args.steps:12.3f} "
                  f"{e.self_cpu_time_total / total:7.1%}")
        print(f"\n{'layer':32s} {'fwd ms':>8s} {'bwd ms':>8s} {'MMAC':>7s} {'GFLOP/s':>8s}")
        for name, f_ms, b_ms, macs in _layer_timings(model, *batches[0], max(10, args.steps // 3)):
            rate = f"{6 * macs / ((f_ms + b_ms) * 1e-3) / 1e9:8.1f}" if macs and f_ms + b_ms > 0 else f"{'':8s}"
            print(f"{name[:32]:32s} {f_ms:8.3f} {b_ms:8.3f} {macs / 1e6:7.1f} {rate}")
        print("GFLOP/s of a layer: 6 x MACs (forward 2, backward 4) over its forward + backward time.")


if __name__ == "__main__":
    main()
