"""Resuming a run: its config, its checkpoint checked against the run, and its state restored.

    >>> cfg = resume_config("runs/lenet5", {"epochs": 10})   # the run's config, later sources on top
    >>> fit(cfg, "runs/lenet5", resume=True)

``read_resume_state`` loads ``last.pt`` (digest, structure and finite weights verified) and
refuses a checkpoint that is not this run's: another model, another layer list, or a config
other than the one ``config.json`` records. ``restore_run`` puts weights, optimizer, schedule,
RNG (each process its own: ``own_rank_state``) and history back, after checking that the dataset
still has the size the run started with, and ``repair_best`` rewrites a ``best.pt`` that
disagrees with ``last.pt`` (a kill between the two writes).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.train import checkpoint as ckpt
from cnnlab.train.build import Run
from cnnlab.train.config import RUNTIME_FIELDS, TrainConfig, upgrade_keys
from cnnlab.train.schedules import uses_fractions
from cnnlab.train.sharding import DROPOUT_STREAM, rank_seed

# Schedules whose lr depends only on the step (not on the run's length): a run on them may grow.
EXTENDABLE = ("constant", "step", "multistep", "exponential", "inverse", "inverse-sqrt")


def check_resume_config(saved: TrainConfig, cfg: TrainConfig, out: Path) -> None:
    """A resumed run keeps its identity (model, data, optimizer, schedule, seed, batch size ...);
    runtime settings (``RUNTIME_FIELDS``) may change, and ``epochs`` may grow when the schedule
    does not depend on the run's length."""
    old, new = saved.to_dict(), cfg.to_dict()
    differ = [k for k, v in new.items() if old.get(k) != v and k not in RUNTIME_FIELDS and k != "epochs"]
    if differ:
        raise CnnlabError(f"cannot resume {out} with a different config ({', '.join(differ[:6])} changed); a resumed "
                          f"run keeps what defines it (only runtime settings such as threads or device may change, "
                          f"and --epochs may grow; --init-from {out} starts a new run from its weights)")
    if cfg.epochs < saved.epochs:
        raise CnnlabError(f"cannot shorten {out} from {saved.epochs} to {cfg.epochs} epochs; a resumed run may only "
                          f"grow")
    if cfg.epochs > saved.epochs and uses_fractions(saved):
        raise CnnlabError(f"cannot extend {out} from {saved.epochs} to {cfg.epochs} epochs: its {saved.schedule} "
                          f"schedule is given as fractions of the run, which would move its lr drops; "
                          f"start a new run with --init-from {out}")
    if cfg.epochs > saved.epochs and saved.schedule not in EXTENDABLE:
        raise CnnlabError(f"cannot extend {out} from {saved.epochs} to {cfg.epochs} epochs: its {saved.schedule} "
                          f"schedule is shaped by the run's length (extendable: {', '.join(EXTENDABLE)}); "
                          f"start a new run with --init-from {out}")


def _recorded_config(out: Path) -> dict[str, Any] | None:
    try:
        values = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) else None


def read_resume_state(out: str | Path) -> dict[str, Any]:
    """``last.pt`` of the run in ``out``, verified and checked to belong to that run."""
    out = Path(out)
    if not (out / ckpt.LAST).is_file():
        raise CnnlabError(f"cannot resume: {out} holds no {ckpt.LAST} checkpoint")
    state = ckpt.load_checkpoint(out / ckpt.LAST, training=True)
    recorded = _recorded_config(out)
    saved = upgrade_keys(state["config"])  # an older run's keys under their current names
    recorded = None if recorded is None else upgrade_keys(recorded)
    if recorded is not None:
        if recorded.get("model") != saved.get("model") or recorded.get("spec") != saved.get("spec"):
            raise CnnlabError(f"{out / ckpt.LAST} is a checkpoint of model {str(saved.get('model'))[:60]!r} but the "
                              f"run in {out} trains {str(recorded.get('model'))[:60]!r} (config.json); it is not "
                              f"this run's checkpoint")
        differ = sorted(k for k in set(recorded) | set(saved) if recorded.get(k) != saved.get(k)
                        and k not in RUNTIME_FIELDS and k != "epochs")
        if differ:
            raise CnnlabError(f"{out / ckpt.LAST} does not belong to the run in {out}: its config differs from "
                              f"config.json in {', '.join(differ[:8])}")
    return state


def resume_config(out: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config of the run in ``out`` (from its verified ``last.pt``) with ``overrides`` applied,
    validated. ``fit(..., resume=True)`` refuses overrides that change it."""
    state = read_resume_state(out)
    return TrainConfig.from_dict(state["config"]).updated(overrides or {}).validate()


def restore_run(run: Run, state: dict[str, Any], log=None) -> None:
    """Put the training state of ``state`` (a verified ``last.pt``) into ``run``."""
    out = run.out
    saved_ds, now = state["dataset"], run.dataset
    for key, what in (("train_size", "training"), ("test_size", "test")):
        if key in saved_ds and saved_ds[key] != now[key]:
            raise CnnlabError(f"the {what} set of {now['name']} changed since the run started ({saved_ds[key]} "
                              f"images then, {now[key]} now); a run resumes only on the data it started with")
    if (saved_ds["name"], saved_ds["num_classes"], list(saved_ds["input_size"])) != \
            (now["name"], now["num_classes"], list(now["input_size"])):
        raise CnnlabError(f"{out / ckpt.LAST} was trained on {saved_ds['name']} ({saved_ds['num_classes']} classes of "
                          f"{'x'.join(map(str, saved_ds['input_size']))}), not on this {now['name']}")
    ckpt.load_model_state(run.model, state, out / ckpt.LAST)
    try:
        run.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CnnlabError(f"{out / ckpt.LAST} holds an optimizer state that does not fit this run "
                          f"({str(e)[:120]})") from None
    sched_state = dict(state["scheduler"])
    saved_epochs = state["config"].get("epochs")
    if isinstance(saved_epochs, int) and run.cfg.epochs > saved_epochs and run.cfg.schedule in EXTENDABLE:
        sched_state["total_steps"] = run.schedule.total_steps  # the run grew; the lr does not depend on it
    try:
        run.schedule.load_state_dict(sched_state)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CnnlabError):
            raise
        raise CnnlabError(f"{out / ckpt.LAST} holds a schedule state that does not fit this run "
                          f"({str(e)[:120]})") from None
    own = own_rank_state(state, run, log)
    if isinstance(own["rng"], int):
        torch.manual_seed(own["rng"])
    else:
        ckpt.set_rng_state(own["rng"])
    run.rows = list(state["history"])
    run.epoch, run.step = state["epoch"], state["step"]
    run.best_metric, run.best_epoch = state["best_metric"], state["best_epoch"]
    if run.best_epoch == run.epoch:
        run.best_state = None
    elif "best_model" in state:
        run.best_state = state["best_model"]
    else:  # a checkpoint written before last.pt carried the best weights: trust best.pt if it agrees
        run.best_state = _best_from_file(out, run.best_epoch)
    run.guard_state = own["guard"]
    run.batch_in_epoch = int(state.get("batch_in_epoch", 0))
    run.partial = own["partial"]
    run.scaler_state = state.get("scaler")
    if run.ema is not None and state.get("ema") is not None:
        run.ema.load_state_dict(state["ema"])
    if run.info.is_main:
        repair_best(run, log)


SUMS = ("loss_sum", "total_sum", "correct", "seen")  # the partial sums of an epoch, added over ranks


def own_rank_state(state: dict[str, Any], run: Run, log=None) -> dict[str, Any]:
    """This rank's RNG state (or an int seed), guard state and partial sums from a checkpoint.

    A checkpoint of several processes holds each one's under ``ranks``; resumed by as many, every
    rank takes its own and the run continues bit for bit. Resumed by another number of processes
    (or from a checkpoint with one state only), the run continues correctly but not bit-identically
    (other shards, so other batch-norm statistics and float summation order): a rank the checkpoint
    has no state for draws a fresh dropout stream seeded from (seed, epoch, step, rank), and the
    epoch's partial sums of all saved ranks go to rank 0, so the epoch's metrics still count every
    image once."""
    info, cfg, log = run.info, run.cfg, log or (lambda line: None)
    ranks = state.get("ranks") or []
    mid = int(state.get("batch_in_epoch", 0)) > 0
    if not ranks and not info.enabled:  # one process then and now
        return {"rng": state["rng"], "guard": state.get("guard"), "partial": state.get("partial")}
    if len(ranks) == info.world_size:
        own = ranks[info.rank]
        return {"rng": own["rng"], "guard": own.get("guard", state.get("guard")), "partial": own.get("partial")}
    saved = len(ranks) or 1
    log(f"{run.out / ckpt.LAST} holds the state of {saved} process{'es' if saved != 1 else ''} and the run "
        f"resumes in {info.world_size}: it continues correctly but not bit-identically to an uninterrupted run "
        f"(other shards per process{', other dropout streams' if mid else ''})")
    states = ranks or [{"rng": state["rng"], "guard": state.get("guard"), "partial": state.get("partial")}]
    if info.rank < len(states):
        rng, guard = states[info.rank]["rng"], states[info.rank].get("guard")
    else:
        rng = rank_seed(cfg.seed + DROPOUT_STREAM + int(state["step"]), int(state["epoch"]) + 1, info.rank)
        guard = states[0].get("guard")
    partials = [s["partial"] for s in states if isinstance(s.get("partial"), dict)]
    partial = None
    if partials:
        partial = dict(partials[0])
        for key in SUMS:
            partial[key] = sum(p.get(key, 0) for p in partials) if info.rank == 0 else type(partial.get(key, 0))(0)
        partial["has_aux"] = any(p.get("has_aux", False) for p in partials)
    return {"rng": rng, "guard": guard if guard is not None else state.get("guard"), "partial": partial}


def _best_from_file(out: Path, best_epoch: int):
    try:
        best = ckpt.load_checkpoint(out / ckpt.BEST)
    except CnnlabError:
        return None
    return best["model"] if best["epoch"] == best_epoch else None


def repair_best(run: Run, log=None) -> bool:
    """Rewrite ``best.pt`` when it does not hold the epoch ``last.pt`` names; True if rewritten."""
    from cnnlab.train.rundir import best_checkpoint

    path = run.out / ckpt.BEST
    if run.best_epoch < 1 or not math.isfinite(run.best_metric):
        return False
    try:
        current = ckpt.load_checkpoint(path)
        if current["epoch"] == run.best_epoch:
            return False
        reason = f"it held epoch {current['epoch']}"
    except CnnlabError as e:
        reason = "it was missing" if not path.exists() else f"it was unreadable ({str(e)[:80]})"
    weights = run.model.state_dict() if run.best_epoch == run.epoch else run.best_state
    if weights is None:
        return False
    ckpt.save_checkpoint(path, best_checkpoint(run, weights, run.best_epoch))
    if log is not None:
        log(f"repaired {path}: {reason}, {ckpt.LAST} names epoch {run.best_epoch} as the best")
    return True
