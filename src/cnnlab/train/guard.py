"""The divergence guard: a run whose loss or weights stop being finite, or whose loss explodes,
stops with one sentence naming the step and the likely cause; nothing non-finite is ever saved.

What is watched:

- the training loss of every step (``observe``), kept on the device: a flag for a non-finite
  loss, and for a smoothed loss (an exponential moving average, beta = 0.98, bias-corrected)
  that exceeds ``diverge_factor`` times its running minimum while also exceeding the first
  step's loss (so that the natural wobble of a small late loss is not mistaken for divergence);
  the step of the first bad value is kept on the device too, so the host reads it only every
  ``sync_every`` steps (1 on the CPU, where reading is free; more on a GPU, where each read
  waits for the device) and at the end of the epoch, and still names the exact step;
- the weights after the epoch's last step (``check_weights``);
- the evaluation losses (``check_eval``).

The cause named: weight decay when lr x weight_decay (or lr x l2) is at least 1, since each step
then multiplies the weights by |1 - lr x lambda| >= 1 or flips their sign; otherwise the
learning rate.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError

SMOOTH = 0.98


class TrainingDiverged(CnnlabError):
    """The loss or the weights became NaN or infinite, or the loss exploded."""

    exit_code = 3


class DivergenceGuard:
    def __init__(self, cfg: Any, device: torch.device, *, sync_every: int | None = None) -> None:
        self.cfg = cfg
        self.device = device
        self.factor = float(cfg.diverge_factor)
        self.sync_every = sync_every if sync_every is not None else (1 if device.type == "cpu" else 25)
        z = lambda v, dt=torch.float64: torch.full((), v, dtype=dt, device=device)  # noqa: E731
        self.avg = z(0.0)
        self.minimum = z(math.inf)
        self.first = z(math.nan)
        self.count = z(0.0)
        self.bad_step = z(-1, torch.int64)  # the first bad step (global step count), or -1
        self.bad_value = z(0.0)
        self.bad_kind = z(0, torch.int64)  # 1 non-finite, 2 exploded

    def state_dict(self) -> dict[str, float]:
        return {"avg": float(self.avg), "minimum": float(self.minimum), "first": float(self.first),
                "count": float(self.count)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        for key in ("avg", "minimum", "first", "count"):
            if key in state:
                getattr(self, key).fill_(float(state[key]))

    @torch.no_grad()
    def observe(self, loss: torch.Tensor, step: int) -> None:
        """Record the loss of global step ``step`` (1-based) without leaving the device."""
        v = loss.detach().double()
        finite = torch.isfinite(v)
        self.count += 1
        self.first = torch.where(torch.isnan(self.first), v, self.first)
        self.avg = torch.where(finite, SMOOTH * self.avg + (1 - SMOOTH) * v, self.avg)
        smoothed = self.avg / (1 - SMOOTH ** self.count)
        self.minimum = torch.minimum(self.minimum, smoothed)
        exploded = (smoothed > self.factor * self.minimum) & (smoothed > self.first) if math.isfinite(self.factor) \
            else torch.zeros((), dtype=torch.bool, device=self.device)
        kind = torch.where(~finite, 1, torch.where(exploded, 2, 0))
        new = (self.bad_step < 0) & (kind > 0)
        self.bad_step = torch.where(new, torch.full_like(self.bad_step, step), self.bad_step)
        self.bad_value = torch.where(new, v, self.bad_value)
        self.bad_kind = torch.where(new, kind, self.bad_kind)

    def due(self, step: int) -> bool:
        return step % self.sync_every == 0

    def check(self, where: str, info=None, kept: str = "") -> None:
        """Read the flag (a host sync; every rank must call it at the same step) and raise if set."""
        from cnnlab.train import distributed

        bad = int(self.bad_step)
        if info is not None and info.enabled:
            bad = int(distributed.all_max([bad], info, self.device)[0])
            if bad >= 0 and int(self.bad_step) < 0:  # another rank saw it
                raise TrainingDiverged(f"the loss became non-finite on another process at step {bad} ({where}); "
                                       f"{kept}; {self.cause()}")
        if bad < 0:
            return
        value, kind = float(self.bad_value), int(self.bad_kind)
        if kind == 1:
            what = f"the loss became {value} at step {bad} ({where})"
        else:
            what = (f"the loss exploded at step {bad} ({where}): its running average passed {self.factor:g} "
                    f"times its lowest value (this step's loss {value:.4g}; see --diverge-factor)")
        raise TrainingDiverged(f"{what}; {kept}; {self.cause()}")

    def cause(self) -> str:
        """The likely cause, as advice."""
        c = self.cfg
        peak = c.lr
        for name, lam in (("weight_decay", c.weight_decay), ("l2", c.l2)):
            if lam > 0 and peak * lam >= 1:
                return (f"likely cause: weight decay, since lr x {name} = {peak * lam:.3g} >= 1 makes every step "
                        f"scale the weights by |1 - lr x {name}| >= 1; lower --{name.replace('_', '-')} "
                        f"(now {lam:g}) or --lr (now {c.lr:g})")
        return f"likely cause: the learning rate is too large for this model; try a lower --lr (now {c.lr:g})"

    def check_weights(self, model: nn.Module, where: str, kept: str) -> None:
        """Raise if a weight or buffer holds NaN or infinity (one device-side reduction, one sync)."""
        tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        if not tensors:
            return
        ok = torch.stack([torch.isfinite(t).all() for t in tensors]).all()
        if not bool(ok):
            name = next(k for k, t in model.state_dict().items() if t.is_floating_point()
                        and not bool(torch.isfinite(t).all()))
            raise TrainingDiverged(f"the weights became non-finite ({name!r} holds NaN or infinity) after "
                                   f"{where}; {kept}; {self.cause()}")

    def check_eval(self, row: dict, where: str, kept: str) -> None:
        for key in ("val_loss", "test_loss"):
            value = row.get(key)
            if value is not None and not math.isfinite(value):
                raise TrainingDiverged(f"the {key.replace('_', ' ')} became {value} after {where}, so the weights no "
                                       f"longer predict anything; {kept}; {self.cause()}")
