"""Metrics: top-k accuracy, the per-epoch CSV, the per-iteration CSV, and the learning-curve plot."""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence

import torch

from cnnlab.fileio import atomic_open, atomic_write_text

METRIC_COLUMNS = ["epoch", "lr", "momentum", "train_loss", "train_top1", "val_loss", "val_top1", "test_loss",
                  "test_top1", "test_top5", "train_seconds", "images_per_second", "train_loss_with_aux"]
EMA_METRIC_COLUMNS = ["ema_val_top1", "ema_test_loss", "ema_test_top1", "ema_test_top5"]


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[torch.Tensor]:
    """How many rows have the target among their k highest logits, for each k (k capped at C)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (B, kmax)
    hits = top == target.unsqueeze(1)
    return [hits[:, :min(k, kmax)].any(dim=1).sum() for k in ks]


def write_metrics_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """Rewrite the whole CSV atomically (rows are few: one per epoch)."""
    buf = io.StringIO()
    columns = METRIC_COLUMNS + ([c for c in EMA_METRIC_COLUMNS if any(c in r for r in rows)])  # with --ema only
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    atomic_write_text(path, buf.getvalue())


def read_metrics_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


ITERATION_COLUMNS = ["step", "epoch", "train_loss", "lr", "momentum"]


def iteration_series(rows: list[dict]) -> dict[str, list]:
    """The per-iteration series of all epochs, joined: ``step`` (the global optimizer step at the
    end of each window), ``epoch``, ``train_loss`` (the window's mean training loss), ``lr`` and
    ``momentum`` (the values the optimizer holds after that step). Epochs without it are skipped."""
    out: dict[str, list] = {k: [] for k in ITERATION_COLUMNS}
    for row in rows:
        it = row.get("iterations")
        if not isinstance(it, dict):
            continue
        n = len(it.get("step", []))
        out["epoch"] += [row["epoch"]] * n
        for key in ("step", "train_loss", "lr", "momentum"):
            out[key] += list(it.get(key, [None] * n))
    return out


def write_iterations_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """``iterations.csv``: one line per recorded window (see ``iteration_series``), rewritten atomically."""
    series = iteration_series(rows)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(ITERATION_COLUMNS)
    for values in zip(*(series[k] for k in ITERATION_COLUMNS)):
        writer.writerow(["" if v is None else v for v in values])
    atomic_write_text(path, buf.getvalue())


def smooth(values: Sequence[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (the smoothing of TensorBoard's loss curves)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** i))
    return out


def _plot_iterations(ax_loss, ax_lr, series: dict[str, list]) -> None:
    steps, loss = series["step"], series["train_loss"]
    ax_loss.plot(steps, loss, color="tab:blue", alpha=0.25, lw=1, label="window mean")
    ax_loss.plot(steps, smooth(loss), color="tab:blue", lw=1.8, label="smoothed")
    ax_loss.set(xlabel="iteration", ylabel="training loss", title="training loss per iteration")
    if min(loss) > 0 and max(loss) / min(loss) > 20:
        ax_loss.set_yscale("log")
    ax_lr.plot(steps, series["lr"], color="tab:red", lw=1.8, label="learning rate")
    ax_lr.set(xlabel="iteration", ylabel="learning rate", title="learning rate and momentum per iteration")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    handles = ax_lr.get_lines()
    if any(m is not None for m in series["momentum"]):
        ax_m = ax_lr.twinx()
        ax_m.plot(steps, [float("nan") if m is None else m for m in series["momentum"]], color="tab:green",
                  lw=1.5, ls="--", label="momentum (Adam: beta1)")
        ax_m.set_ylabel("momentum")
        handles = handles + ax_m.get_lines()
    ax_lr.legend(handles, [h.get_label() for h in handles], loc="best")
    for ax in (ax_loss, ax_lr):
        ax.grid(alpha=0.3)
    ax_loss.legend()


def plot_curves(path: str | os.PathLike, rows: list[dict], title: str = "") -> None:
    """Train/validation/test loss and accuracy per epoch: the lecture's over/underfitting picture;
    below them, when the rows carry it, the training loss (smoothed) and the learning rate and
    momentum per iteration, so that a one-epoch run is a curve and a schedule's shape is visible."""
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in rows]
    series = iteration_series(rows)
    if series["step"]:
        fig = Figure(figsize=(10, 8))  # no pyplot: the global backend stays as the caller set it
        (ax_loss, ax_acc), (ax_it, ax_lr) = fig.subplots(2, 2)
        _plot_iterations(ax_it, ax_lr, series)
    else:
        fig = Figure(figsize=(10, 4))
        ax_loss, ax_acc = fig.subplots(1, 2)
    for split, style in (("train", "o-"), ("val", "s--"), ("test", "^-")):
        if all(r.get(f"{split}_loss") is not None for r in rows):
            ax_loss.plot(epochs, [r[f"{split}_loss"] for r in rows], style, label=split)
            ax_acc.plot(epochs, [100 * r[f"{split}_top1"] for r in rows], style, label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        if len(epochs) < 15:
            ax.set_xticks(epochs)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
