"""The training loop: ``fit(config, out_dir)`` trains, evaluates, logs and checkpoints a run.

    >>> from cnnlab.train import TrainConfig, fit, evaluate_checkpoint
    >>> summary = fit(TrainConfig(model="lenet5", data="mnist", epochs=3), "runs/lenet5")
    >>> evaluate_checkpoint("runs/lenet5")["test_top1"]

A run directory holds ``config.json`` (the resolved config), ``metrics.csv`` (one row per epoch),
``curves.png`` (loss and accuracy per epoch), ``last.pt`` (the state to resume from) and
``best.pt`` (the weights ``cnnlab eval`` uses) and, once finished, ``summary.json``. Every file is
written atomically, by rank 0 only when several processes train together.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab import data as cdata
from cnnlab import models
from cnnlab.data.augment import parse_augment
from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_write_text
from cnnlab.inspect import check_input_size
from cnnlab.train import checkpoint as ckpt
from cnnlab.train import distributed
from cnnlab.train.bn import precise_bn, train_only_bn
from cnnlab.train.config import TrainConfig
from cnnlab.train.engine import build_model, classification_loss, evaluate, resolve_device, use_channels_last
from cnnlab.train.metrics import plot_curves, write_metrics_csv
from cnnlab.train.optim import l2_penalty, make_optimizer
from cnnlab.train.schedules import make_schedule

Log = Callable[[str], None]
RUN_FILES = ("config.json", "metrics.csv", "summary.json", "curves.png", ckpt.LAST, ckpt.BEST)


class TrainingDiverged(CnnlabError):
    """The loss became NaN or infinite."""


def _check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
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


def _make_out_dir(out: Path, *, overwrite: bool) -> None:
    if overwrite:
        for f in RUN_FILES:
            (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, leave=True,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.25)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise CnnlabError("--tensorboard needs the tensorboard package; install it with "
                          "`python -m pip install tensorboard`") from None
    return SummaryWriter(str(out / "tensorboard"))


def fit(
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    dataset: cdata.Dataset | None = None,
    log: Log | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``out_dir`` and return the run's summary (also saved as summary.json).

    Args:
        resume: continue the run in ``out_dir`` from its ``last.pt`` (the saved config must match).
        overwrite: replace a run that ``out_dir`` already holds.
        progress: show a progress bar on stderr.
        dataset: an already loaded dataset (else ``cfg.data`` is loaded from the cache).
        log: called with one line per event (epoch results, data fetching).
        stop_after_epoch: stop (as if interrupted) after this epoch; for tests and experiments.

    Launched by torchrun (WORLD_SIZE > 1), every process calls ``fit`` with the same config and
    trains its shard of each batch (see ``cnnlab.train.distributed``).
    """
    cfg.validate()
    info = distributed.from_env()
    device = resolve_device(distributed.device_for(info, cfg.device))
    started = not (info.enabled and torch.distributed.is_initialized())
    distributed.init(info, device)
    try:
        distributed.check_same_config(cfg.to_dict(), info)
        return _fit(cfg, Path(out_dir), info, device, resume=resume, overwrite=overwrite,
                    progress=progress and info.is_main, dataset=dataset,
                    log=(log if log is not None and info.is_main else (lambda message: None)),
                    stop_after_epoch=stop_after_epoch)
    finally:
        if started:
            distributed.shutdown()


def _fit(cfg: TrainConfig, out: Path, info: distributed.Dist, device: torch.device, *, resume: bool,
         overwrite: bool, progress: bool, dataset: cdata.Dataset | None, log: Log,
         stop_after_epoch: int | None) -> dict[str, Any]:
    _check_out_dir(out, resume=resume, overwrite=overwrite)
    state = None
    if resume:
        state = ckpt.load_checkpoint(out / ckpt.LAST)
        saved = TrainConfig.from_dict(state["config"])
        differ = [k for k, v in cfg.to_dict().items() if saved.to_dict()[k] != v]
        if differ:
            raise CnnlabError(f"cannot resume {out} with a different config ({', '.join(differ)} changed); "
                              f"a resumed run keeps the config it was started with")
    if info.enabled and cfg.batch_size < info.world_size:
        raise CnnlabError(f"a batch of {cfg.batch_size} cannot be split over {info.world_size} processes")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)

    ds = dataset if dataset is not None else cdata.load_dataset(cfg.data, cfg.data_root, log=log)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, ds.num_classes, ds.input_size)
    check_input_size(model, ds.input_size, name=cfg.model)  # a clear error before any computation
    if cfg.train_only == "bn":
        train_only_bn(model)
    channels_last = use_channels_last(cfg, model)

    # --- data: uint8 in memory, batched by permutation, augmented per batch -----------------------
    train_x, train_y = ds.train_x, ds.train_y
    common = dict(mean=ds.mean, std=ds.std, device=device, channels_last=channels_last)
    shard = dict(rank=info.rank, world_size=info.world_size)
    val_loader = None
    if cfg.val_split > 0:
        (train_x, train_y), (val_x, val_y) = cdata.split_validation(train_x, train_y, cfg.val_split, cfg.seed)
        val_loader = cdata.BatchLoader(val_x, val_y, batch_size=cfg.eval_batch_size, shuffle=False, **common, **shard)
    train_loader = cdata.BatchLoader(train_x, train_y, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                                     augment=parse_augment(cfg.augment), num_classes=ds.num_classes,
                                     **common, **shard)
    test_loader = cdata.BatchLoader(ds.test_x, ds.test_y, batch_size=cfg.eval_batch_size, shuffle=False,
                                    **common, **shard)
    # precise BN reads the plain training images; every rank reads all of them, so all agree.
    bn_loader = cdata.BatchLoader(train_x, train_y, batch_size=cfg.eval_batch_size, shuffle=True,
                                  seed=cfg.seed, **common)

    # --- model, optimizer, schedule ----------------------------------------------------------------
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, no_decay_bias_bn=cfg.no_decay_bias_bn,
                               betas=(cfg.beta1, cfg.beta2))
    schedule = make_schedule(optimizer, cfg.schedule, epochs=cfg.epochs, steps_per_epoch=len(train_loader),
                             interval=cfg.schedule_interval, warmup=cfg.warmup, step_size=cfg.step_size,
                             milestones=tuple(cfg.milestones), gamma=cfg.gamma, eta_min=cfg.eta_min,
                             pct_start=cfg.pct_start, momentum_ramp=cfg.momentum_ramp)
    train_model: nn.Module = model
    if info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)

    rows: list[dict] = []
    start_epoch, step, best_metric, best_epoch = 1, 0, -math.inf, 0
    best_state: dict[str, torch.Tensor] | None = None
    if state is not None:
        ckpt.load_model_state(model, state, out / ckpt.LAST)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        rows = list(state["history"])
        start_epoch, step, best_metric = state["epoch"] + 1, state["step"], state["best_metric"]
        best_epoch = state.get("best_epoch", 0)
        if (out / ckpt.BEST).is_file():
            best_state = ckpt.load_checkpoint(out / ckpt.BEST)["model"]
        log(f"resuming {out} after epoch {state['epoch']}")
    elif info.is_main:
        _make_out_dir(out, overwrite=overwrite)  # only once the run is known to be able to start
        atomic_write_text(out / "config.json", cfg.to_json())
    distributed.barrier(info)

    writer = _tensorboard(out) if cfg.tensorboard and info.is_main else None
    n_params = models.count_params(model)
    dataset_meta = {"name": ds.name, "num_classes": ds.num_classes, "input_size": list(ds.input_size),
                    "mean": list(ds.mean), "std": list(ds.std)}
    monitor = "val_top1" if val_loader is not None else "test_top1"
    compile_seconds = None
    stopped_early = False
    model.train()
    for epoch in range(start_epoch, cfg.epochs + 1):
        train_loader.set_epoch(epoch)
        row: dict[str, Any] = {"epoch": epoch, "lr": schedule.lr, "momentum": schedule.momentum}
        stats = _train_epoch(cfg, train_model, model, train_loader, optimizer, schedule, info, progress,
                             desc=f"epoch {epoch}/{cfg.epochs}", step=step, out=out)
        step = stats.pop("step")
        first_step_seconds = stats.pop("first_step_seconds")
        if cfg.compile and compile_seconds is None:
            compile_seconds = first_step_seconds  # the first step compiles the model
        row.update(stats)
        schedule.after_epoch()
        if cfg.precise_bn and epoch == cfg.epochs:
            precise_bn(model, bn_loader, num_batches=cfg.precise_bn_batches, progress=progress)
        _evaluate_into(row, model, val_loader, test_loader, info, cfg.amp)
        rows.append(row)
        log(_epoch_line(row))

        is_best = row[monitor] > best_metric
        if is_best:
            best_metric, best_epoch = row[monitor], epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if cfg.early_stopping is not None and epoch - best_epoch >= cfg.early_stopping and epoch < cfg.epochs:
            stopped_early = True
        snapshot = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
            "rng": ckpt.rng_state(), "epoch": epoch, "step": step, "config": cfg.to_dict(),
            "dataset": dataset_meta, "history": rows, "best_metric": best_metric, "best_epoch": best_epoch,
            "params": n_params,
        }
        if info.is_main:
            ckpt.save_checkpoint(out / ckpt.LAST, snapshot)
            if is_best:
                ckpt.save_checkpoint(out / ckpt.BEST, snapshot)
            write_metrics_csv(out / "metrics.csv", rows)
            plot_curves(out / "curves.png", rows, title=f"{cfg.model} on {cfg.data}")
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch" and value is not None:
                        writer.add_scalar(key, value, epoch)
                writer.flush()
        if stopped_early:
            log(f"early stopping: no better {monitor.replace('_', ' ')} for {cfg.early_stopping} epochs; "
                f"restoring the weights of epoch {best_epoch}")
            break
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg.epochs:
            distributed.barrier(info)
            return {"interrupted_after_epoch": epoch}
    if writer is not None:
        writer.close()

    final = rows[-1]
    if stopped_early and best_state is not None:
        # The lecture's "stop there!": the weights of the best validation epoch are the result.
        model.load_state_dict(best_state)
        if cfg.precise_bn:
            precise_bn(model, bn_loader, num_batches=cfg.precise_bn_batches, progress=progress)
        final = {"epoch": best_epoch}
        _evaluate_into(final, model, val_loader, test_loader, info, cfg.amp)
        if info.is_main:
            best = ckpt.load_checkpoint(out / ckpt.BEST)
            ckpt.save_checkpoint(out / ckpt.BEST, {**best, "model": model.state_dict()})
    summary = {
        "model": cfg.model, "data": cfg.data, "params": n_params, "epochs": cfg.epochs,
        "epochs_run": rows[-1]["epoch"], "stopped_early": stopped_early, "final_epoch": final["epoch"],
        "test_top1": final["test_top1"], "test_top5": final["test_top5"], "test_loss": final["test_loss"],
        "best_epoch": best_epoch, "best_chosen_on": monitor,
        "train_seconds": round(sum(r["train_seconds"] for r in rows), 3), "compile_seconds": compile_seconds,
        "processes": info.world_size, "out_dir": str(out), "config": cfg.to_dict(),
    }
    if info.is_main:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    distributed.barrier(info)
    return summary


def _train_epoch(cfg: TrainConfig, train_model: nn.Module, model: nn.Module, loader: cdata.BatchLoader,
                 optimizer: torch.optim.Optimizer, schedule, info: distributed.Dist, progress: bool, *,
                 desc: str, step: int, out: Path) -> dict[str, Any]:
    """One pass over the training set; returns the epoch's training metrics (summed over ranks)."""
    device = loader.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    params = [p for p in model.parameters() if p.requires_grad]
    bar = _progress_bar(len(loader), desc, progress)
    first_step = None
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        t_step = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16"):
            output = train_model(x)
            ce, logits = classification_loss(output, y, cfg.label_smoothing)
        loss = ce + l2_penalty(model, cfg.l2, no_decay_bias_bn=cfg.no_decay_bias_bn) if cfg.l2 else ce
        value = loss.item()
        bad = not math.isfinite(value)
        if info.enabled:  # every rank must stop together, or the others would wait forever
            bad = distributed.all_sum([float(bad)], info, device)[0] > 0
        if bad:
            bar.close()
            kept = f"the last good checkpoint is {out / ckpt.LAST}" if (out / ckpt.LAST).exists() \
                else "no checkpoint was written yet"
            raise TrainingDiverged(f"the loss became {value} at step {step + 1} ({desc.replace('/', ' of ')}); "
                                   f"{kept}; try a lower learning rate (lr={cfg.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        schedule.after_iteration()
        step += 1
        labels = y if y.ndim == 1 else y.argmax(1)  # soft targets (mixup/cutmix): their main class
        loss_sum += ce.detach().double() * len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += len(labels)
        if first_step is None:
            first_step = time.perf_counter() - t_step
        bar.update(1)
        if progress and (i % 20 == 0 or i == len(loader) - 1):
            elapsed = time.perf_counter() - t0
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.2%}",
                            img_s=f"{seen * info.world_size / max(elapsed, 1e-9):,.0f}", refresh=False)
    seconds = time.perf_counter() - t0
    bar.close()
    if cfg.compile and first_step is not None:
        seconds -= first_step  # compile time is reported separately (summary: compile_seconds)
    total_loss, total_correct, total_seen = distributed.all_sum([loss_sum.item(), correct.item(), seen], info, device)
    return {"train_loss": total_loss / total_seen, "train_top1": total_correct / total_seen,
            "train_seconds": round(seconds, 4), "images_per_second": round(total_seen / seconds, 1),
            "step": step, "first_step_seconds": first_step}


def _evaluate_into(row: dict, model: nn.Module, val_loader, test_loader, info: distributed.Dist,
                   amp: str | None) -> None:
    if val_loader is not None:
        v = evaluate(model, val_loader, info=info, amp=amp)
        row.update(val_loss=v["loss"], val_top1=v["top1"])
    t = evaluate(model, test_loader, info=info, amp=amp)
    row.update(test_loss=t["loss"], test_top1=t["top1"], test_top5=t["top5"])


def _epoch_line(row: dict) -> str:
    parts = [f"epoch {row['epoch']}", f"train loss {row['train_loss']:.4f}", f"acc {row['train_top1']:.2%}"]
    if row.get("val_top1") is not None:
        parts.append(f"val acc {row['val_top1']:.2%}")
    parts += [f"test loss {row['test_loss']:.4f}", f"test acc {row['test_top1']:.2%}",
              f"top-5 {row['test_top5']:.2%}", f"{row['train_seconds']:.1f} s",
              f"{row['images_per_second']:,.0f} img/s"]
    return " | ".join(parts)
