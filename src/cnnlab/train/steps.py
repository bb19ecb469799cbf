"""Per-step work of the training loop besides the update itself: the step log (``steps.csv`` and
TensorBoard scalars every ``log_every`` steps), the clock of mid-epoch checkpoints (every N steps
or minutes; with several processes agreed on rank 0's clock), fp16's gradient scaler, and the
kills that tests use to interrupt a run at a given step.
"""
from __future__ import annotations

import time

import torch

from cnnlab.errors import CnnlabError
from cnnlab.train import distributed
from cnnlab.train.build import Run
from cnnlab.train.config import parse_every
from cnnlab.train.rundir import STEP_LOG, open_step_log

AGREE_EVERY = 10  # steps between the ranks' agreements on a checkpoint every N minutes


def check_amp(amp: str | None, device: torch.device) -> None:
    """fp16 autocast with its gradient scaler is a CUDA feature here; on the CPU bf16 is the choice."""
    if amp == "fp16" and device.type != "cuda":
        raise CnnlabError(f"--amp fp16 needs a CUDA GPU (its gradient scaler guards float16's narrow range there); "
                          f"this run is on {device.type}: use --amp bf16 on the CPU")


class StepExtras:
    """Per-step work besides the update: the step log (steps.csv, TensorBoard), the mid-epoch
    checkpoint clock, the gradient scaler of fp16, and test-only kills."""

    def __init__(self, run: Run, writer, *, stop_after_step: int | None = None) -> None:
        self.run, self.writer, self.stop_after_step = run, writer, stop_after_step
        cfg = run.cfg
        self.every = parse_every(cfg.checkpoint_every) if cfg.checkpoint_every else None
        self.clock = time.monotonic()
        self.killed = False
        self.scaler = None
        if cfg.amp == "fp16":
            self.scaler = torch.amp.GradScaler(run.device.type)
            if run.scaler_state:
                self.scaler.load_state_dict(run.scaler_state)
        run.scaler = self.scaler
        self.epoch_lr, self.epoch_momentum = run.schedule.lr, run.schedule.momentum
        self.log = None
        if cfg.log_every and run.info.is_main:
            self.log = open_step_log(run.out / STEP_LOG, run.step)

    def after_step(self, loss: torch.Tensor | None, epoch: int) -> None:
        cfg, run = self.run.cfg, self.run
        if self.log is None or run.step % cfg.log_every:
            return
        value, lr = float(loss) if loss is not None else float("nan"), run.optimizer.param_groups[0]["lr"]
        self.log.write(f"{run.step},{epoch},{value!r},{lr!r}\n")
        self.log.flush()
        if self.writer is not None:
            self.writer.add_scalar("step/loss", value, run.step)
            self.writer.add_scalar("step/lr", lr, run.step)

    def checkpoint_due(self, step: int) -> bool:
        if self.every is None:
            return False
        kind, value = self.every
        if kind == "steps":
            return step % value == 0
        due = time.monotonic() - self.clock >= value * 60
        info = self.run.info
        if info.enabled:  # the ranks' clocks differ, and writing a checkpoint gathers every rank's state:
            if step % AGREE_EVERY:  # rank 0's clock decides, read every few steps
                return False
            due = distributed.all_max([due and info.is_main], info, self.run.device)[0] > 0
        if due:
            self.clock = time.monotonic()
        return due

    def last_step(self, step: int) -> bool:
        cfg = self.run.cfg
        return (cfg.max_steps is not None and step >= cfg.max_steps) or \
            (self.stop_after_step is not None and step >= self.stop_after_step)

    def killed_at(self, step: int) -> bool:
        if self.stop_after_step is not None and step >= self.stop_after_step:
            self.killed = True
        return self.killed

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
