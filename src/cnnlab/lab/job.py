"""The lab's live training job: a lean loop in a thread, controlled step by step.

Why not ``cnnlab.train.fit``: the batch trainer runs whole epochs with a fixed config and a
schedule, and reports once per epoch. The lab needs control between any two steps (pause,
resume, stop; learning rate, momentum, weight decay, optimizer and batch size changed by a knob
take effect at the next step) and a stream of points several times a second. So this loop is
deliberately small: it draws batches from the same in-memory uint8 tensors as ``BatchLoader``
(its permutation and its normalization), builds the optimizer with the trainer's
``make_optimizer``, and uses the trainer's loss and evaluation. What it leaves out (schedules,
augmentation beyond the model's own input crop, AMP, DDP, checkpoints every epoch) is what
``cnnlab train`` is for.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from cnnlab import data as cdata
from cnnlab.errors import CnnlabError
from cnnlab.train.engine import classification_loss
from cnnlab.train.optim import OPTIMIZERS, make_optimizer

POINT_SECONDS = 0.1  # a training point (mean loss and accuracy of its steps) at most this often
TEST_SECONDS = 1.0  # a test point at most this often, and
TEST_SHARE = 0.1  # ...at most this share of the time: on a slow CPU the curve must not stall training
TEST_IMAGES = 500  # test points are measured on this many test images (the full set at the end)


@dataclass(frozen=True)
class Knobs:
    """What the page can change while training; every change applies at the next step."""

    lr: float = 0.01
    momentum: float = 0.9  # SGD/RMSprop momentum; Adam's beta1
    batch_size: int = 32
    weight_decay: float = 0.0
    optimizer: str = "sgd"

    def updated(self, values: dict[str, Any]) -> Knobs:
        unknown = [k for k in values if k not in asdict(self)]
        if unknown:
            raise CnnlabError(f"unknown knob {str(unknown[0])[:40]!r}; valid: {', '.join(asdict(self))}")
        out: dict[str, Any] = {}
        for key, value in values.items():
            if key == "optimizer":
                if value not in OPTIMIZERS:
                    raise CnnlabError(f"unknown optimizer {str(value)[:40]!r}; valid: {', '.join(OPTIMIZERS)}")
                out[key] = value
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise CnnlabError(f"{key} must be a number; received {str(value)[:40]!r}") from None
            if key == "batch_size":
                if not number.is_integer() or not 1 <= number <= 4096:
                    raise CnnlabError(f"batch size must be an integer from 1 to 4096; received {value!r}")
                out[key] = int(number)
            elif key == "lr" and not (math.isfinite(number) and 0 < number <= 10):
                raise CnnlabError(f"learning rate must be in (0, 10]; received lr={value!r}")
            elif key == "momentum" and not 0 <= number < 1:
                raise CnnlabError(f"momentum must be in [0, 1); received momentum={value!r}")
            elif key == "weight_decay" and not (math.isfinite(number) and 0 <= number <= 1):
                raise CnnlabError(f"weight decay must be in [0, 1]; received weight_decay={value!r}")
            else:
                out[key] = number
        return replace(self, **out)


class TrainingJob:
    """Train ``model`` on ``dataset`` in a background thread until stopped (or ``max_steps``).

    ``on_point(point)`` is called from the training thread with dicts such as
    ``{"kind": "train", "step", "epoch", "examples", "loss", "acc", "images_per_second", "time"}``
    and ``{"kind": "test", "step", "loss", "acc", "time"}`` (``time`` is ``time.time()`` when the
    point's last step ended). ``lock`` is held during each step, so that other threads can use the
    model between steps.
    """

    def __init__(self, model: nn.Module, dataset: cdata.Dataset, knobs: Knobs, *,
                 on_point: Callable[[dict[str, Any]], None], lock: threading.Lock, seed: int = 0,
                 device: str = "cpu", max_steps: int | None = None, start_step: int = 0,
                 start_examples: int = 0) -> None:
        self.model = model
        self.dataset = dataset
        self.knobs = knobs
        self._new_knobs: Knobs | None = None
        self.on_point = on_point
        self.lock = lock
        self.device = torch.device(device)
        self.max_steps = max_steps
        self.step = start_step
        self.examples = start_examples
        self.epoch = start_examples // max(len(dataset.train_y), 1)
        self.error: str | None = None
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._loader = cdata.BatchLoader(dataset.train_x, dataset.train_y, batch_size=knobs.batch_size,
                                         mean=dataset.mean, std=dataset.std, seed=seed, device=self.device)
        n_test = min(TEST_IMAGES, len(dataset.test_y))
        self._test = cdata.BatchLoader(dataset.test_x[:n_test], dataset.test_y[:n_test], batch_size=500,
                                       mean=dataset.mean, std=dataset.std, shuffle=False, device=self.device)
        self._thread = threading.Thread(target=self._run, name="cnnlab-lab-training", daemon=True)

    # --- control, from any thread -----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def state(self) -> str:
        if self._thread.is_alive():
            return "running" if self._running.is_set() else "paused"
        return "failed" if self.error else "stopped"

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current step and wait for the thread (the model is then consistent)."""
        self._stop.set()
        self._running.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def set_knobs(self, knobs: Knobs) -> None:
        self._new_knobs = knobs

    # --- the loop ---------------------------------------------------------------------------------

    def _optimizer(self, knobs: Knobs) -> torch.optim.Optimizer:
        return make_optimizer(self.model, knobs.optimizer, lr=knobs.lr, momentum=knobs.momentum,
                              weight_decay=knobs.weight_decay, betas=(knobs.momentum, 0.999))

    def _apply(self, optimizer: torch.optim.Optimizer, old: Knobs, new: Knobs) -> torch.optim.Optimizer:
        if new.optimizer != old.optimizer:
            return self._optimizer(new)  # a new optimizer starts with empty state (no momentum yet)
        for group in optimizer.param_groups:
            group["lr"] = new.lr
            if "momentum" in group:
                group["momentum"] = new.momentum
            if "betas" in group:
                group["betas"] = (new.momentum, group["betas"][1])
            if group.get("weight_decay", 0) or new.weight_decay != old.weight_decay:
                # param_groups keeps biases/BN at 0 only when asked (no_decay_bias_bn is off here)
                group["weight_decay"] = new.weight_decay
        return optimizer

    def _batches(self):
        """Endless batches; the batch size is read at every step."""
        loader = self._loader
        while True:
            loader.set_epoch(self.epoch)
            order = loader.order()
            pos = 0
            while pos < len(order):
                size = self.knobs.batch_size
                idx = order[pos:pos + size]
                pos += size
                yield loader.normalize(loader.x[idx]), loader.y[idx]
            self.epoch += 1

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # reported to the page; the server stays up
            self.error = f"training stopped: {type(e).__name__}: {str(e)[:200]}"
            self.on_point({"kind": "error", "message": self.error, "time": time.time()})

    def _loop(self) -> None:
        optimizer = self._optimizer(self.knobs)
        batches = self._batches()
        acc_loss = acc_correct = acc_seen = 0.0
        window_start = last_point = time.perf_counter()
        window_seen = 0
        last_test, test_every = -math.inf, TEST_SECONDS
        self.model.train()
        while not self._stop.is_set():
            if not self._running.is_set():
                self._running.wait()
                window_start, window_seen = time.perf_counter(), 0  # no images/s across a pause
                continue
            if self._new_knobs is not None:
                new, self._new_knobs = self._new_knobs, None
                optimizer = self._apply(optimizer, self.knobs, new)
                self.knobs = new
            x, y = next(batches)
            with self.lock:
                self.model.train()
                loss, logits = classification_loss(self.model(x), y)
                value = loss.item()
                if not math.isfinite(value):
                    raise CnnlabError(f"the loss became {value} at step {self.step + 1}; "
                                      f"lower the learning rate (lr={self.knobs.lr:g}) and start again")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            self.step += 1
            self.examples += len(y)
            acc_loss += value * len(y)
            acc_correct += (logits.detach().argmax(1) == y).sum().item()
            acc_seen += len(y)
            window_seen += len(y)
            now = time.perf_counter()
            if now - last_point >= POINT_SECONDS:
                speed = window_seen / max(now - window_start, 1e-9)
                self.on_point({"kind": "train", "step": self.step, "epoch": self.examples / len(self.dataset.train_y),
                               "examples": self.examples, "loss": acc_loss / acc_seen, "acc": acc_correct / acc_seen,
                               "images_per_second": speed, "lr": self.knobs.lr, "time": time.time()})
                acc_loss = acc_correct = acc_seen = 0.0
                last_point = now
                if now - window_start > 2.0:  # images/s over the last ~1-2 s
                    window_start, window_seen = now, 0
            if now - last_test >= test_every:
                self._test_point()
                last_test = time.perf_counter()
                test_every = max(TEST_SECONDS, (last_test - now) / TEST_SHARE)
            if self.max_steps is not None and self.step >= self.max_steps:
                break
        if acc_seen:
            self.on_point({"kind": "train", "step": self.step, "epoch": self.examples / len(self.dataset.train_y),
                           "examples": self.examples, "loss": acc_loss / acc_seen, "acc": acc_correct / acc_seen,
                           "images_per_second": None, "lr": self.knobs.lr, "time": time.time()})
        self._test_point()

    @torch.inference_mode()
    def _test_point(self) -> None:
        with self.lock:
            self.model.eval()
            loss_sum, correct, n = 0.0, 0, 0
            for x, y in self._test:
                logits = self.model(x)
                loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
                n += len(y)
            self.model.train()
        self.on_point({"kind": "test", "step": self.step, "loss": loss_sum / n, "acc": correct / n, "time": time.time()})
