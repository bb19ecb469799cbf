"""CPU threads for torch on a shared machine: a sensible default, a scoped setting, a probe.

torch's intra-op pool uses one thread per core it sees and collapses when other processes hold
those cores: measured on a 2-core machine with two busy competitors, a LeNet-5 epoch took 54 s with
torch's default and 18 s with one thread. Three tools:

    >>> n = default_threads()                 # cores this process may use, minus the machine's load
    >>> with torch_threads(n):                # torch's thread count, restored on exit
    ...     train()
    >>> probe = probe_threads(step, [2, 1])   # time real steps under each count, keep the fastest
    >>> probe.chosen, probe.message()
    >>> watch = ThroughputWatch()             # during training: watch.tick() once per step
    >>> watch.collapsed                       # True when steps became ``factor`` x slower

Library code never changes torch's global thread count without restoring it: ``torch_threads``
is the one place that sets it, and it puts back what it found.
"""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from cnnlab.errors import CnnlabError


def available_cpus() -> int:
    """Cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where that is missing)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def busy_cores(interval: float = 0.2) -> float | None:
    """How many cores other processes keep busy right now, from two reads of Linux's /proc/stat
    ``interval`` seconds apart (this process is idle meanwhile), or None where there is no
    /proc/stat. Unlike the load average, it does not remember the last minute, so a run started
    just after another one, or after a benchmark's own work, is not mistaken for a busy machine."""
    def read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        if len(fields) < 4:
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields) - idle, sum(fields)

    first = read()
    if first is None:
        return None
    time.sleep(interval)
    second = read()
    if second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * (os.cpu_count() or 1)


def machine_load() -> float | None:
    """Cores other processes keep busy: measured now (``busy_cores``) where Linux tells, else the
    1-minute load average, else None."""
    now = busy_cores()
    if now is not None:
        return now
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def default_threads(*, cpus: int | None = None, load: float | None = None, own_load: float = 0.0) -> int:
    """Threads to give torch: the cores this process may use, less those other processes keep busy.

    ``load`` is the number of busy cores (default: measured now, see ``machine_load``), ``own_load`` the part of it that is this
    process's own (0 before training starts). With 2 cores, load 0.3 gives 2 threads, load 1.6 or
    more gives 1: a thread per core that is actually free, and always at least one.

    >>> default_threads(cpus=8, load=0.2), default_threads(cpus=8, load=5.0), default_threads(cpus=2, load=11.0)
    (8, 3, 1)
    """
    cpus = available_cpus() if cpus is None else cpus
    if cpus < 1:
        raise CnnlabError(f"cpus must be at least 1; received cpus={cpus}")
    load = machine_load() if load is None else load
    if load is None:
        return cpus
    others = max(0.0, load - own_load)
    free = cpus - others
    return max(1, min(cpus, math.floor(free + 0.5)))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run a block with ``torch.set_num_threads(n)`` and restore the previous count afterwards.

    ``n=None`` leaves the count as it is. Yields the count in effect inside the block.
    """
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise CnnlabError(f"threads must be a positive integer; received threads={n!r}")
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@dataclass
class ThreadProbe:
    """What ``probe_threads`` measured: median seconds per step for each thread count."""

    seconds: dict[int, float]
    chosen: int
    first: int  # the count that would have been used without the probe

    @property
    def speedup(self) -> float:
        """How much faster the chosen count is than ``first`` (1.0 when it is ``first``)."""
        return self.seconds[self.first] / self.seconds[self.chosen]

    def message(self) -> str:
        per = ", ".join(f"{n} thread{'s' * (n != 1)}: {1e3 * s:.1f} ms" for n, s in self.seconds.items())
        if self.chosen == self.first:
            return f"threads: kept {self.first} (per step {per})"
        return (f"threads: {self.first} threads were {self.speedup:.1f}x slower per step than {self.chosen} "
                f"(the machine is busy; per step {per}); using --threads {self.chosen}")


def probe_threads(step: Callable[[], object], counts: Sequence[int], *, steps_each: int = 3, rounds: int = 2,
                  margin: float = 1.15, clock: Callable[[], float] = time.perf_counter) -> ThreadProbe:
    """Time ``step()`` under each thread count in ``counts``, alternating, and choose the fastest.

    ``step`` should be a real training step (the probe's steps are not wasted). Every count runs
    ``steps_each`` steps in each of ``rounds`` rounds; a count replaces ``counts[0]`` only when its
    median is ``margin`` times faster, so noise does not flip the choice. torch's thread count is
    restored afterwards: apply ``chosen`` with ``torch_threads``.
    """
    counts = list(dict.fromkeys(counts))
    if not counts or any(not isinstance(n, int) or n < 1 for n in counts):
        raise CnnlabError(f"thread counts must be positive integers; received {list(counts)}")
    if steps_each < 1 or rounds < 1:
        raise CnnlabError(f"steps_each and rounds must be at least 1; received {steps_each} and {rounds}")
    times: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(rounds):
        for n in counts:
            with torch_threads(n):
                for _ in range(steps_each):
                    t0 = clock()
                    step()
                    times[n].append(clock() - t0)
    seconds = {n: statistics.median(ts) for n, ts in times.items()}
    first = counts[0]
    best = min(seconds, key=seconds.get)
    chosen = best if seconds[first] > margin * seconds[best] else first
    return ThreadProbe(seconds, chosen, first)


@dataclass
class ThroughputWatch:
    """Notices when steps become much slower than the best seen so far (a machine that got busy).

    Call ``tick()`` once per step (on the CPU; on a GPU a step's wall time means nothing without a
    synchronization). After each full ``window`` of steps it compares that window's median step
    time with the best window's; ``collapsed`` turns True when it is ``factor`` times slower.
    """

    window: int = 20
    factor: float = 2.0
    clock: Callable[[], float] = time.perf_counter
    best: float | None = None
    last: float | None = None
    collapsed: bool = False
    _times: list[float] = field(default_factory=list)
    _t: float | None = None

    def tick(self) -> bool:
        """Record one step's end; returns ``collapsed``."""
        now = self.clock()
        if self._t is not None:
            self._times.append(now - self._t)
        self._t = now
        if len(self._times) >= self.window:
            self.last = statistics.median(self._times)
            self._times.clear()
            self.best = self.last if self.best is None else min(self.best, self.last)
            self.collapsed = self.last > self.factor * self.best
        return self.collapsed

    def pause(self) -> None:
        """Forget the step in progress: the time until the next ``tick`` is no step (an evaluation)."""
        self._t = None

    def message(self, threads: int) -> str:
        """A progress-line note with the fix, when collapsed (else "")."""
        if not self.collapsed or self.best is None or self.last is None:
            return ""
        hint = f"try --threads {max(1, threads // 2)}" if threads > 1 else "the machine is busy"
        return f"steps {self.last / self.best:.1f}x slower than at best ({hint})"


__all__ = ["ThreadProbe", "ThroughputWatch", "available_cpus", "default_threads", "machine_load",
           "probe_threads", "torch_threads"]
