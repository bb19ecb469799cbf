"""What every experiment shares: the registry, the run context (scale, seeds, data, resume), the
``Result`` and the files it writes (``results.csv``, figures, ``verdict.md``).

An experiment is a function ``(ctx: Context) -> Outcome`` registered with ``@experiment``. It asks
``ctx.pick(smoke=..., quick=..., full=...)`` for its sizes, ``ctx.dataset()`` for its data and wraps
each configuration in ``ctx.step(key, compute)``: a finished step is saved under ``DIR/.done/``
and read back instead of recomputed, so a killed sweep continues where it stopped.

    >>> from cnnlab import experiments
    >>> result = experiments.run("double-descent", quick=True, out="runs/exp/dd")
    >>> result.status, result.out / "verdict.md"
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError, unknown_name
from cnnlab.fileio import atomic_write_text

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
STATUSES = (HOLDS, FAILS, INCONCLUSIVE)
SCALES = ("smoke", "quick", "full")
MARKER = "experiment.json"
DONE = ".done"


@dataclass(frozen=True)
class Verdict:
    """One claim's verdict: ``status`` is holds / does not hold / inconclusive; ``numbers`` says why."""

    claim: str
    status: str
    numbers: str

    def __post_init__(self) -> None:
        assert self.status in STATUSES, self.status


def combine(verdicts: Sequence[Verdict]) -> str:
    """The overall status: holds (or does not hold) when every part agrees, else inconclusive."""
    statuses = {v.status for v in verdicts}
    return statuses.pop() if len(statuses) == 1 else INCONCLUSIVE


@dataclass
class Outcome:
    """What an experiment function returns: its rows, the verdicts of its claims, and what it measured."""

    rows: list[dict[str, Any]]
    verdicts: list[Verdict]
    measured: str  # one paragraph: model, data, sizes, seeds
    figures: list[str] = field(default_factory=list)  # file names inside the output directory


@dataclass
class Result:
    """A finished experiment: its table, verdicts and files (``cnnlab.experiments.run`` returns it)."""

    name: str
    scale: str
    out: Path
    rows: list[dict[str, Any]]
    verdicts: list[Verdict]
    status: str
    seconds: float
    figures: list[Path]

    def summary(self) -> str:
        lines = [f"{self.name}: {self.status}"]
        lines += [f"  - {v.claim}: {v.status} ({v.numbers})" for v in self.verdicts]
        return "\n".join(lines)


@dataclass(frozen=True)
class Spec:
    name: str
    claim: str
    source: str  # the lecture by course and author, and the paper with its year
    quick_time: str  # measured on the 2-core development machine
    full_time: str  # measured, or an estimate labelled as one
    func: Callable[[Context], Outcome]
    datasets: tuple[str, ...] = ("mnist",)  # the datasets it accepts; the first is the default


_REGISTRY: dict[str, Spec] = {}
# The order of the list: the lectures' most striking claims first.
ORDER = ("double-descent", "init", "optimizers", "weight-decay-vs-l2", "batchnorm", "depth", "schedules",
         "regularization", "ensembles-tta", "wide-vs-sharp", "epoch-double-descent")


def experiment(name: str, *, claim: str, source: str, quick_time: str, full_time: str,
               datasets: tuple[str, ...] = ("mnist",)) -> Callable:
    """Register an experiment function under ``name``; a duplicate name raises."""
    def decorator(func: Callable[[Context], Outcome]) -> Callable[[Context], Outcome]:
        if name in _REGISTRY:
            raise RuntimeError(f"experiment {name!r} is registered twice")
        _REGISTRY[name] = Spec(name, claim, source, quick_time, full_time, func, datasets)
        return func
    return decorator


def _load() -> None:
    import importlib
    import pkgutil

    import cnnlab.experiments as package

    for mod in pkgutil.iter_modules(package.__path__):
        if not mod.name.startswith("_") and mod.name not in ("base", "common", "plots"):
            importlib.import_module(f"cnnlab.experiments.{mod.name}")


def names() -> list[str]:
    """The registered experiments, in the order of ``ORDER`` (then any others by name)."""
    _load()
    return sorted(_REGISTRY, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def spec(name: str) -> Spec:
    _load()
    if name not in _REGISTRY:
        raise unknown_name("experiment", str(name)[:100], _REGISTRY)
    return _REGISTRY[name]


class Context:
    """The run's scale, seeds and output directory, the data, and the resumable steps."""

    def __init__(self, name: str, out: Path, scale: str, seeds: int, data: Any, data_name: str,
                 progress: Callable[[str], None] | None) -> None:
        self.name, self.out, self.scale, self.seeds = name, out, scale, seeds
        self._data, self.data_name = data, data_name
        self._progress = progress or (lambda key: None)
        self._cache: dict[str, Any] = {}

    def pick(self, *, smoke: Any, quick: Any, full: Any) -> Any:
        """The value for this run's scale."""
        return {"smoke": smoke, "quick": quick, "full": full}[self.scale]

    def dataset(self):
        """The injected dataset, or ``data_name`` loaded from the local cache (never fetched here
        for CIFAR: a missing CIFAR says which files to put where)."""
        if self._data is not None:
            return self._data
        if "dataset" not in self._cache:
            from cnnlab import data

            if self.data_name.startswith("cifar"):
                _require_local(self.data_name)
            self._cache["dataset"] = data.load_dataset(self.data_name)
        return self._cache["dataset"]

    def step(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()``'s JSON result for ``key``, from ``DIR/.done/`` if an earlier run finished it."""
        # the scale and the dataset are part of the name: a quick run never reuses a full run's
        # step, nor an MNIST run a CIFAR one
        data = self._data.name if self._data is not None else self.data_name
        path = self.out / DONE / f"{self.scale}-{_safe(data)}-{_safe(key)}.json"
        if path.is_file():
            try:
                value = json.loads(path.read_text())
                self._progress(key)
                return value
            except (OSError, ValueError):
                pass  # unreadable: recompute
        value = compute()
        atomic_write_text(path, json.dumps(value))
        self._progress(key)
        return value

    def path(self, filename: str) -> Path:
        return self.out / filename


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in key)


def _require_local(name: str) -> None:
    from cnnlab import data
    from cnnlab.data.datasets import CACHE_FILE

    directory = data.data_root() / name
    if (directory / CACHE_FILE).is_file():
        return
    sources = data.spec(name).sources()
    for source in sources:
        if all((directory / f).is_file() for f in source.files):
            return
    archive = next(iter(sources[-1].files))
    folder = next(iter(sources[0].files)).split("/")[0]
    raise CnnlabError(f"{name} is not on this machine; put {archive} (or its extracted {folder}/ folder) "
                      f"in {directory}/, or set CNNLAB_DATA to a directory holding {name}/ with it")


def _check_out(out: Path, name: str, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise CnnlabError(f"the output path {out} is a file; give a directory")
    marker = out / MARKER
    if marker.is_file():
        try:
            held = json.loads(marker.read_text()).get("experiment")
        except (OSError, ValueError):
            held = None
        if held == name:
            if overwrite:
                _clear(out)
            return
        if not overwrite:
            raise CnnlabError(f"{out} holds the experiment {held!r}, not {name!r}; choose another --out "
                              f"or pass --overwrite to replace it")
        _clear(out)
    elif any(out.iterdir()):
        if not overwrite:
            raise CnnlabError(f"{out} is not empty and holds no experiment; choose another --out "
                              f"or pass --overwrite to replace its experiment files")
        _clear(out)


def _clear(out: Path) -> None:
    """Remove what an experiment writes (and nothing else a user may have put there)."""
    shutil.rmtree(out / DONE, ignore_errors=True)
    for pattern in (MARKER, "results.csv", "verdict.md", "*.png"):
        for p in out.glob(pattern):
            p.unlink()


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows with possibly different keys, as one CSV (the union of the keys, blanks elsewhere)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def verdict_markdown(s: Spec, outcome: Outcome, status: str, scale: str, seeds: int, seconds: float) -> str:
    lines = [
        f"# {s.name}: the claim {status}" if status != INCONCLUSIVE else f"# {s.name}: inconclusive",
        "",
        f"**Claim.** {s.claim}",
        "",
        f"**Source.** {s.source}",
        "",
        f"**Measured** ({scale} mode, {seeds} seed{'s' if seeds > 1 else ''}, {seconds:.0f} s). {outcome.measured}",
        "",
        "**Verdict.**",
        "",
    ]
    lines += [f"- {v.claim}: **{v.status}**. {v.numbers}" for v in outcome.verdicts]
    lines += ["", f"Overall: **{status}**.", ""]
    if outcome.figures:
        lines += ["Figures: " + ", ".join(f"[{f}]({f})" for f in outcome.figures), ""]
    lines += ["The table behind it: [results.csv](results.csv).", ""]
    return "\n".join(lines)


def run(name: str, quick: bool = True, out: str | Path | None = None, seeds: int = 1, *,
        overwrite: bool = False, data: Any = None, data_name: str | None = None, smoke: bool = False,
        progress: Callable[[str], None] | None = None, threads: int | None = None) -> Result:
    """Run the experiment ``name`` and write its files into ``out`` (default ``runs/experiments/NAME``).

    Args:
        quick: the quick mode (at most 5 minutes on 2 CPU cores); False runs the full mode.
        seeds: independent repetitions (seeds 0..N-1) where the experiment trains models.
        overwrite: replace what ``out`` holds (another experiment, or stray files).
        data: a ``cnnlab.data.Dataset`` to use instead of loading one (tests inject tiny data).
        data_name: the dataset to load when ``data`` is None (the experiment's default if None).
        smoke: a tiny mode for tests: seconds, and only the form of the result counts.
        progress: called with each finished step's key.
        threads: torch's CPU threads during the run (restored afterwards); None keeps torch's
            setting. On the shared 2-core machine one thread was 20x faster than two for these
            small models (4.5 vs 81 ms per full-batch MLP step, measured under load).
    """
    s = spec(name)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise CnnlabError(f"seeds must be an integer of at least 1; received seeds={seeds!r}")
    data_name = data_name or s.datasets[0]
    if data_name not in s.datasets:
        raise CnnlabError(f"the {name} experiment runs on {', '.join(s.datasets)}; received data={data_name!r}")
    out = Path(out) if out is not None else Path("runs") / "experiments" / name
    _check_out(out, name, overwrite)
    scale = "smoke" if smoke else ("quick" if quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER, json.dumps({"experiment": name}) + "\n")
    ctx = Context(name, out, scale, seeds, data, data_name, progress)
    started = time.perf_counter()
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise CnnlabError(f"threads must be a positive integer; received threads={threads!r}")
        torch.set_num_threads(threads)
    try:
        outcome = s.func(ctx)
    finally:
        torch.set_num_threads(before)
    seconds = time.perf_counter() - started
    status = combine(outcome.verdicts)
    write_csv(out / "results.csv", outcome.rows)
    atomic_write_text(out / "verdict.md", verdict_markdown(s, outcome, status, scale, seeds, seconds))
    return Result(name, scale, out, outcome.rows, outcome.verdicts, status, seconds,
                  [out / f for f in outcome.figures])
