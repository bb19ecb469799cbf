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

What differs between ranks is checkpointed per rank: each one's RNG state (its dropout stream),
divergence-guard state and, inside an epoch, partial sums are gathered into ``last.pt`` (its
``ranks`` list), so a run stopped after a mid-epoch checkpoint resumes bit for bit on the CPU when
it resumes in as many processes (``cnnlab.train.restore.own_rank_state`` says what happens in
another number).

Stopping ``cnnlab train --nproc N`` (Ctrl-C, SIGTERM, SIGHUP) stops the whole launch
(``supervise``): torchrun runs in a session of its own and gets the signal from the launcher, stops
its workers and exits; whatever is still running after ``GRACE_SECONDS`` (or a second signal) is
killed, torchrun's workers included, so no process is left writing to the run. The launcher then
exits with 128 + the signal's number and one line saying how to continue the run.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def all_gather(obj: object, info: Dist) -> list[object]:
    """Every rank's ``obj`` (picklable), as a list indexed by rank, on every rank; ``[obj]`` alone."""
    if not info.enabled:
        return [obj]
    gathered: list[object] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(info: Dist) -> None:
    if info.enabled:
        dist.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LaunchStopped(CnnlabError):
    """The launcher was stopped by a signal; torchrun and its workers were stopped with it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


# Stopping signals the launcher passes on to torchrun, whose agent passes them on to its workers.
FORWARDED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
GRACE_SECONDS = 40.0  # torchrun gives its workers 30 s after forwarding before it kills them itself
_POLL_SECONDS = 0.2


def launch(nproc: int, train_argv: Sequence[str], *, grace: float = GRACE_SECONDS) -> int:
    """Run ``cnnlab train ARGV`` in ``nproc`` processes on this machine through torchrun; returns
    torchrun's exit status.

    Stopping the launcher (SIGINT, SIGTERM, SIGHUP) stops the training: see ``supervise``. Then
    ``LaunchStopped`` is raised (exit status 128 + the signal's number) with one sentence saying
    how to continue the run."""
    if not isinstance(nproc, int) or not 1 <= nproc <= 1024:
        raise CnnlabError(f"--nproc must be in [1, 1024]; received --nproc {nproc}")
    cmd = [sys.executable, "-m", "cnnlab.train.torchrun", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "cnnlab", "train", *train_argv]
    status, signum = supervise(cmd, grace=grace)
    if signum is None or status == 0:
        return status
    name = signal.Signals(signum).name
    run = flag_value(train_argv, "--resume") or flag_value(train_argv, "--out")
    if run is not None and (Path(run) / "summary.json").is_file():
        raise LaunchStopped(f"stopped by {name} after the run had finished; its results are in {run}", signum)
    if run is None:
        then = "run the same command again to start over"
    elif (Path(run) / "last.pt").is_file():
        then = f"continue the run from its last checkpoint with `cnnlab train --resume {run}`"
    else:
        then = f"{run} holds no checkpoint yet, so the same command starts it again"
    raise LaunchStopped(f"stopped by {name}: torchrun and its {nproc} training process"
                        f"{'es' if nproc != 1 else ''} were stopped and none is left running; {then}", signum)


def supervise(cmd: Sequence[str], *, grace: float = GRACE_SECONDS) -> tuple[int, int | None]:
    """Run ``cmd`` (a launcher such as torchrun) so that stopping this process never leaves any of
    its processes running; returns (its exit status, the signal that stopped it or None).

    ``cmd`` starts in a session of its own, so a Ctrl-C at the terminal reaches this process only,
    which passes each stopping signal (``FORWARDED``) on to ``cmd``: torchrun then stops its
    workers and exits. If it has not exited ``grace`` seconds after the first signal, or when a
    second signal comes, ``cmd``, every process it started (found in /proc, including workers in
    sessions of their own) and its process group are killed (SIGKILL). Once ``cmd`` has exited
    after a signal, any process it started that is still alive is killed too, so none is left
    writing to the run. The previous signal handlers are restored on return. From a thread other
    than the main one no handler can be installed, and signals are not forwarded."""
    received: list[int] = []
    proc: subprocess.Popen | None = None

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        if proc is not None and len(received) == 1 and proc.returncode is None:
            known.update(descendants(proc.pid))  # the workers, while torchrun is still their parent
            _send(proc.pid, signum)

    known: dict[int, int] = {}  # pid -> start time of every process seen below cmd
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in FORWARDED:
            previous[sig] = signal.signal(sig, forward)
    try:
        proc = subprocess.Popen(list(cmd), start_new_session=True)
        if received:  # a signal came while the process was being started
            known.update(descendants(proc.pid))
            _send(proc.pid, received[0])
        deadline = None
        while True:
            try:
                status = proc.wait(timeout=_POLL_SECONDS if received else 1.0)
                break
            except subprocess.TimeoutExpired:
                pass
            if not received:
                continue
            known.update(descendants(proc.pid))
            deadline = deadline if deadline is not None else time.monotonic() + grace
            if len(received) > 1 or time.monotonic() >= deadline:
                _kill_tree(proc, known)
                status = proc.wait()
                break
        if received:
            _kill_survivors(known)
        return status, (received[0] if received else None)
    except BaseException:
        if proc is not None and proc.poll() is None:
            _kill_tree(proc, known)
            proc.wait()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process from /proc, or None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    try:
        return fields[0], int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def descendants(pid: int) -> dict[int, int]:
    """Every live process below ``pid`` (children, theirs ...) as {pid: start time}, from /proc;
    empty where /proc is missing."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for name in entries:
        if not name.isdigit():
            continue
        stat = _proc_stat(int(name))
        if stat is not None and stat[0] != "Z":
            children.setdefault(stat[1], []).append(int(name))
            starts[int(name)] = stat[2]
    out, todo = {}, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        if p not in out and p in starts:
            out[p] = starts[p]
            todo.extend(children.get(p, []))
    return out


def _alive(pid: int, start: int) -> bool:
    """The process ``pid`` still runs and is the one that started at ``start`` (not a reused PID)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z" and stat[2] == start


def _kill_tree(proc: subprocess.Popen, known: dict[int, int]) -> None:
    """SIGKILL ``proc``, its process group and every process below it."""
    if proc.returncode is None:
        known.update(descendants(proc.pid))  # before it dies: then its children are orphans
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its session's group (it is the leader)
        except (ProcessLookupError, PermissionError):
            _send(proc.pid, signal.SIGKILL)
    _kill_survivors(known, wait=0.0)


def _kill_survivors(known: dict[int, int], wait: float = 5.0) -> None:
    """SIGKILL every process of ``known`` still alive (with its group, when it leads one: torchrun
    starts each worker in a session of its own) and wait up to ``wait`` seconds for them to go."""
    for pid, start in known.items():
        if _alive(pid, start):
            try:
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            _send(pid, signal.SIGKILL)
    end = time.monotonic() + wait
    while time.monotonic() < end and any(_alive(p, s) for p, s in known.items()):
        time.sleep(0.05)


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of the last ``flag VALUE`` / ``flag=VALUE`` in ``argv``, or None."""
    value = None
    for i, item in enumerate(argv):
        if item == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif item.startswith(flag + "="):
            value = item[len(flag) + 1:]
    return value


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
