"""Figures for the experiments and for ``cnnlab compare``, drawn on ``matplotlib.figure.Figure``
(no pyplot, no global backend switch) and saved atomically.

    >>> fig, axes = figure(1, 2)
    >>> axes[0].plot([1, 2, 3], [3, 1, 2], label="test risk")
    >>> save(fig, "out/curve.png")
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_write_bytes


def figure(rows: int = 1, cols: int = 1, *, size: tuple[float, float] | None = None):
    """A Figure and a flat list of its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size or (4.2 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def save(fig, path: str | os.PathLike, *, dpi: int = 90) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a training run's ``metrics.csv``."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise CnnlabError(f"{str(run_dir)[:200]} holds no metrics.csv; give directories written by `cnnlab train`")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_runs(run_dirs: Sequence[str | os.PathLike], path: str | os.PathLike, *, metric: str = "test_top1",
              labels: Sequence[str] | None = None, x: str = "epoch", title: str = "") -> None:
    """Several runs' ``metric`` against ``x`` (columns of their metrics.csv) on one figure."""
    if not run_dirs:
        raise CnnlabError("compare needs at least one run directory; received none")
    labels = list(labels) if labels is not None else [Path(r).name or str(r) for r in run_dirs]
    if len(labels) != len(run_dirs):
        raise CnnlabError(f"{len(run_dirs)} runs need {len(run_dirs)} labels; received {len(labels)}")
    series = []
    for run, label in zip(run_dirs, labels):
        rows = read_metrics(run)
        columns = list(rows[0]) if rows else []
        if metric not in columns or x not in columns:
            missing = metric if metric not in columns else x
            raise CnnlabError(f"{str(run)[:200]}/metrics.csv has no column {missing!r}; it has: {', '.join(columns)}")
        pts = [(float(r[x]), float(r[metric])) for r in rows if r[metric] not in ("", None) and r[x] not in ("", None)]
        series.append((label, pts))
    fig, (ax,) = figure(size=(6, 4))
    for label, pts in series:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=label)
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} per {x}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)
