"""Metrics: top-k accuracy, the per-epoch CSV, and the learning-curve plot."""
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


def plot_curves(path: str | os.PathLike, rows: list[dict], title: str = "") -> None:
    """Train/validation/test loss and accuracy per epoch: the lecture's over/underfitting picture."""
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(10, 4))  # no pyplot: the global backend stays as the caller set it
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
