"""The training loop: ``fit(config, out_dir)`` trains, evaluates, logs and checkpoints a run.

    >>> from cnnlab.train import TrainConfig, fit, evaluate_checkpoint
    >>> summary = fit(TrainConfig(model="lenet5", data="mnist", epochs=3), "runs/lenet5")
    >>> evaluate_checkpoint("runs/lenet5")["test_top1"]

The parts, in the order a run uses them: ``build.build_run`` assembles the model, loaders,
optimizer, schedule and wrappers; ``restore.restore_run`` fills them from ``last.pt`` when
resuming; ``_loop`` below trains epoch after epoch (``_train_epoch``: forward, loss, divergence
watch, backward, clip, step, schedule), evaluates and hands each epoch to ``rundir.save_epoch``.
The run directory's files are described in ``cnnlab.train.rundir``; every file is written
atomically, by rank 0 only when several processes train together, under a lock that keeps a
second writer out. Torch's global settings (threads, deterministic algorithms, the global RNG)
are restored when ``fit`` returns.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cnnlab import data as cdata
from cnnlab.errors import CnnlabError
from cnnlab.fileio import DirLock, clean_stale_temps
from cnnlab.train import checkpoint as ckpt
from cnnlab.train import distributed
from cnnlab.train.bn import precise_bn
from cnnlab.train.accumulate import micro_batches, no_sync_unless
from cnnlab.train.build import Run, build_run, load_data, steps_per_epoch, warnings_for
from cnnlab.train.config import TrainConfig, max_threads
from cnnlab.train.engine import classification_loss, evaluate, main_loss, resolve_device
from cnnlab.train.guard import DivergenceGuard, TrainingDiverged
from cnnlab.train.optim import l2_penalty
from cnnlab.train.restore import check_resume_config, read_resume_state, restore_run
from cnnlab.train.rundir import (RUN_FILES, check_out_dir, killed_before_first_checkpoint, save_epoch, save_mid_epoch,
                                 start_run_dir, sync_config_file, write_summary)
from cnnlab.train.sharding import DROPOUT_STREAM, rank_seed
from cnnlab.train.steps import StepExtras, check_amp
from cnnlab.threads import ThroughputWatch, available_cpus, default_threads, machine_load

Log = Callable[[str], None]

__all__ = ["RUN_FILES", "TrainingDiverged", "fit", "torch_settings"]


@contextlib.contextmanager
def torch_settings(threads: int | None, deterministic: bool) -> Iterator[None]:
    """Set torch's thread count and deterministic mode for a block; restore them, the
    ``CUBLAS_WORKSPACE_CONFIG`` variable and the global RNG state afterwards."""
    saved_threads = torch.get_num_threads()
    saved_det = torch.are_deterministic_algorithms_enabled()
    saved_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    saved_env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            if threads:
                torch.set_num_threads(threads)
            if deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True)
            yield
        finally:
            torch.set_num_threads(saved_threads)
            torch.use_deterministic_algorithms(saved_det, warn_only=saved_warn)
            if saved_env is None:
                os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
            else:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved_env


def threads_for(cfg: TrainConfig, device: torch.device, info: distributed.Dist = distributed.SINGLE) -> int | None:
    """torch's thread count for a run: ``cfg.threads`` when set; on the CPU by default the cores this
    process may use less those other processes keep busy (``cnnlab.threads.default_threads``),
    shared among the processes of a data-parallel run; on a GPU torch's own choice (None)."""
    if cfg.threads is not None:
        return cfg.threads
    if device.type != "cpu":
        return None
    return max(1, default_threads() // max(1, info.world_size if info.enabled else 1))


def _threads_of_the_run(out: Path) -> int | None:
    """The thread count a run started with (recorded in its last.pt), or None."""
    try:
        value = ckpt.load_checkpoint(out / ckpt.LAST).get("threads")
    except CnnlabError:
        return None  # a missing or bad last.pt is reported, in one sentence, by the resume itself
    return value if isinstance(value, int) and 1 <= value <= max_threads() else None


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, leave=True,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.25)


def _tensorboard_available() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise CnnlabError("--tensorboard needs the tensorboard package; install it with "
                          "`python -m pip install tensorboard`") from None


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
    model: torch.nn.Module | None = None,
    log: Log | None = None,
    stop_after_epoch: int | None = None,
    stop_after_step: int | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``out_dir`` and return the run's summary (also saved as summary.json).

    Args:
        resume: continue the run in ``out_dir`` from its ``last.pt`` (the saved config must match).
        overwrite: replace a run that ``out_dir`` already holds.
        progress: show a progress bar on stderr.
        dataset: an already loaded dataset (else ``cfg.data`` is loaded from the cache or the image
            folder): a built-in one, an image folder (``cnnlab.data.folder.load_folder``) or one of
            your own (``cnnlab.data.own.from_torch_datasets``); the run records its name, class names
            and preprocessing, so ``cnnlab eval``/``predict``/``export`` work on the run.
        model: a ``torch.nn.Module`` of your own to train instead of ``cfg.model``; the run records
            its import path (``module:Class``), so the CLI can rebuild it when that is importable.
        log: called with one line per event (epoch results, data fetching, warnings).
        stop_after_epoch: stop (as if interrupted) after this epoch; for tests and experiments.
        stop_after_step: stop (as if killed) right after this optimizer step; for tests.

    Raises ``CnnlabError`` for a bad config or run directory (nothing is written then),
    ``TrainingDiverged`` when the loss or the weights stop being finite or the loss explodes.

    Launched by torchrun (WORLD_SIZE > 1), every process calls ``fit`` with the same config and
    trains its shard of each batch (see ``cnnlab.train.distributed``).
    """
    own_data = dataset is not None and dataset.name not in cdata.SPECS
    if own_data and cfg.data != dataset.name:
        cfg = dataclasses.replace(cfg, data=dataset.name)  # the run is labelled with its own data
    if model is not None:
        cls = type(model)
        cfg = dataclasses.replace(cfg, model=f"{cls.__module__}:{cls.__qualname__}", spec=None)
    cfg.validate(own_data=own_data, own_model=model is not None)
    info = distributed.from_env()
    device = resolve_device(distributed.device_for(info, cfg.device))
    check_amp(cfg.amp, device)
    if cfg.tensorboard and info.is_main:
        _tensorboard_available()  # before anything is written
    started = not (info.enabled and torch.distributed.is_initialized())
    distributed.init(info, device)
    out = Path(out_dir)
    lock = DirLock(out, what="run directory") if info.is_main else contextlib.nullcontext()
    try:
        distributed.check_same_config(cfg.to_dict(), info)
        threads = threads_for(cfg, device, info)
        if resume and cfg.threads is None and device.type == "cpu":
            threads = _threads_of_the_run(out) or threads  # bit-exact resume needs the same count
        with torch_settings(threads, cfg.deterministic), lock:
            return _fit(cfg, out, info, device, resume=resume, overwrite=overwrite,
                        progress=progress and info.is_main, dataset=dataset, model=model,
                        log=(log if log is not None and info.is_main else (lambda message: None)),
                        stop_after_epoch=stop_after_epoch, stop_after_step=stop_after_step)
    finally:
        if started:
            distributed.shutdown()


def _fit(cfg: TrainConfig, out: Path, info: distributed.Dist, device: torch.device, *, resume: bool,
         overwrite: bool, progress: bool, dataset: cdata.Dataset | None, log: Log,
         stop_after_epoch: int | None, model: torch.nn.Module | None = None,
         stop_after_step: int | None = None) -> dict[str, Any]:
    if not resume and not overwrite and killed_before_first_checkpoint(out):
        log(f"{out} holds a run killed before its first checkpoint; starting it again")
        overwrite = True
    check_out_dir(out, resume=resume, overwrite=overwrite)
    if info.is_main:  # we hold the directory's lock: no live writer owns a temporary file in it
        for path in clean_stale_temps(out, include_legacy=True):
            log(f"removed {path.name}, a temporary file left by a writer that was killed")
    state = None
    if resume:
        state = read_resume_state(out)
        check_resume_config(TrainConfig.from_dict(state["config"]), cfg, out)

    ds = dataset if dataset is not None else load_data(cfg, log=log)
    run = build_run(cfg, out, ds, info, device, layers=state.get("spec") if state is not None else None,
                    model=model, init_from=cfg.init_from if state is None else None, log=log)
    for line in warnings_for(cfg, ds.name):
        log(line)
    for line in _speed_lines(run):
        log(line)
    if state is not None:
        restore_run(run, state, log)
        if info.is_main:
            sync_config_file(run)  # runtime settings or a longer run: config.json follows
        log(f"resuming {out} after epoch {run.epoch}" +
            (f", batch {run.batch_in_epoch} of epoch {run.epoch + 1}" if run.batch_in_epoch else ""))
    elif info.is_main:
        start_run_dir(run, overwrite=overwrite)  # only once the run is known to be able to start
    distributed.barrier(info)
    return _loop(run, progress=progress, log=log, stop_after_epoch=stop_after_epoch, stop_after_step=stop_after_step)


def _speed_lines(run: Run) -> list[str]:
    """What was chosen for speed: the thread count (when not set by --threads) and the fast kernels."""
    out = []
    if run.device.type == "cpu" and run.cfg.threads is None:
        load = machine_load()
        out.append(f"torch threads: {torch.get_num_threads()} ({available_cpus()} cores"
                   + (f", {load:.1f} busy with other work" if load is not None else "") + "; --threads N to choose)")
    report = getattr(run, "fast_kernels", None)
    if report is not None and (report.reordered or report.measured):
        out.append("fast kernels (--no-fast-kernels to switch off): " + "; ".join(report.lines()))
    return out


def _loop(run: Run, *, progress: bool, log: Log, stop_after_epoch: int | None,
          stop_after_step: int | None = None) -> dict[str, Any]:
    """Epoch after epoch: train, check, evaluate, keep the best, save; then finish the run."""
    cfg, info = run.cfg, run.info
    guard = DivergenceGuard(cfg, run.device)
    if run.guard_state:
        guard.load_state_dict(run.guard_state)
    writer = _tensorboard(run.out) if cfg.tensorboard and info.is_main else None
    extras = StepExtras(run, writer, stop_after_step=stop_after_step)
    compile_seconds, stopped_early = None, False
    watch = ThroughputWatch() if run.device.type == "cpu" else None  # a step's wall time means nothing on a GPU
    run.model.train()
    first_epoch = run.epoch + 1
    for epoch in range(first_epoch, cfg.epochs + 1):
        where = f"epoch {epoch} of {cfg.epochs}"
        kept = _kept(run)
        run.train_loader.set_epoch(epoch)
        if info.enabled and not run.batch_in_epoch:  # dropout masks: one stream per (seed, epoch, rank)
            torch.manual_seed(rank_seed(cfg.seed + DROPOUT_STREAM, epoch, info.rank))
        row: dict[str, Any] = {"epoch": epoch, "lr": run.schedule.lr, "momentum": run.schedule.momentum}
        if run.partial:  # resumed mid-epoch: the row starts with the epoch's own lr
            row.update(lr=run.partial["lr"], momentum=run.partial["momentum"])
        extras.epoch_lr, extras.epoch_momentum = row["lr"], row["momentum"]
        stats = _train_epoch(run, guard, progress, desc=f"epoch {epoch}/{cfg.epochs}", where=where, kept=kept,
                             extras=extras, watch=watch)
        if extras.killed:
            distributed.barrier(info)
            return {"interrupted_after_step": run.step}
        compile_seconds = stats.pop("compile_seconds", compile_seconds)
        slow = stats.pop("slow", None)
        if slow:
            log(f"warning: in {where} training {slow}: the machine is busy and torch's threads wait for the cores")
        row.update(stats)
        run.schedule.after_epoch()
        guard.check_weights(run.model, f"the last step of {where}", kept)
        if cfg.precise_bn and epoch == cfg.epochs:
            precise_bn(run.model, run.bn_loader, num_batches=cfg.precise_bn_batches, progress=progress)
        _evaluate_into(row, run)
        guard.check_eval(row, where, kept)
        run.rows.append(row)
        run.epoch = epoch
        log(_epoch_line(row))
        is_best = _track_best(run, row)
        save_epoch(run, is_best=is_best, guard_state=guard.state_dict(), writer=writer)
        if cfg.early_stopping is not None and epoch - run.best_epoch >= cfg.early_stopping:
            stopped_early = True  # also when patience runs out at the last epoch: the best weights are restored
            log(f"early stopping: no better {run.monitor.replace('_', ' ')} for {cfg.early_stopping} epochs; "
                f"restoring the weights of epoch {run.best_epoch}")
            break
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg.epochs:
            distributed.barrier(info)
            return {"interrupted_after_epoch": epoch}
        if cfg.max_steps is not None and run.step >= cfg.max_steps:
            log(f"stopping after {run.step} steps (--max-steps)")
            break
    if writer is not None:
        writer.close()
    extras.close()
    return _finish(run, stopped_early=stopped_early, compile_seconds=compile_seconds, progress=progress,
                   trained=run.epoch > first_epoch - 1)


def _kept(run: Run) -> str:
    if run.epoch >= 1 and (run.out / ckpt.LAST).exists():
        return f"the last good checkpoint is {run.out / ckpt.LAST} (epoch {run.epoch})"
    return "no checkpoint was written yet"


def _track_best(run: Run, row: dict[str, Any]) -> bool:
    """Make ``row``'s epoch the best if it beats the best so far (its weights kept in memory, for
    early stopping and for ``last.pt``, which carries them once later epochs change the model)."""
    if row[run.monitor] > run.best_metric:
        run.best_metric, run.best_epoch = row[run.monitor], row["epoch"]
        run.best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        return True
    return False


def _finish(run: Run, *, stopped_early: bool, compile_seconds: float | None, progress: bool,
            trained: bool = True) -> dict[str, Any]:
    cfg, info = run.cfg, run.info
    final = run.rows[-1]
    if info.is_main and not trained:
        # resuming a run killed after its last checkpoint: the CSV and the plot may lag behind it
        from cnnlab.train.metrics import plot_curves, write_iterations_csv, write_metrics_csv

        write_metrics_csv(run.out / "metrics.csv", run.rows)
        write_iterations_csv(run.out / "iterations.csv", run.rows)
        plot_curves(run.out / "curves.png", run.rows, title=f"{run.name} on {cfg.data}")
    if stopped_early and run.best_epoch != run.epoch and run.best_state is not None:
        # The lecture's "stop there!": the weights of the best validation epoch are the result.
        run.model.load_state_dict(run.best_state)
        if cfg.precise_bn:
            precise_bn(run.model, run.bn_loader, num_batches=cfg.precise_bn_batches, progress=progress)
        final = {"epoch": run.best_epoch}
        _evaluate_into(final, run)
        if info.is_main:
            from cnnlab.train.rundir import best_checkpoint

            ckpt.save_checkpoint(run.out / ckpt.BEST, best_checkpoint(run, run.model.state_dict(), run.best_epoch))
    summary = {
        "model": run.name, "data": cfg.data, "params": run.params, "epochs": cfg.epochs,
        "epochs_run": run.rows[-1]["epoch"], "stopped_early": stopped_early, "final_epoch": final["epoch"],
        "test_top1": final["test_top1"], "test_top5": final["test_top5"], "test_loss": final["test_loss"],
        "best_epoch": run.best_epoch, "best_chosen_on": run.monitor, "selection": f"best chosen on {run.selection}",
        "steps": run.step, **{k: final[k] for k in EMA_COLUMNS if k in final},
        "train_seconds": round(sum(r["train_seconds"] for r in run.rows), 3), "compile_seconds": compile_seconds,
        "processes": info.world_size, "out_dir": str(run.out), "config": cfg.to_dict(),
    }
    write_summary(run, summary)
    distributed.barrier(info)
    return summary


ITERATION_POINTS = 100  # points per epoch of the per-iteration curves (loss, lr, momentum)


def host_read_every(device: torch.device, guard: DivergenceGuard) -> int:
    """Steps between the progress line's reads of the running loss and accuracy: on a GPU each read
    waits for the device, so they come only when the divergence guard syncs anyway."""
    return 20 if device.type == "cpu" else max(20, guard.sync_every)


def _train_epoch(run: Run, guard: DivergenceGuard, progress: bool, *, desc: str, where: str,
                 kept: str, extras: StepExtras | None = None, watch: ThroughputWatch | None = None
                 ) -> dict[str, Any]:
    """One pass over the training set; returns the epoch's training metrics (summed over ranks).

    No value leaves the device within a step: the running loss and accuracy are sums on the device,
    the progress line reads them every ``host_read_every`` steps, and the per-iteration curve keeps
    a copy of the running loss sum every ``k`` steps (``row["iterations"]``: the mean training loss
    of each k-step window, and the learning rate and momentum at its end), read once at the end.

    Resumed mid-epoch (``run.batch_in_epoch``), the batches already trained are skipped: drawn
    again and dropped in memory (so the augmentation stream is the uninterrupted run's), or not
    decoded at all by a streaming loader without augmentation."""
    cfg, info, model, loader = run.cfg, run.info, run.model, run.train_loader
    extras = extras or StepExtras(run, None)
    device = loader.device
    read_every = host_read_every(device, guard)
    marks: list[tuple[int, torch.Tensor, int, float, float]] = []  # (step, loss sum, seen, lr, momentum)
    slow = ""
    if watch is not None:
        watch.pause()
    partial = run.partial or {}
    skip = run.batch_in_epoch
    run.batch_in_epoch, run.partial = 0, None
    loss_sum = torch.tensor(partial.get("loss_sum", 0.0), dtype=torch.float64, device=device)  # main head's CE
    total_sum = torch.tensor(partial.get("total_sum", 0.0), dtype=torch.float64, device=device)  # with aux
    correct = torch.tensor(partial.get("correct", 0), dtype=torch.int64, device=device)
    seen, has_aux = int(partial.get("seen", 0)), bool(partial.get("has_aux", False))
    params = [p for p in model.parameters() if p.requires_grad]
    limit = steps_per_epoch(cfg, loader)
    every = max(1, limit // ITERATION_POINTS)
    bar = _progress_bar(limit, desc, progress)
    bar.update(skip)
    compile_seconds = None
    k = cfg.accumulate
    amp_dtype = torch.float16 if cfg.amp == "fp16" else torch.bfloat16
    scaler = extras.scaler
    first = skip
    if skip and hasattr(loader, "start_batch") and loader.augment is None:
        loader.start_batch = skip  # a streaming loader skips without decoding
    else:
        first = 0
    t0 = time.perf_counter() - float(partial.get("seconds", 0.0))
    for i, (x, y) in enumerate(loader, start=first):
        if i < skip:
            continue  # trained before the checkpoint this run resumed from
        if i >= limit:
            break
        t_step = time.perf_counter()
        if run.attack is not None:
            x = run.attack(model, x, y)
        optimizer = run.optimizer
        pieces = [(x, y, 1.0)] if k == 1 else list(micro_batches(x, y, k))
        step_loss = None
        for j, (xs, ys, weight) in enumerate(pieces):
            with no_sync_unless(run.train_model, last=j == len(pieces) - 1):
                with torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp is not None):
                    output = run.train_model(xs)
                    ce, logits = classification_loss(output, ys, cfg.label_smoothing)
                loss = ce + l2_penalty(model, cfg.l2, no_decay_bias_bn=not cfg.bias_bn_decay) if cfg.l2 else ce
                if k > 1:
                    loss = loss * weight
                if j == 0:
                    optimizer.zero_grad(set_to_none=True)
                step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
                if j == len(pieces) - 1:
                    run.step += 1
                    guard.observe(step_loss if k > 1 else loss, run.step)
                    if guard.due(run.step) or i == limit - 1 or extras.last_step(run.step):
                        guard.check(where, info, kept)  # every rank reaches this at the same step
                (scaler.scale(loss) if scaler is not None else loss).backward()
            labels = ys if ys.ndim == 1 else ys.argmax(1)  # soft targets (mixup/cutmix): their main class
            with torch.no_grad():
                if isinstance(output, tuple):  # auxiliary heads (GoogLeNet): log the main head's loss alone
                    has_aux = True
                    main = main_loss(tuple(o.float() if o is not None else None for o in output), ys,
                                     cfg.label_smoothing)
                else:
                    main = ce
            loss_sum += main.detach().double() * len(labels)
            total_sum += ce.detach().double() * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(labels)
        if scaler is not None:
            if cfg.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
        if run.ema is not None:
            run.ema.update(model)
        extras.after_step(step_loss, run.epoch + 1)
        run.schedule.after_iteration()
        if run.compile_pending:  # the first step of this process compiled the model
            compile_seconds, run.compile_pending = time.perf_counter() - t_step, False
        if (i + 1) % every == 0 or i == limit - 1:
            marks.append((run.step, loss_sum.clone(), seen, run.schedule.lr, run.schedule.momentum))
        if watch is not None and watch.tick() and not slow:
            slow = watch.message(torch.get_num_threads())
        bar.update(1)
        if progress and (i % read_every == 0 or i == limit - 1):
            elapsed = time.perf_counter() - t0
            note = {"slow": slow} if slow else {}
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.2%}",
                            img_s=f"{seen * info.world_size / max(elapsed, 1e-9):,.0f}", **note, refresh=False)
        last = i == limit - 1 or extras.last_step(run.step)
        if extras.checkpoint_due(run.step) and not last:
            sums = {"loss_sum": loss_sum.item(), "total_sum": total_sum.item(), "correct": int(correct.item()),
                    "seen": seen, "has_aux": has_aux, "seconds": time.perf_counter() - t0,
                    "lr": extras.epoch_lr, "momentum": extras.epoch_momentum}
            save_mid_epoch(run, batch=i + 1, partial=sums, guard_state=guard.state_dict())
        if extras.killed_at(run.step):
            break
        if cfg.max_steps is not None and run.step >= cfg.max_steps:
            break
    seconds = time.perf_counter() - t0
    bar.close()
    if compile_seconds is not None:
        seconds -= compile_seconds  # compile time is reported separately (summary: compile_seconds)
    total_loss, total_aux, total_correct, total_seen = distributed.all_sum(
        [loss_sum.item(), total_sum.item(), correct.item(), seen], info, device)
    stats = {"train_loss": total_loss / max(total_seen, 1), "train_top1": total_correct / max(total_seen, 1),
             "train_seconds": round(seconds, 4), "images_per_second": round(total_seen / max(seconds, 1e-9), 1)}
    if has_aux:
        stats["train_loss_with_aux"] = total_aux / total_seen
    stats["iterations"] = _iteration_curve(marks)
    if slow:
        stats["slow"] = slow
    if compile_seconds is not None:
        stats["compile_seconds"] = compile_seconds
    return stats


def _iteration_curve(marks: list[tuple[int, torch.Tensor, int, float, float]]) -> dict[str, list]:
    """The per-iteration series of an epoch (this rank's batches): one host read for all of it."""
    if not marks:
        return {"step": [], "train_loss": [], "lr": [], "momentum": []}
    sums = torch.stack([m[1] for m in marks]).tolist()
    out: dict[str, list] = {"step": [], "train_loss": [], "lr": [], "momentum": []}
    prev_sum, prev_seen = 0.0, 0
    for (step, _, seen, lr, momentum), total in zip(marks, sums):
        out["step"].append(step)
        out["train_loss"].append((total - prev_sum) / max(seen - prev_seen, 1))
        out["lr"].append(lr)
        out["momentum"].append(momentum)
        prev_sum, prev_seen = total, seen
    return out


def _evaluate_into(row: dict, run: Run) -> None:
    if run.val_loader is not None:
        v = evaluate(run.model, run.val_loader, info=run.info, amp=run.cfg.amp)
        row.update(val_loss=v["loss"], val_top1=v["top1"])
    t = evaluate(run.model, run.test_loader, info=run.info, amp=run.cfg.amp)
    row.update(test_loss=t["loss"], test_top1=t["top1"], test_top5=t["top5"])
    if run.ema is not None:  # the averaged weights, evaluated alike
        with run.ema.swapped_in(run.model):
            if run.val_loader is not None:
                row["ema_val_top1"] = evaluate(run.model, run.val_loader, info=run.info, amp=run.cfg.amp)["top1"]
            e = evaluate(run.model, run.test_loader, info=run.info, amp=run.cfg.amp)
        row.update(ema_test_loss=e["loss"], ema_test_top1=e["top1"], ema_test_top5=e["top5"])


EMA_COLUMNS = ("ema_val_top1", "ema_test_loss", "ema_test_top1", "ema_test_top5")


def _epoch_line(row: dict) -> str:
    parts = [f"epoch {row['epoch']}", f"train loss {row['train_loss']:.4f}", f"acc {row['train_top1']:.2%}"]
    if row.get("val_top1") is not None:
        parts.append(f"val acc {row['val_top1']:.2%}")
    parts += [f"test loss {row['test_loss']:.4f}", f"test acc {row['test_top1']:.2%}",
              f"top-5 {row['test_top5']:.2%}", f"{row['train_seconds']:.1f} s",
              f"{row['images_per_second']:,.0f} img/s"]
    return " | ".join(parts)

