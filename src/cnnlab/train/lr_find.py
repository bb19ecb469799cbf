"""The learning-rate range test (Smith 2015/2017, "Cyclical learning rates", sec. 3.3) and its plot.

    >>> result = lr_range_test(model, train_loader, make_optimizer(model, "sgd", lr=0.1))
    >>> result.suggestion                         # a learning rate to train with
    >>> plot_lr_find(result, "lr_find.png", title="lenet5 on mnist")

Train for ``num_steps`` mini-batches while the learning rate grows exponentially from
``start_lr`` to ``end_lr``, recording an exponentially smoothed loss. The loss first stays flat
(lr too small to move), then falls (lr useful), then blows up (lr too large); the test stops
early once the smoothed loss exceeds ``diverge_factor`` times the best seen so far. Afterwards
the model's and the optimizer's state (and torch's CPU random state) are put back as they were.

The suggestion is the lr where the smoothed loss falls fastest: the most negative slope of the
smoothed loss against log(lr), searched between the second point and the loss minimum (points
after the minimum belong to the blow-up). When the descent is too short for a slope (the minimum
within the first two points), it falls back to the fastai rule, the lr of the minimum divided
by 10 (kept inside the tested range).
"""
from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_open
from cnnlab.train import checkpoint as ckpt


@dataclass
class LRFindResult:
    lrs: list[float]  # the learning rate of each step
    losses: list[float]  # the smoothed (and bias-corrected) training loss after each step
    suggestion: float  # the lr at the steepest descent of the smoothed loss
    stopped_early: bool  # the loss diverged before num_steps


def _cross_entropy(output: Any, target: Tensor) -> Tensor:
    """Cross-entropy of the main logits (a model with auxiliary heads returns a tuple in training)."""
    logits = output[0] if isinstance(output, tuple) else output
    return F.cross_entropy(logits, target)


def _endless(batches: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches over and over: a re-iterable (a loader) is iterated again, a one-shot
    iterator is remembered."""
    if iter(batches) is batches:
        seen = []
        for b in batches:
            seen.append(b)
            yield b
        batches = seen
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise CnnlabError("the learning-rate range test received no batches")


def lr_range_test(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smooth: float = 0.98,
    diverge_factor: float = 4.0,
    progress: bool = False,
    loss_fn: Callable[[Any, Tensor], Tensor] = _cross_entropy,
) -> LRFindResult:
    """Run the range test on ``model`` with ``optimizer`` (its lr is overridden, its state restored).

    Args:
        batches: (input, target) pairs already on the model's device; cycled if fewer than num_steps.
        start_lr, end_lr: the range; step i uses start_lr * (end_lr / start_lr) ** (i / (num_steps - 1)).
        num_steps: optimizer steps (at most; fewer if the loss diverges).
        smooth: β of the loss's exponential moving average (bias-corrected as in Adam).
        diverge_factor: stop once the smoothed loss exceeds this multiple of the best one.
        progress: show a progress bar on stderr.
        loss_fn: (model output, target) -> scalar loss; cross-entropy of the logits by default.
    """
    if not (math.isfinite(start_lr) and math.isfinite(end_lr) and 0 < start_lr < end_lr):
        raise CnnlabError(f"the range test needs 0 < start_lr < end_lr; received start_lr={start_lr}, end_lr={end_lr}")
    if not (isinstance(num_steps, int) and num_steps >= 2):
        raise CnnlabError(f"the range test needs at least 2 steps; received num_steps={num_steps}")
    if not 0 <= smooth < 1:
        raise CnnlabError(f"smooth must be in [0, 1); received smooth={smooth}")
    if not diverge_factor > 1:
        raise CnnlabError(f"diverge_factor must be greater than 1; received diverge_factor={diverge_factor}")

    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_rng = ckpt.rng_state()  # dropout draws: running the test first must not change the training run
    was_training = model.training
    lrs: list[float] = []
    losses: list[float] = []
    stopped_early = False
    from tqdm.auto import tqdm

    bar = tqdm(total=num_steps, desc="lr range test", unit="step", disable=not progress, leave=True)
    try:
        model.train()
        avg, best = 0.0, math.inf
        ratio = end_lr / start_lr
        for i, (x, y) in zip(range(num_steps), _endless(batches)):
            lr = start_lr * ratio ** (i / (num_steps - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            bar.update(1)
            if not math.isfinite(value):
                stopped_early = True
                break
            avg = smooth * avg + (1 - smooth) * value
            smoothed = avg / (1 - smooth ** (i + 1))  # bias correction: the average starts at 0
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            if smoothed > diverge_factor * best:
                stopped_early = True
                break
            bar.set_postfix(lr=f"{lr:.2e}", loss=f"{smoothed:.4f}", refresh=False)
    finally:
        bar.close()
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        optimizer.zero_grad(set_to_none=True)
        ckpt.set_rng_state(saved_rng)
        model.train(was_training)
    if not lrs:
        raise CnnlabError(f"the loss was not finite at the first step (lr={start_lr}); lower start_lr")
    return LRFindResult(lrs, losses, suggest_lr(lrs, losses), stopped_early)


def suggest_lr(lrs: list[float], losses: list[float]) -> float:
    """The lr at the steepest descent of ``losses`` against log(lr), before the loss minimum."""
    assert len(lrs) == len(losses) and lrs, "one loss per lr, at least one"
    low = min(range(len(losses)), key=losses.__getitem__)
    if low < 2:  # no descent to measure: fastai's rule, the minimum's lr / 10
        return max(lrs[low] / 10, lrs[0])
    logs = [math.log(v) for v in lrs]
    return lrs[min(range(1, low + 1), key=lambda i: _slope(logs, losses, i))]


def _slope(x: list[float], y: list[float], i: int) -> float:
    """dy/dx at point i: a central difference inside, one-sided at the ends (numpy.gradient's rule)."""
    a, b = max(i - 1, 0), min(i + 1, len(x) - 1)
    return (y[b] - y[a]) / (x[b] - x[a])


def plot_lr_find(result: LRFindResult, path: str | os.PathLike, *, title: str = "") -> None:
    """Smoothed loss against the learning rate (log axis), the suggestion marked; an atomic PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))  # no pyplot: the global backend stays as the caller set it
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, "-", color="C0", label="smoothed training loss")
    ax.axvline(result.suggestion, color="C3", linestyle="--", label=f"suggestion {result.suggestion:.2e}")
    ax.set_xscale("log")
    default_title = "learning-rate range test" + (" (stopped at divergence)" if result.stopped_early else "")
    ax.set(xlabel="learning rate (log scale)", ylabel="smoothed loss", title=title or default_title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)


def run(cfg, *, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100,
        out_png: str | os.PathLike | None = None, progress: bool = False, dataset=None,
        log: Callable[[str], None] | None = None) -> LRFindResult:
    """The range test for a ``TrainConfig``: its model, data (augmented as configured), optimizer
    and loss, on the configured device; optionally saves the plot to ``out_png``.

    Only the model, data and optimizer fields of ``cfg`` matter (``LR_FIND_FIELDS``); its lr is
    replaced by the range. Torch's thread count and global RNG are restored afterwards.
    """
    from cnnlab import data as cdata
    from cnnlab.data.augment import parse_augment
    from cnnlab.train.engine import build_model, classification_loss, resolve_device, use_channels_last
    from cnnlab.train.optim import make_optimizer
    from cnnlab.train.trainer import torch_settings

    cfg.validate()
    device = resolve_device(cfg.device)
    if not (isinstance(num_steps, int) and 2 <= num_steps <= 100_000):
        raise CnnlabError(f"the range test takes 2 to 100000 steps; received steps={num_steps}")
    ds = dataset if dataset is not None else cdata.load_dataset(cfg.data, cfg.data_root, log=log)
    with torch_settings(cfg.threads, cfg.deterministic):
        torch.manual_seed(cfg.seed)
        layers = None
        if cfg.spec is not None:
            from cnnlab.train.build import load_layers

            layers = load_layers(cfg)
        model = build_model(cfg, ds.num_classes, ds.input_size, layers=layers).to(device)
        channels_last = use_channels_last(cfg, model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.batch_size > len(ds.train_y):
            raise CnnlabError(f"batch size {cfg.batch_size} is larger than the {len(ds.train_y)} training images")
        loader = cdata.BatchLoader(ds.train_x, ds.train_y, batch_size=cfg.batch_size, mean=ds.mean, std=ds.std,
                                   seed=cfg.seed, device=device, channels_last=channels_last,
                                   augment=parse_augment(cfg.augment), num_classes=ds.num_classes)
        optimizer = make_optimizer(model, cfg, lr=start_lr)
        result = lr_range_test(model, loader, optimizer, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps,
                               progress=progress, loss_fn=lambda out, y: classification_loss(out, y, cfg.label_smoothing)[0])
    if out_png is not None:
        name = f"spec {os.path.basename(cfg.spec)}" if cfg.spec else cfg.model
        plot_lr_find(result, out_png, title=f"{name} on {cfg.data}, {cfg.optimizer}")
    return result


# The TrainConfig fields the range test uses (``cnnlab lr-find`` offers only these as flags).
LR_FIND_FIELDS = ("model", "spec", "data", "model_args", "backend", "init", "dropout", "batch_size", "optimizer",
                  "momentum", "nesterov", "beta1", "beta2", "weight_decay", "bias_bn_decay", "label_smoothing",
                  "augment", "seed", "deterministic", "device", "threads", "channels_last", "data_root")
