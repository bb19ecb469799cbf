"""Gradient accumulation: one optimizer step over a batch processed in ``k`` smaller pieces.

    >>> for x, y in loader:                           # batches of batch_size * k images
    ...     optimizer.zero_grad()
    ...     for i, (xs, ys, weight) in enumerate(micro_batches(x, y, k)):
    ...         with no_sync_unless(train_model, last=i == k - 1):
    ...             (weight * F.cross_entropy(train_model(xs), ys)).backward()
    ...     optimizer.step()

The mean loss over a batch of ``N`` images is ``sum_i (n_i / N) * mean loss of piece i``, so
weighting each piece's mean loss by its share ``n_i / N`` makes the summed gradients equal to
the whole batch's, up to floating-point summation order. Letting the loader draw batches of
``batch_size * k`` and splitting them here keeps everything else as in a run with a k times
larger batch: the same images in each step (the permutation depends only on the seed), the same
batch augmentation, the same number of steps per epoch for the schedule.

Not equal, and not made equal: batch normalization normalizes each piece with its own
statistics (``n_i`` images, not ``N``) and updates its running averages once per piece, as
every accumulating trainer does (Lightning's ``accumulate_grad_batches``, fastai's
``GradientAccumulation``). Dropout draws differ with the piece boundaries.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from cnnlab.errors import CnnlabError


def check_accumulate(k: int) -> int:
    """Refuse a step count below 1 (``--accumulate 0``)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CnnlabError(f"--accumulate takes the number of pieces per optimizer step, at least 1; received {k!r}")
    return k


def micro_batches(x: torch.Tensor, y: torch.Tensor, k: int
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """Split a batch into at most ``k`` pieces of near-equal size: ``(x_i, y_i, n_i / N)``.

    ``y`` may be labels (N,) or soft targets (N, classes). A batch smaller than ``k`` (the last
    one of an epoch) gives fewer pieces; empty pieces are never yielded."""
    check_accumulate(k)
    n = len(x)
    if len(y) != n:
        raise CnnlabError(f"a batch needs one target per image; received {n} images and {len(y)} targets")
    for xs, ys in zip(x.tensor_split(k), y.tensor_split(k)):
        if len(xs):
            yield xs, ys, len(xs) / n


def no_sync_unless(model: nn.Module, *, last: bool):
    """DistributedDataParallel's ``no_sync()`` for every piece but the last (the gradients are
    all-reduced once per step); a no-op for a plain module."""
    if not last and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()
