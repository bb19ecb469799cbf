"""Small shared pieces of the experiments' lean loops: subsets, tensors, accuracy, seeding.

The experiments train with the library's own parts (``cnnlab.models.create``,
``cnnlab.train.optim.make_optimizer``, ``cnnlab.train.schedules.make_schedule``,
``cnnlab.data.BatchLoader``, ``cnnlab.train.evaluate``); these helpers only cut data to size.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from cnnlab.data import BatchLoader, Dataset


def subset(ds: Dataset, n_train: int, n_test: int, seed: int = 0) -> Dataset:
    """A class-mixed random subset (the first ``n`` of a fixed permutation of each split)."""
    g = torch.Generator().manual_seed(seed)
    tr = torch.randperm(len(ds.train_x), generator=g)[:n_train]
    te = torch.randperm(len(ds.test_x), generator=g)[:n_test]
    return replace(ds, train_x=ds.train_x[tr], train_y=ds.train_y[tr], test_x=ds.test_x[te], test_y=ds.test_y[te])


def loader(ds: Dataset, split: str = "train", *, batch_size: int = 128, seed: int = 0, shuffle: bool | None = None,
           augment=None) -> BatchLoader:
    x, y = (ds.train_x, ds.train_y) if split == "train" else (ds.test_x, ds.test_y)
    return BatchLoader(x, y, batch_size=batch_size, mean=ds.mean, std=ds.std, seed=seed,
                       shuffle=(split == "train") if shuffle is None else shuffle, augment=augment,
                       num_classes=ds.num_classes)


def tensors(ds: Dataset, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as normalized float32 (N, C, H, W) and int64 labels (for full-batch loops)."""
    load = loader(ds, split, batch_size=1, shuffle=False)
    return load.normalize(load.x), load.y


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    model.train(was)
    return correct / max(len(x), 1)


def seeded(seed: int) -> None:
    """Seed torch's global generator (model init, dropout) for one configuration."""
    torch.manual_seed(seed)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, ds: Dataset, steps: int, *, batch_size: int = 64,
                seed: int = 0, schedule=None, augment=None, loss_fn=None) -> dict[str, list[float]]:
    """``steps`` optimizer steps over shuffled batches of ``ds`` (epoch after epoch): the lean loop
    the experiments share. ``schedule`` is a ``cnnlab.train.schedules.Schedule`` (both hooks are
    called); returns the per-step loss and lr. A non-finite loss stops the loop early."""
    import torch.nn.functional as F

    loss_fn = loss_fn or F.cross_entropy
    batches = loader(ds, batch_size=batch_size, seed=seed, augment=augment)
    losses, lrs = [], []
    model.train()
    while len(losses) < steps:
        for x, y in batches:
            loss = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                return {"loss": losses + [float("nan")], "lr": lrs}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            lrs.append(opt.param_groups[0]["lr"])
            if schedule is not None:
                schedule.after_iteration()
            if len(losses) == steps:
                break
        else:
            if schedule is not None:
                schedule.after_epoch()
        batches.set_epoch(batches.epoch + 1)
    return {"loss": losses, "lr": lrs}


def evaluate_split(model: nn.Module, ds: Dataset, split: str = "test") -> dict[str, float]:
    """Loss, top-1 and top-5 on a split, through ``cnnlab.train.evaluate``."""
    from cnnlab.train import evaluate

    return evaluate(model, loader(ds, split, batch_size=1000, shuffle=False))
