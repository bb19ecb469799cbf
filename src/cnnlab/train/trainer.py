"""The training loop: ``fit(config, out_dir)`` trains, evaluates, logs and checkpoints a run.

    >>> from cnnlab.train import TrainConfig, fit, evaluate_checkpoint
    >>> summary = fit(TrainConfig(model="lenet5", data="mnist", epochs=3), "runs/lenet5")
    >>> evaluate_checkpoint("runs/lenet5")["test_top1"]

A run directory holds ``config.json`` (the resolved config), ``metrics.csv`` (one row per epoch),
``curves.png`` (loss and accuracy per epoch), ``last.pt`` and ``best.pt`` (checkpoints) and, once
finished, ``summary.json``. Every file is written atomically.
"""
from __future__ import annotations

import inspect as pyinspect
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import data as cdata
from cnnlab import models
from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_write_text
from cnnlab.inspect import check_input_size
from cnnlab.train import checkpoint as ckpt
from cnnlab.train.config import TrainConfig
from cnnlab.train.metrics import plot_curves, topk_correct, write_metrics_csv

Log = Callable[[str], None]
RUN_FILES = ("config.json", "metrics.csv", "summary.json", "curves.png", ckpt.LAST, ckpt.BEST)
AUX_WEIGHT = 0.3  # GoogLeNet's auxiliary classifiers (Szegedy et al. 2014, sec. 5)


class TrainingDiverged(CnnlabError):
    """The loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CnnlabError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnlabError(f"device {name!r} was asked for, but CUDA is not available on this machine")
    return device


def build_model(cfg: TrainConfig, num_classes: int, input_size: tuple[int, int, int]) -> nn.Module:
    """The configured model for a dataset with ``num_classes`` classes of ``input_size`` images."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_channels": input_size[0], **cfg.model_args}
    builder = models.info(cfg.model).builder
    if "input_size" in pyinspect.signature(builder).parameters and "input_size" not in kwargs:
        kwargs["input_size"] = input_size[1]  # models with a fixed flatten size (LeNet-5, MLP)
    return models.create(cfg.model, backend=cfg.backend, init=cfg.init, **kwargs)


def use_channels_last(cfg: TrainConfig, model: nn.Module) -> bool:
    """``cfg.channels_last``, or when it is None: NHWC for models without batch norm, where it was
    measured faster on the CPU (BatchNorm's CPU kernels are slower in NHWC)."""
    if cfg.channels_last is not None:
        return cfg.channels_last
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # AdamW is Adam with decoupled weight decay; with weight_decay=0 the two are the same update.
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle" and total >= 4:  # shorter runs have no room for a warm-up
        # Smith & Topin 2017: warm up to lr over 25% of the steps (at least two), then
        # cosine-anneal to lr/1e4.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total, pct_start=max(0.25, 2 / total))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def classification_loss(output: Any, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy; a model that returns (logits, *aux_logits) in training adds 0.3 x each aux loss."""
    if isinstance(output, tuple):
        logits, *aux = output
        loss = F.cross_entropy(logits, target)
        for a in aux:
            if a is not None:
                loss = loss + AUX_WEIGHT * F.cross_entropy(a, target)
        return loss, logits
    return F.cross_entropy(output, target), output


@torch.inference_mode()
def evaluate(model: nn.Module, loader: cdata.BatchLoader) -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 accuracy of ``model`` over ``loader``, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=loader.device)
    top1 = torch.zeros((), dtype=torch.int64, device=loader.device)
    top5 = torch.zeros((), dtype=torch.int64, device=loader.device)
    for x, y in loader:
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        c1, c5 = topk_correct(logits, y, (1, 5))
        top1 += c1
        top5 += c5
    model.train(was_training)
    n = loader.num_samples
    return {"loss": loss_sum.item() / n, "top1": top1.item() / n, "top5": top5.item() / n}


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
    """
    log = log or (lambda message: None)
    cfg.validate()
    out = Path(out_dir)
    _check_out_dir(out, resume=resume, overwrite=overwrite)
    state = None
    if resume:
        state = ckpt.load_checkpoint(out / ckpt.LAST)
        saved = TrainConfig.from_dict(state["config"])
        differ = [k for k, v in cfg.to_dict().items() if saved.to_dict()[k] != v]
        if differ:
            raise CnnlabError(f"cannot resume {out} with a different config ({', '.join(differ)} changed); "
                              f"a resumed run keeps the config it was started with")
    device = resolve_device(cfg.device)

    ds = dataset if dataset is not None else cdata.load_dataset(cfg.data, cfg.data_root, log=log)
    train_x, train_y = ds.train_x, ds.train_y
    val_loader = None
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, ds.num_classes, ds.input_size)
    check_input_size(model, ds.input_size, name=cfg.model)  # a clear error before any computation
    channels_last = use_channels_last(cfg, model)
    common = dict(mean=ds.mean, std=ds.std, device=device, channels_last=channels_last)
    if cfg.val_split > 0:
        (train_x, train_y), (val_x, val_y) = cdata.split_validation(train_x, train_y, cfg.val_split, cfg.seed)
        val_loader = cdata.BatchLoader(val_x, val_y, batch_size=cfg.eval_batch_size, shuffle=False, **common)
    train_loader = cdata.BatchLoader(train_x, train_y, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                                     **common)
    test_loader = cdata.BatchLoader(ds.test_x, ds.test_y, batch_size=cfg.eval_batch_size, shuffle=False, **common)

    if not resume:
        _make_out_dir(out, overwrite=overwrite)  # only once the run is known to be able to start
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, len(train_loader))
    rows: list[dict] = []
    start_epoch, step, best_metric = 1, 0, -math.inf
    if state is not None:
        ckpt.load_model_state(model, state, out / ckpt.LAST)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        rows = list(state["history"])
        start_epoch, step, best_metric = state["epoch"] + 1, state["step"], state["best_metric"]
        log(f"resuming {out} after epoch {state['epoch']}")
    else:
        atomic_write_text(out / "config.json", cfg.to_json())

    n_params = models.count_params(model)
    dataset_meta = {"name": ds.name, "num_classes": ds.num_classes, "input_size": list(ds.input_size),
                    "mean": list(ds.mean), "std": list(ds.std)}
    model.train()
    for epoch in range(start_epoch, cfg.epochs + 1):
        train_loader.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        bar = _progress_bar(len(train_loader), f"epoch {epoch}/{cfg.epochs}", progress)
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(train_loader):
            output = model(x)
            loss, logits = classification_loss(output, y)
            value = loss.item()
            if not math.isfinite(value):
                bar.close()
                kept = f"the last good checkpoint is {out / ckpt.LAST}" if (out / ckpt.LAST).exists() \
                    else "no checkpoint was written yet"
                raise TrainingDiverged(f"the loss became {value} at step {step + 1} (epoch {epoch}); "
                                       f"{kept}; try a lower learning rate (lr={cfg.lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            bar.update(1)
            if i % 20 == 0 or i == len(train_loader) - 1:
                elapsed = time.perf_counter() - t0
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.2%}",
                                img_s=f"{seen / max(elapsed, 1e-9):,.0f}", refresh=False)
        train_seconds = time.perf_counter() - t0
        bar.close()

        row = {"epoch": epoch, "lr": lr, "train_loss": loss_sum.item() / seen, "train_top1": correct.item() / seen,
               "train_seconds": round(train_seconds, 4), "images_per_second": round(seen / train_seconds, 1)}
        if val_loader is not None:
            v = evaluate(model, val_loader)
            row.update(val_loss=v["loss"], val_top1=v["top1"])
        t = evaluate(model, test_loader)
        row.update(test_loss=t["loss"], test_top1=t["top1"], test_top5=t["top5"])
        rows.append(row)
        log(_epoch_line(row))

        # "best" is chosen on the validation split when there is one, else on test top-1.
        metric = row["val_top1"] if val_loader is not None else row["test_top1"]
        is_best = metric > best_metric
        best_metric = max(best_metric, metric)
        snapshot = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": ckpt.rng_state(), "epoch": epoch, "step": step, "config": cfg.to_dict(),
            "dataset": dataset_meta, "history": rows, "best_metric": best_metric, "params": n_params,
        }
        ckpt.save_checkpoint(out / ckpt.LAST, snapshot)
        if is_best:
            ckpt.save_checkpoint(out / ckpt.BEST, snapshot)
        write_metrics_csv(out / "metrics.csv", rows)
        plot_curves(out / "curves.png", rows, title=f"{cfg.model} on {cfg.data}")
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg.epochs:
            return {"interrupted_after_epoch": epoch}

    final = rows[-1]
    best = max(rows, key=lambda r: r["val_top1"] if val_loader is not None else r["test_top1"])
    summary = {
        "model": cfg.model, "data": cfg.data, "params": n_params, "epochs": cfg.epochs,
        "test_top1": final["test_top1"], "test_top5": final["test_top5"], "test_loss": final["test_loss"],
        "best_epoch": best["epoch"], "train_seconds": round(sum(r["train_seconds"] for r in rows), 3),
        "out_dir": str(out), "config": cfg.to_dict(),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _epoch_line(row: dict) -> str:
    parts = [f"epoch {row['epoch']}", f"train loss {row['train_loss']:.4f}", f"acc {row['train_top1']:.2%}"]
    if row.get("val_top1") is not None:
        parts.append(f"val acc {row['val_top1']:.2%}")
    parts += [f"test loss {row['test_loss']:.4f}", f"test acc {row['test_top1']:.2%}",
              f"top-5 {row['test_top5']:.2%}", f"{row['train_seconds']:.1f} s",
              f"{row['images_per_second']:,.0f} img/s"]
    return " | ".join(parts)


def load_model(path: str | os.PathLike, *, device: str = "cpu", backend: str | None = None
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint (or run directory) with its weights, in eval mode."""
    file = ckpt.resolve(path)
    state = ckpt.load_checkpoint(file)
    cfg = TrainConfig.from_dict(state["config"])
    if backend is not None:
        cfg = cfg.updated({"backend": backend})
    meta = state["dataset"]
    model = build_model(cfg, meta["num_classes"], tuple(meta["input_size"]))
    ckpt.load_model_state(model, state, file)
    return model.to(resolve_device(device)).eval(), state


def evaluate_checkpoint(
    path: str | os.PathLike,
    *,
    data: str | None = None,
    data_root: str | None = None,
    batch_size: int = 1000,
    device: str = "cpu",
    dataset: cdata.Dataset | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Top-1, top-5 and loss of a checkpoint on the test set of its dataset (or of ``data``)."""
    model, state = load_model(path, device=device)
    meta = state["dataset"]
    ds = dataset if dataset is not None else cdata.load_dataset(data or meta["name"], data_root, log=log)
    if ds.num_classes != meta["num_classes"] or list(ds.input_size) != list(meta["input_size"]):
        raise CnnlabError(
            f"the checkpoint was trained on {meta['name']} ({meta['num_classes']} classes of "
            f"{'x'.join(map(str, meta['input_size']))}); {ds.name} has {ds.num_classes} classes of "
            f"{'x'.join(map(str, ds.input_size))}")
    cfg = TrainConfig.from_dict(state["config"])
    channels_last = use_channels_last(cfg, model)
    loader = cdata.BatchLoader(ds.test_x, ds.test_y, batch_size=batch_size, shuffle=False, mean=ds.mean,
                               std=ds.std, device=resolve_device(device), channels_last=channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    result = evaluate(model, loader)
    return {"checkpoint": str(ckpt.resolve(path)), "model": cfg.model, "data": ds.name, "epoch": state["epoch"],
            "test_top1": result["top1"], "test_top5": result["top5"], "test_loss": result["loss"],
            "samples": len(ds.test_y)}
