"""Learning-rate schedules (and the momentum ramp) on top of ``torch.optim.lr_scheduler``.

    >>> sched = make_schedule(optimizer, "cosine", epochs=30, steps_per_epoch=469, warmup=1)
    >>> for epoch in range(30):
    ...     for x, y in loader:
    ...         ...; optimizer.step()
    ...         sched.after_iteration()          # the trainer calls both hooks, always;
    ...     sched.after_epoch()                  # the schedule decides which one moves the lr

Each schedule is a function of training time t, counted in epochs (fractional between epoch
boundaries); ``interval`` only decides how often the lr is updated: every iteration, or once at
each epoch boundary (the lecture's ``scheduler.step()`` after the inner loop, Ryu, ch. 3). With
lr the optimizer's learning rate and t counted from the end of the warmup:

| name         | lr(t)                                             | torch scheduler         |
|--------------|---------------------------------------------------|-------------------------|
| constant     | lr                                                | LambdaLR                |
| step         | lr · gamma^⌊e / step_size⌋  (e: epoch of the run) | MultiStepLR             |
| multistep    | lr · gamma^(milestones passed)                    | MultiStepLR             |
| exponential  | lr · gamma^t                  (gamma per epoch)   | ExponentialLR           |
| inverse      | lr / (1 + t)                                      | LambdaLR                |
| inverse-sqrt | lr / sqrt(1 + i)              (i: iterations)     | LambdaLR                |
| cosine       | eta_min + (lr - eta_min)(1 + cos(π t / T)) / 2    | CosineAnnealingLR       |
| onecycle     | Smith & Topin 2017, cosine up then down           | OneCycleLR              |

``inverse`` and ``inverse-sqrt`` are Ryu's ch. 3 "C/epoch or C/√iteration" with C = lr. The lecture's
``LambdaLR(lambda ep: 1e-2/ep)`` would divide by zero at torch's first epoch, ep = 0, so epochs
are counted from 1: lr_k = lr / k during epoch k ≥ 1, i.e. lr / (1 + t) with t from 0; likewise
lr / sqrt(i) for iteration i ≥ 1. ``cosine`` is the half period from lr down to eta_min over the
run (Ryu, ch. 3, "only a half-period of the cosine").

Warmup (Goyal et al. 2017, sec. 2.2): ``warmup`` epochs of linear increase, lr · (s+1)/(W+1) at
step s = 0..W of W warmup steps, so the first step uses lr/(W+1) ≈ 0 and step W uses lr; then
the schedule starts from its own beginning and spans the rest of the run. The milestones of
``step`` and ``multistep`` stay epochs of the whole run (He et al. 2016 and Goyal et al. decay at
fixed epochs whatever the warmup), so they must come after it. They may also be given as
fractions of the run, values in (0, 1): ``milestones=(0.5, 0.75)`` drops the lr at half and at
three quarters of the run's steps, and ``step_size=0.3`` every 30% of them, so a recipe keeps its
shape when only ``epochs`` changes (such a schedule then depends on the run's length). A list
mixes neither: all fractions or all whole epochs. ``onecycle`` refuses a warmup:
it has its own (``pct_start``), and it cycles the momentum (or Adam's β₁) from μ down to μ - 0.1
and back, μ being the optimizer's value (Smith 2018 uses 0.95 → 0.85).

Momentum ramp (Sutskever et al. 2013, sec. 4, from the optimization notes' reading): at iteration t,
    μ_t = min(1 - 2^(-1 - log2(⌊t/250⌋ + 1)), μ_max) = min(1 - 1 / (2(⌊t/250⌋ + 1)), μ_max),
i.e. 0.5, 0.75, 0.833, 0.875, ... every 250 iterations, set as SGD's or RMSprop's momentum or
the Adam family's β₁. It always counts iterations, whatever ``interval`` says.

After the run's last step the lr stays where it is, however often the hooks are called.
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch.optim import lr_scheduler

from cnnlab.errors import CnnlabError, unknown_name

SCHEDULES = ("constant", "step", "multistep", "exponential", "inverse", "inverse-sqrt", "cosine", "onecycle")
INTERVALS = ("iteration", "epoch")
RAMP_PERIOD = 250  # iterations per momentum level (Sutskever et al. 2013, sec. 4)
ONECYCLE_MOMENTUM_RANGE = 0.1  # Smith 2018, sec. 4.3: cycle 0.95 -> 0.85 -> 0.95


def sutskever_momentum(t: int, mu_max: float) -> float:
    """The momentum ramp of Sutskever et al. 2013 at iteration ``t`` (0.5 at t = 0, capped at ``mu_max``)."""
    return min(1.0 - 2.0 ** (-1.0 - math.log2(t // RAMP_PERIOD + 1)), mu_max)


class Schedule:
    """The torch scheduler(s) of a run, stepped by the trainer's two hooks.

    ``lr`` and ``momentum`` read group 0 of the optimizer (the values the next step will use).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: lr_scheduler.LRScheduler, *, name: str,
                 interval: str, total_steps: int, momentum_ramp: float | None) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.name = name
        self.interval = interval
        self.total_steps = total_steps  # scheduler steps in the run (epochs or iterations)
        self.momentum_ramp = momentum_ramp
        self.steps = 0  # scheduler steps taken
        self.iterations = 0  # after_iteration calls (the momentum ramp's t)
        if momentum_ramp is not None:
            self._set_momentum(sutskever_momentum(0, momentum_ramp))

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def momentum(self) -> float | None:
        group = self.optimizer.param_groups[0]
        if "betas" in group:
            return float(group["betas"][0])
        if "momentum" in group:
            return float(group["momentum"])
        return None

    def after_iteration(self) -> None:
        self.iterations += 1
        if self.momentum_ramp is not None:
            self._set_momentum(sutskever_momentum(self.iterations, self.momentum_ramp))
        if self.interval == "iteration":
            self._step()

    def after_epoch(self) -> None:
        if self.interval == "epoch":
            self._step()

    def _step(self) -> None:
        # The lr of the run's last step (step total_steps - 1) stays in place afterwards: OneCycleLR
        # would extrapolate past its end and then raise, CosineAnnealingLR would climb back up.
        if self.steps < self.total_steps - 1:
            self.scheduler.step()
            self.steps += 1

    def _set_momentum(self, mu: float) -> None:
        for group in self.optimizer.param_groups:
            if "betas" in group:
                group["betas"] = (mu, *group["betas"][1:])
            else:
                group["momentum"] = mu

    def state_dict(self) -> dict[str, Any]:
        """Counters and the torch scheduler's state: numbers, strings, lists and dicts only, so that
        it loads with ``torch.load(weights_only=True)``."""
        return {"name": self.name, "interval": self.interval, "steps": self.steps, "iterations": self.iterations,
                "total_steps": self.total_steps, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name or state.get("interval") != self.interval:
            raise CnnlabError(f"the saved schedule is {state.get('name')!r} per {state.get('interval')}; "
                              f"this one is {self.name!r} per {self.interval}")
        saved_total = state.get("total_steps")
        if saved_total is not None and int(saved_total) != self.total_steps:
            raise CnnlabError(f"the saved schedule spans {saved_total} steps but this run has {self.total_steps}; "
                              f"the training set or the batch size changed since the run started")
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps, self.iterations = int(state["steps"]), int(state["iterations"])
        # Put the saved lr (and ramp momentum) back into the optimizer too, so that the schedule's
        # state alone resumes the sequence even if the optimizer's state is not loaded.
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
            group["lr"] = lr
        if self.momentum_ramp is not None:
            self._set_momentum(sutskever_momentum(self.iterations, self.momentum_ramp))


def is_fraction(value: Any) -> bool:
    """A step size or milestone given as a fraction of the run: a number in (0, 1)."""
    return isinstance(value, float) and 0 < value < 1


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def check_milestones(milestones: Any) -> None:
    """Refuse a list mixing fractions of the run and whole epochs, or holding anything else."""
    ms = list(milestones)
    fractions = [m for m in ms if is_fraction(m)]
    if fractions and len(fractions) != len(ms):
        raise CnnlabError(f"milestones must be all fractions of the run in (0, 1) or all whole epochs of at least 1, "
                          f"not a mix; received milestones={tuple(ms)}")


def uses_fractions(cfg: Any) -> bool:
    """Whether ``cfg``'s step or multistep schedule is given as fractions of the run (so that it
    depends on the run's length)."""
    if cfg.schedule == "step":
        return is_fraction(cfg.step_size)
    if cfg.schedule == "multistep":
        return any(is_fraction(m) for m in cfg.milestones)
    return False


def make_schedule(
    optimizer: torch.optim.Optimizer,
    name: Any,
    steps_per_epoch: int | None = None,
    *,
    epochs: int | None = None,
    interval: str = "iteration",
    warmup: float = 0.0,
    step_size: float = 30,
    milestones: tuple[float, ...] = (),
    gamma: float = 0.1,
    eta_min: float = 0.0,
    pct_start: float = 0.25,
    momentum_ramp: float | None = None,
) -> Schedule:
    """The schedule ``name`` for a run of ``epochs`` x ``steps_per_epoch`` iterations.

    Args:
        interval: "iteration" (update the lr after every batch) or "epoch" (after every epoch).
        warmup: epochs of linear warmup in front of the schedule (fractional with interval="iteration").
        step_size: step's decay period, in epochs (a whole number), or as a fraction of the run in (0, 1).
        milestones: multistep's decay epochs (epochs of the run, increasing, inside it), or all
            fractions of the run in (0, 1).
        gamma: the decay factor of step and multistep, and exponential's factor per epoch.
        eta_min: cosine's final lr.
        pct_start: the fraction of the run onecycle spends increasing the lr.
        momentum_ramp: μ_max of Sutskever et al.'s momentum ramp; None leaves the momentum alone.

    ``make_schedule(optimizer, cfg, steps_per_epoch)`` with a ``TrainConfig`` takes the schedule
    and all its parameters from the config.
    """
    if not isinstance(name, str):
        cfg = name
        return make_schedule(optimizer, cfg.schedule, steps_per_epoch, epochs=cfg.epochs,
                             interval=cfg.schedule_interval, warmup=cfg.warmup, step_size=cfg.step_size,
                             milestones=tuple(cfg.milestones), gamma=cfg.gamma, eta_min=cfg.eta_min,
                             pct_start=cfg.pct_start, momentum_ramp=cfg.momentum_ramp)
    if name not in SCHEDULES:
        raise unknown_name("schedule", name, SCHEDULES)
    step_size = _whole(step_size)
    milestones = tuple(_whole(m) for m in milestones)
    if interval not in INTERVALS:
        raise unknown_name("schedule interval", interval, INTERVALS)
    if not (isinstance(epochs, int) and epochs >= 1):
        raise CnnlabError(f"epochs must be a positive integer; received epochs={epochs}")
    if not (isinstance(steps_per_epoch, int) and steps_per_epoch >= 1):
        raise CnnlabError(f"steps per epoch must be a positive integer; received steps_per_epoch={steps_per_epoch}")
    if not 0 <= warmup < epochs:
        raise CnnlabError(f"warmup must be at least 0 and shorter than the run ({epochs} epochs); "
                          f"received warmup={warmup}")
    if interval == "epoch" and warmup != int(warmup):
        raise CnnlabError(f"with interval=epoch the warmup must be a whole number of epochs; received warmup={warmup}")
    if momentum_ramp is not None and not 0 < momentum_ramp < 1:
        raise CnnlabError(f"momentum_ramp (the largest momentum) must be in (0, 1); "
                          f"received momentum_ramp={momentum_ramp}")
    group = optimizer.param_groups[0]
    if momentum_ramp is not None and "momentum" not in group and "betas" not in group:
        raise CnnlabError(f"the momentum ramp needs an optimizer with a momentum or beta1; "
                          f"received {type(optimizer).__name__}")
    if name == "onecycle" and warmup > 0:
        raise CnnlabError(f"onecycle warms up by itself (pct_start={pct_start}); received warmup={warmup}, use 0")
    if name == "onecycle" and momentum_ramp is not None:
        raise CnnlabError(f"onecycle cycles the momentum itself; received momentum_ramp={momentum_ramp}, use none")

    unit = steps_per_epoch if interval == "iteration" else 1  # scheduler steps per epoch
    total = epochs * unit
    warm = min(max(1, round(warmup * unit)), total - 1) if warmup > 0 else 0
    main = _main_scheduler(optimizer, name, unit=unit, length=total - warm, warm=warm, epochs=epochs,
                           warmup=warmup, steps_per_epoch=steps_per_epoch, step_size=step_size,
                           milestones=milestones, gamma=gamma, eta_min=eta_min, pct_start=pct_start)
    if warm:
        # LambdaLR rather than LinearLR: it scales the initial lr instead of the current one, so
        # it does not depend on what the main scheduler's constructor wrote into the optimizer.
        ramp = lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / (warm + 1))
        scheduler = lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warm])
    else:
        scheduler = main
    return Schedule(optimizer, scheduler, name=name, interval=interval, total_steps=total,
                    momentum_ramp=momentum_ramp)


def _main_scheduler(optimizer: torch.optim.Optimizer, name: str, *, unit: int, length: int, warm: int, epochs: int,
                    warmup: float, steps_per_epoch: int, step_size: float, milestones: tuple[float, ...],
                    gamma: float, eta_min: float, pct_start: float) -> lr_scheduler.LRScheduler:
    """The schedule after the warmup, counting its ``length`` steps from 0 (``unit`` steps per epoch)."""
    if name in ("step", "multistep", "exponential") and not 0 < gamma <= 1:
        raise CnnlabError(f"gamma must be in (0, 1] for {name}; received gamma={gamma}")
    if name == "constant":
        return lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    total = epochs * unit
    if name == "step":
        if is_fraction(step_size):  # a drop every step_size of the run's scheduler steps
            period = step_size * total
            at = [round(k * period) for k in range(1, math.ceil(1 / step_size) + 1)]
            at = [a for a in at if a < total]
            if at and at[0] <= warm:
                raise CnnlabError(f"the first step decay must come after the warmup ({warmup} epochs); "
                                  f"received step_size={step_size} of {epochs} epochs")
            return lr_scheduler.MultiStepLR(optimizer, [a - warm for a in at], gamma=gamma)
        if not (isinstance(step_size, int) and not isinstance(step_size, bool) and step_size >= 1):
            raise CnnlabError(f"step_size must be a positive whole number of epochs or a fraction of the run in "
                              f"(0, 1); received step_size={step_size}")
        if step_size <= warmup:
            raise CnnlabError(f"the first step decay must come after the warmup ({warmup} epochs); "
                              f"received step_size={step_size}")
        epochs_at = range(step_size, epochs, step_size)
        return lr_scheduler.MultiStepLR(optimizer, [e * unit - warm for e in epochs_at], gamma=gamma)
    if name == "multistep":
        ms = list(milestones)
        if ms and all(is_fraction(m) for m in ms):
            at = [round(m * total) for m in ms]
            if any(b <= a for a, b in itertools.pairwise(at)) or at[0] <= warm or at[-1] >= total:
                raise CnnlabError(f"milestones as fractions of the run must be increasing, fall after the warmup "
                                  f"({warmup} epochs) and be distinct {'epochs' if unit == 1 else 'steps'} of this "
                                  f"{epochs}-epoch run; received milestones={tuple(milestones)}")
            return lr_scheduler.MultiStepLR(optimizer, [a - warm for a in at], gamma=gamma)
        check_milestones(ms)
        if (not ms or any(not isinstance(m, int) for m in ms) or any(b <= a for a, b in itertools.pairwise(ms))
                or ms[0] <= warmup or ms[-1] >= epochs):
            raise CnnlabError(f"milestones must be increasing whole epochs after the warmup ({warmup}) and before "
                              f"the end of the run ({epochs}); received milestones={tuple(milestones)}")
        return lr_scheduler.MultiStepLR(optimizer, [m * unit - warm for m in ms], gamma=gamma)
    if name == "exponential":
        return lr_scheduler.ExponentialLR(optimizer, gamma=gamma ** (1 / unit))  # gamma is per epoch
    if name == "inverse":
        return lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + s / unit))
    if name == "inverse-sqrt":
        iterations_per_step = steps_per_epoch // unit  # 1 per iteration, steps_per_epoch per epoch
        return lr_scheduler.LambdaLR(optimizer, lambda s: 1 / math.sqrt(1 + s * iterations_per_step))
    lr = optimizer.param_groups[0]["lr"]
    if name == "cosine":
        if not 0 <= eta_min < lr:
            raise CnnlabError(f"eta_min must be at least 0 and below the learning rate ({lr}); "
                              f"received eta_min={eta_min}")
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=length, eta_min=eta_min)
    assert name == "onecycle", name
    if not 0 < pct_start < 1:
        raise CnnlabError(f"pct_start must be in (0, 1); received pct_start={pct_start}")
    # OneCycleLR's rising phase ends at step pct·total - 1 and its falling phase at total - 1; it
    # divides by zero when either has length 0 (pct·total == 1, or pct == 1). Give the rise at
    # least two steps and the fall at least half a step; very short runs then still run.
    pct = float(min(max(pct_start, 2 / length), 1 - 0.5 / length))
    momentums = [g["betas"][0] if "betas" in g else g.get("momentum", 0.0) for g in optimizer.param_groups]
    cycle = all(m > 0 for m in momentums)  # SGD without momentum, Adagrad: nothing to cycle
    return lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=length, pct_start=pct,
        cycle_momentum=cycle, max_momentum=momentums if cycle else 0.95,
        base_momentum=[max(0.0, m - ONECYCLE_MOMENTUM_RANGE) for m in momentums] if cycle else 0.85)
