"""Batch norm as the lecture teaches it: precise population statistics, and training only BN.

The lecture (Ryu, ch. 3, "BN during testing") gives two strategies for the mean and variance that
batch norm uses at test time:

1. after training, fix all parameters and evaluate the network on the full training set to
   compute them *layer by layer* (each layer's input depends on the statistics of the layers
   before it, so they must be computed in order): ``precise_bn``;
2. keep a running average during training, which is what PyTorch does by default.

It also shows that a randomly initialized CNN in which only the BN parameters (gamma, beta) are
trained does surprisingly well (Frankle, Schwab & Morcos 2021, "Training BatchNorm and Only
BatchNorm"): ``train_only_bn`` freezes everything else.

    >>> updated = precise_bn(model, train_loader)          # after fit(); model on the loader's device
    >>> params = train_only_bn(model)                      # before building the optimizer
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from cnnlab.errors import CnnlabError

Batches = Iterable[Tensor] | Callable[[], Iterable[Tensor]]


def count_bn(model: nn.Module) -> int:
    """The number of batch-norm layers (BatchNorm1d/2d/3d, their manual twins, SyncBatchNorm)."""
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def train_only_bn(model: nn.Module) -> list[nn.Parameter]:
    """Freeze every parameter except the BN weights and biases; return the ones left trainable.

    As in Frankle et al. 2021 (sec. 3), the output layer is frozen too: only gamma and beta of
    the batch-norm layers learn. Pass the returned list to the optimizer (or build it from
    ``p.requires_grad``).
    """
    bn_params = {id(p) for m in model.modules() if isinstance(m, _BatchNorm)
                 for p in (m.weight, m.bias) if p is not None}
    if not bn_params:
        raise CnnlabError(f"training only the batch-norm parameters needs a model with affine batch-norm layers; "
                          f"received a {type(model).__name__} with {count_bn(model)} batch-norm layers "
                          f"and no BN weights or biases")
    for p in model.parameters():
        p.requires_grad_(id(p) in bn_params)
    return [p for p in model.parameters() if p.requires_grad]


class _StopForward(Exception):
    """Raised by a hook once the layer being measured has seen its input: the rest is not needed."""


class _ChannelMoments:
    """Exact per-channel count, mean and sum of squared deviations, merged batch by batch.

    Each batch's mean and variance are combined with Chan et al.'s pairwise formula in float64,
    which is exact up to rounding and, unlike sum-of-squares, does not cancel catastrophically.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, x: Tensor) -> None:
        dims = [d for d in range(x.ndim) if d != 1]  # every axis but the channel: (N, C[, L | H, W | D, H, W])
        x = x if x.dtype in (torch.float32, torch.float64) else x.float()
        var_b, mean_b = torch.var_mean(x, dim=dims, correction=0)
        n_b = x.numel() // x.shape[1]
        mean_b, m2_b = mean_b.double(), var_b.double() * n_b
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta.square() * (self.n * n_b / n)
        self.n = n

    def variance(self) -> Tensor:
        # torch's running_var holds the unbiased estimate (BatchNorm updates it with the batch's
        # unbiased variance), so the population statistic is stored the same way.
        assert self.m2 is not None
        return self.m2 / max(self.n - 1, 1)


def _pass_factory(batches: Batches | Tensor, num_batches: int | None) -> Callable[[], Iterator[Tensor]]:
    """A function returning one fresh pass over the inputs (first element of (x, y) pairs)."""
    if num_batches is not None and num_batches < 1:
        raise CnnlabError(f"num_batches must be at least 1 (or None for all); received num_batches={num_batches}")
    if isinstance(batches, Tensor):
        source: Callable[[], Iterable] = lambda: [batches]  # noqa: E731  (a single batch)
    elif callable(batches):
        source = batches
    else:
        if iter(batches) is batches:
            raise CnnlabError("precise batch norm makes one pass over the data per BN layer, so it needs a "
                              "re-iterable source (a list, a BatchLoader) or a function returning a fresh "
                              f"iterable; received a one-shot {type(batches).__name__}")
        source = lambda: batches  # noqa: E731

    def one_pass() -> Iterator[Tensor]:
        for i, item in enumerate(source()):
            if num_batches is not None and i >= num_batches:
                return
            yield item[0] if isinstance(item, (tuple, list)) else item

    return one_pass


def _execution_order(model: nn.Module, layers: list[_BatchNorm], x: Tensor) -> tuple[list[_BatchNorm], dict]:
    """The BN layers in the order one forward pass calls them, and how often each is called.

    Registration order (``model.modules()``) need not be the order of ``forward``; the layers a
    pass never reaches (unused modules) are left out.
    """
    calls: dict[int, int] = {}
    order: list[_BatchNorm] = []

    def record(module: nn.Module, args: tuple) -> None:
        if id(module) not in calls:
            order.append(module)
        calls[id(module)] = calls.get(id(module), 0) + 1

    handles = [m.register_forward_pre_hook(record) for m in layers]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return order, calls


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Batches, *, num_batches: int | None = None,
               progress: bool = False, exact: bool = True) -> int:
    """Recompute every BN layer's running mean and variance over ``batches``; return how many.

    The lecture's strategy 1: with all weights fixed, for each BN layer in the order the forward
    pass reaches it, run eval-mode forward passes over all the batches (the earlier BN layers
    already normalize with their new statistics), accumulate the exact mean and variance of the
    layer's input over every sample (and every pixel, for BatchNorm2d), and store them. One pass
    per layer; each pass stops as soon as the layer has seen its input.

    Args:
        batches: input tensors (normalized, on the model's device), or (x, y) pairs such as a
            ``cnnlab.data.BatchLoader`` yields; a list, a loader, or a function returning a fresh
            iterable (a generator function). A single-use iterator is refused.
        num_batches: use only the first ``num_batches`` batches of each pass (an estimate).
        progress: show a progress bar over the layers on stderr.
        exact: False takes the cheaper single pass: BN layers in train mode with ``momentum=None``
            (torch's cumulative average of the per-batch statistics). Its means are exact for
            equal batch sizes but its variances are averages of batch variances, and every layer
            normalizes with its batch's statistics rather than the population's.

    A BN layer called several times in one forward pass (a shared module) gets the statistics
    of all its calls' inputs. Layers without running statistics (``track_running_stats=False``)
    are skipped. Returns 0 if the model has no BN layer.
    """
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not layers:
        return 0
    one_pass = _pass_factory(batches, num_batches)
    was_training = model.training
    model.eval()  # dropout off, BN normalizing with running statistics
    try:
        first = next(iter(one_pass()), None)
        if first is None:
            raise CnnlabError("precise batch norm needs at least one batch; the batches given were empty")
        if not exact:
            return _cumulative_bn(model, layers, one_pass)
        order, calls = _execution_order(model, layers, first)
        from tqdm.auto import tqdm

        for layer in tqdm(order, desc="precise BN", unit="layer", disable=not progress, file=sys.stderr):
            moments = _ChannelMoments()
            seen = [0]

            def capture(module: nn.Module, args: tuple, layer_calls: int = calls[id(layer)]) -> None:
                moments.add(args[0])
                seen[0] += 1
                if seen[0] == layer_calls:
                    raise _StopForward  # later layers do not affect this layer's input

            handle = layer.register_forward_pre_hook(capture)
            try:
                for x in one_pass():
                    seen[0] = 0
                    try:
                        model(x)
                    except _StopForward:
                        pass
            finally:
                handle.remove()
            layer.running_mean.copy_(moments.mean)
            layer.running_var.copy_(moments.variance())
        return len(order)
    finally:
        model.train(was_training)


def _cumulative_bn(model: nn.Module, layers: list[_BatchNorm], one_pass: Callable[[], Iterator[Tensor]]) -> int:
    """All layers in one train-mode pass, averaging batch statistics (torch's momentum=None)."""
    momenta = [m.momentum for m in layers]
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for x in one_pass():
            model(x)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
            m.eval()
    return len(layers)
