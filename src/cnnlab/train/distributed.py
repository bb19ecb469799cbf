"""Data-parallel training across processes with PyTorch's own engine (DistributedDataParallel).

Launch with torchrun, which sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT:

    torchrun --nproc-per-node 2 -m cnnlab train --model resnet20 --data cifar10
    cnnlab train --nproc 2 ...                      # the same, launched for you on this machine

How cnnlab splits the work (``cnnlab.train.sharding``): every rank draws the same global
permutation of the training set (it depends only on the seed and the epoch), cuts each global
batch of ``batch_size`` images (a multiple of the world size) into ``world_size`` equal shards and
trains on its own shard; DDP averages the gradients, so one step equals a single-process step on
the whole global batch (up to floating-point summation order; batch norm sees only the local
shard). The epoch's last batch is truncated to a multiple of the world size (at most
``world_size - 1`` images dropped per epoch). Augmentation and dropout draw from per-rank streams
seeded from (seed, epoch, rank). Metrics are summed across ranks; only rank 0 writes checkpoints,
CSV, plots and logs. On CUDA each rank binds its own GPU (``torch.cuda.set_device(local_rank)``)
before joining the NCCL group.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def from_env() -> Dist:
    """The process's place in a torchrun launch (a single process when not launched by torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(info: Dist, device: torch.device) -> None:
    """Join the process group: gloo on the CPU, NCCL on CUDA."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        # Without this every rank's collectives (all_gather_object, barrier) run on cuda:0.
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(info: Dist, name: str) -> str:
    """On CUDA each rank takes the GPU of its local rank (``cuda`` -> ``cuda:LOCAL_RANK``)."""
    if info.enabled and name in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{info.local_rank}"
    return name


def all_sum(values: Sequence[float | int], info: Dist, device: torch.device) -> list[float]:
    """Sum numbers over all ranks (float64, so counts and loss sums stay exact enough)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_max(values: Sequence[float | int], info: Dist, device: torch.device) -> list[float]:
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


# Keys that may differ between ranks: where each node keeps its data, and its CPU threads.
LOCAL_KEYS = ("data_root", "threads")


def check_same_config(config: dict, info: Dist) -> None:
    """Refuse a launch whose ranks were given different configs (one sentence naming the keys);
    ``LOCAL_KEYS`` (paths and threads of each node) may differ."""
    if not info.enabled:
        return
    config = {k: v for k, v in config.items() if k not in LOCAL_KEYS}
    gathered: list[object] = [None] * info.world_size
    dist.all_gather_object(gathered, json.dumps(config, sort_keys=True))
    reference = json.loads(gathered[0])
    for rank, text in enumerate(gathered):
        other = json.loads(text)
        differ = sorted(k for k in reference if reference.get(k) != other.get(k))
        if differ:
            raise CnnlabError(f"the ranks of this launch disagree on the config: rank {rank} differs from rank 0 "
                              f"in {', '.join(differ)}")


def barrier(info: Dist) -> None:
    if info.enabled:
        dist.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, train_argv: Sequence[str]) -> int:
    """Run ``cnnlab train ARGV`` in ``nproc`` processes on this machine through torchrun; returns
    torchrun's exit status."""
    if not isinstance(nproc, int) or not 1 <= nproc <= 1024:
        raise CnnlabError(f"--nproc must be in [1, 1024]; received --nproc {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "cnnlab", "train", *train_argv]
    return subprocess.call(cmd)


def without_flag(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == flag:
            skip = True
        elif not item.startswith(flag + "="):
            out.append(item)
    return out
