"""The files of a run directory: checked before a run starts, written after each epoch.

A run directory holds ``config.json`` (the resolved config), ``init.pt`` (the initial weights),
``metrics.csv`` (one row per epoch), ``iterations.csv`` (the training loss, learning rate and
momentum every few steps), ``curves.png``, ``last.pt`` (the state to resume from, with
the best epoch's weights inside, and for several processes each one's RNG, guard and partial
sums under ``ranks``), ``best.pt`` (the weights ``cnnlab eval`` uses), ``spec.json``
for a model built from a layer list, and once finished ``summary.json``; ``.lock`` marks the
process writing it.

Order of the writes after an epoch (``save_epoch``): ``best.pt`` first (when the epoch is the
best), then ``last.pt``, which records the epoch ``best.pt`` holds and carries the best weights
itself. A kill between the two leaves a ``best.pt`` newer than ``last.pt``; resuming detects that
(``restore.repair_best``) and rebuilds ``best.pt`` from ``last.pt``, so both always agree.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_write_text
from cnnlab.train import checkpoint as ckpt
from cnnlab.train import distributed
from cnnlab.train.build import Run
from cnnlab.train.metrics import plot_curves, write_iterations_csv, write_metrics_csv

STEP_LOG = "steps.csv"
RUN_FILES = ("config.json", "metrics.csv", "summary.json", "curves.png", "spec.json", ckpt.LAST, ckpt.BEST, ckpt.INIT,
             STEP_LOG, "iterations.csv")


def killed_before_first_checkpoint(out: Path) -> bool:
    """``out`` holds the start of a run (config.json, init.pt) but no checkpoint and no summary:
    it was stopped before its first checkpoint, and the same command may start it again."""
    if not out.is_dir() or not (out / "config.json").exists():
        return False
    return not any((out / f).exists() for f in (ckpt.LAST, ckpt.BEST, "summary.json", "metrics.csv"))


def open_step_log(path: Path, step: int):
    """steps.csv for appending, after dropping rows past ``step`` (those of an interrupted stretch)."""
    header = "step,epoch,loss,lr\n"
    kept = []
    if path.exists():
        for line in path.read_text().splitlines()[1:]:
            try:
                if int(line.split(",")[0]) <= step:
                    kept.append(line + "\n")
            except ValueError:
                continue
    atomic_write_text(path, header + "".join(kept))
    return open(path, "a")


def sync_config_file(run: Run) -> None:
    """Rewrite config.json when a resumed run changed its runtime settings or its length."""
    path = run.out / "config.json"
    text = run.cfg.to_json()
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    atomic_write_text(path, text)


def save_mid_epoch(run: Run, *, batch: int, partial: dict[str, Any], guard_state: dict | None) -> None:
    """last.pt inside an epoch: the state after ``batch`` batches of epoch ``run.epoch + 1``
    (written by rank 0; every rank calls it); resuming continues with the next batch."""
    ranks = rank_states(run, guard_state, partial)
    if not run.info.is_main:
        return
    state = snapshot(run, guard_state, ranks)
    state.update(batch_in_epoch=batch, partial=partial)
    ckpt.save_checkpoint(run.out / ckpt.LAST, state)


def check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an output directory that holds another run (nothing is created or deleted here)."""
    holds_run = out.is_dir() and any((out / f).exists() for f in RUN_FILES)
    if resume:
        if not (out / ckpt.LAST).is_file():
            raise CnnlabError(f"cannot resume: {out} holds no {ckpt.LAST} checkpoint")
        return
    if out.exists() and not out.is_dir():
        raise CnnlabError(f"the output path {out} exists and is not a directory")
    if holds_run and not overwrite:
        raise CnnlabError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")


def start_run_dir(run: Run, *, overwrite: bool) -> None:
    """A fresh run: clear an overwritten run's files, write config.json, spec.json and init.pt."""
    out = run.out
    if overwrite:
        for f in RUN_FILES:
            (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", run.cfg.to_json())
    if run.layers is not None:
        atomic_write_text(out / "spec.json", json.dumps(run.layers, indent=2) + "\n")
    ckpt.save_checkpoint(out / ckpt.INIT, ckpt.model_checkpoint(_base_state(run, epoch=0)))


def _base_state(run: Run, *, epoch: int) -> dict[str, Any]:
    state = {"model": run.model.state_dict(), "config": run.cfg.to_dict(), "dataset": run.dataset,
             "epoch": epoch, "params": run.params}
    if run.layers is not None:
        state["spec"] = run.layers
    return state


def rank_states(run: Run, guard_state: dict | None, partial: dict[str, Any] | None = None) -> list | None:
    """What differs between the processes of a data-parallel run, as a list indexed by rank: each
    rank's RNG state (its dropout stream), divergence-guard state (its own losses) and, inside an
    epoch, its partial sums. A collective: every rank calls it. None for a single process."""
    if not run.info.enabled:
        return None
    own: dict[str, Any] = {"rng": ckpt.rng_state()}
    if guard_state is not None:
        own["guard"] = guard_state
    if partial is not None:
        own["partial"] = partial
    return distributed.all_gather(own, run.info)


def snapshot(run: Run, guard_state: dict | None = None, ranks: list | None = None) -> dict[str, Any]:
    """The full training state after ``run.epoch`` (what ``last.pt`` holds); ``ranks`` is
    ``rank_states`` of a data-parallel run."""
    state = _base_state(run, epoch=run.epoch)
    state.update(optimizer=run.optimizer.state_dict(), scheduler=run.schedule.state_dict(), rng=ckpt.rng_state(),
                 step=run.step, history=run.rows, best_metric=run.best_metric, best_epoch=run.best_epoch)
    if run.best_state is not None and run.best_epoch != run.epoch:  # else the best weights are "model"
        state["best_model"] = run.best_state
    if guard_state is not None:
        state["guard"] = guard_state
    if ranks is not None:
        state["ranks"] = ranks
    if run.ema is not None:
        state["ema"] = run.ema.state_dict()
    if run.scaler is not None:
        state["scaler"] = run.scaler.state_dict()
    if run.device.type == "cpu":  # a resumed run keeps it: another count sums floats in another order
        state["threads"] = torch.get_num_threads()
    return state


def best_checkpoint(run: Run, weights: dict[str, torch.Tensor], epoch: int) -> dict[str, Any]:
    state = _base_state(run, epoch=epoch)
    extra = {"ema": run.ema.state_dict()} if run.ema is not None else {}
    return ckpt.model_checkpoint(state, weights, best_metric=run.best_metric, monitor=run.monitor,
                                 selection=run.selection, **extra)


def save_epoch(run: Run, *, is_best: bool, guard_state: dict | None = None, writer=None) -> None:
    """Write the epoch's files (by rank 0; every rank calls it): best.pt (if best), last.pt,
    metrics.csv, curves.png."""
    ranks = rank_states(run, guard_state)
    if not run.info.is_main:
        return
    out = run.out
    if is_best:
        ckpt.save_checkpoint(out / ckpt.BEST, best_checkpoint(run, run.model.state_dict(), run.epoch))
    ckpt.save_checkpoint(out / ckpt.LAST, snapshot(run, guard_state, ranks))
    write_metrics_csv(out / "metrics.csv", run.rows)
    write_iterations_csv(out / "iterations.csv", run.rows)
    plot_curves(out / "curves.png", run.rows, title=f"{run.name} on {run.cfg.data}")
    if writer is not None:
        row = run.rows[-1]
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                writer.add_scalar(key, value, row["epoch"])
        writer.flush()


def write_summary(run: Run, summary: dict[str, Any]) -> None:
    if run.info.is_main:
        atomic_write_text(run.out / "summary.json", json.dumps(summary, indent=2) + "\n")
