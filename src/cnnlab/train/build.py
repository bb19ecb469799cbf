"""Building a run: everything ``fit`` trains with, assembled in one place from the config.

``build_run`` makes the model (from the registry, or from a layer list), the loaders (sharded
when several processes train), the optimizer and the schedule (both from the config), wraps the
model in DDP and ``torch.compile`` when asked, and returns a ``Run``: the parts plus the
progress of the run (epoch, step, history, best epoch), which ``restore.restore_run`` fills from
a checkpoint and ``save_epoch`` writes back.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab import data as cdata
from cnnlab import models
from cnnlab.data.augment import parse_augment
from cnnlab.errors import CnnlabError
from cnnlab.inspect import check_input_size
from cnnlab.train import distributed
from cnnlab.train.bn import train_only_bn
from cnnlab.train.config import TrainConfig
from cnnlab.train.engine import build_model, use_channels_last
from cnnlab.train.evaluation import FLIP_SENSITIVE  # digits are not mirror-symmetric
from cnnlab.train.optim import make_optimizer
from cnnlab.train.schedules import Schedule, make_schedule
from cnnlab.train.sharding import ShardedEvalLoader, ShardedTrainLoader, check_global_batch



@dataclass
class Run:
    """A run being trained: its parts and its progress."""

    cfg: TrainConfig
    out: Path
    info: distributed.Dist
    device: torch.device
    dataset: dict[str, Any]  # name, num_classes, input_size, mean, std, train_size, test_size
    model: nn.Module  # the bare model: its state_dict is what checkpoints hold
    train_model: nn.Module  # what the training step calls (DDP and/or compiled around ``model``)
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    train_loader: ShardedTrainLoader
    val_loader: cdata.BatchLoader | None
    test_loader: cdata.BatchLoader
    bn_loader: cdata.BatchLoader
    layers: list[dict] | None = None  # the layer list of a spec-built model
    attack: Callable | None = None  # adversarial training: (model, x, y) -> x_adv
    # progress
    epoch: int = 0  # the last completed epoch
    step: int = 0
    rows: list[dict] = field(default_factory=list)
    best_metric: float = -math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None  # weights of best_epoch when it is not ``epoch``
    guard_state: dict[str, float] | None = None
    compile_pending: bool = False  # the next step compiles the model (its time is not training time)
    fast_kernels: Any = None  # cnnlab.models.fast.Report: the kernels swapped in (None: not tried)

    @property
    def name(self) -> str:
        return f"spec {Path(self.cfg.spec).name}" if self.cfg.spec else self.cfg.model

    @property
    def monitor(self) -> str:
        return "val_top1" if self.val_loader is not None else "test_top1"

    @property
    def params(self) -> int:
        return models.count_params(self.model)


def dataset_meta(ds: cdata.Dataset) -> dict[str, Any]:
    return {"name": ds.name, "num_classes": ds.num_classes, "input_size": list(ds.input_size),
            "mean": list(ds.mean), "std": list(ds.std), "train_size": len(ds.train_y), "test_size": len(ds.test_y)}


def load_layers(cfg: TrainConfig) -> list[dict] | None:
    """The layer list of ``cfg.spec`` (None without one)."""
    if cfg.spec is None:
        return None
    try:
        from cnnlab import spec as layer_spec
    except ImportError:
        raise CnnlabError("--spec needs the cnnlab.spec module, which this installation lacks") from None
    return layer_spec.load(cfg.spec)


def make_attack(cfg: TrainConfig, ds_mean, ds_std) -> Callable | None:
    if cfg.adversarial is None:
        return None
    try:
        from cnnlab.inspect.adversarial import make_training_attack
    except ImportError:
        raise CnnlabError("--adversarial needs the cnnlab.inspect.adversarial module, which this installation "
                          "lacks") from None
    return make_training_attack(cfg.adversarial, mean=tuple(ds_mean), std=tuple(ds_std))


def warnings_for(cfg: TrainConfig, ds_name: str) -> list[str]:
    """Advice about a config that runs but probably does not do what was meant."""
    out = []
    ops = [part.split(":")[0].strip() for part in cfg.augment.split(",")]
    if "flip" in ops and ds_name in FLIP_SENSITIVE:
        out.append(f"warning: --augment flip mirrors {ds_name} digits, which are not mirror-symmetric "
                   f"(a mirrored 2 or 7 is no digit); it usually costs accuracy there")
    return out


def build_run(cfg: TrainConfig, out: Path, ds: cdata.Dataset, info: distributed.Dist, device: torch.device, *,
              layers: list[dict] | None = None) -> Run:
    """Assemble a run of ``cfg`` on ``ds`` (nothing is written). ``layers``: the layer list of a
    spec-built model (from its checkpoint when resuming; else read from ``cfg.spec``)."""
    check_global_batch(cfg.batch_size, info.world_size)
    if layers is None:
        layers = load_layers(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, ds.num_classes, ds.input_size, layers=layers)
    check_input_size(model, ds.input_size, name=cfg.model if layers is None else "the spec model")
    if cfg.train_only == "bn":
        train_only_bn(model)
    channels_last = use_channels_last(cfg, model)

    # --- data: uint8 in memory, batched by permutation, augmented per batch -----------------------
    train_x, train_y = ds.train_x, ds.train_y
    common = dict(mean=ds.mean, std=ds.std, device=device, channels_last=channels_last)
    shard = dict(rank=info.rank, world_size=info.world_size)
    val_loader = None
    if cfg.val_split > 0:
        (train_x, train_y), (val_x, val_y) = cdata.split_validation(train_x, train_y, cfg.val_split, cfg.seed)
        val_loader = ShardedEvalLoader(val_x, val_y, batch_size=cfg.eval_batch_size, **common, **shard)
    if cfg.batch_size > len(train_y):
        raise CnnlabError(f"batch size {cfg.batch_size} is larger than the {len(train_y)} training images of "
                          f"{ds.name}; use at most {len(train_y)}")
    train_loader = ShardedTrainLoader(train_x, train_y, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                                      augment=parse_augment(cfg.augment), num_classes=ds.num_classes,
                                      **common, **shard)
    if len(train_loader) == 0:
        raise CnnlabError(f"{len(train_y)} training images cannot be shared by {info.world_size} processes")
    train_loader.normalized_all()  # normalize the set once now, not inside the first epoch's time
    test_loader = ShardedEvalLoader(ds.test_x, ds.test_y, batch_size=cfg.eval_batch_size, **common, **shard)
    # precise BN reads the plain training images; every rank reads all of them, so all agree.
    bn_loader = cdata.BatchLoader(train_x, train_y, batch_size=cfg.eval_batch_size, shuffle=True,
                                  seed=cfg.seed, **common)

    # --- model, optimizer, schedule, wrappers ------------------------------------------------------
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fast_report = apply_fast_kernels(model, cfg, train_loader, info)
    optimizer = make_optimizer(model, cfg)
    schedule = make_schedule(optimizer, cfg, len(train_loader))
    train_model: nn.Module = model
    if info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    return Run(cfg=cfg, out=out, info=info, device=device, dataset=dataset_meta(ds), model=model,
               train_model=train_model, optimizer=optimizer, schedule=schedule, train_loader=train_loader,
               val_loader=val_loader, test_loader=test_loader, bn_loader=bn_loader, layers=layers,
               attack=make_attack(cfg, ds.mean, ds.std), compile_pending=cfg.compile, fast_kernels=fast_report)


FAST_KERNELS = ("pool-before-relu", "slice-pool")  # bit-exact: the choice never changes a run's numbers


def apply_fast_kernels(model: nn.Module, cfg: TrainConfig, loader: cdata.BatchLoader, info: distributed.Dist):
    """Swap in ``cnnlab.models.fast``'s kernels that measure faster on a training batch's shapes
    (CPU, torch backend, ``cfg.fast_kernels``); returns the report, or None when not tried.

    Only the bit-exact rewrites are considered (ReLU after max pooling, a 2x2 pool as strided
    maxima: same outputs and gradients, bit for bit), so a run's numbers never depend on which
    were kept, and a resumed run matches an uninterrupted one; the im2col conv, which rounds
    differently, is left out. The measuring passes leave no trace: batch-norm statistics and the
    random streams are restored. Parameters and ``state_dict`` keys are untouched.
    """
    if not cfg.fast_kernels or cfg.backend != "torch" or loader.device.type != "cpu":
        return None
    from cnnlab.models import fast

    n = max(1, min(len(loader.x), cfg.batch_size // max(1, info.world_size)))
    example = loader.normalize(loader.x[:n])
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    with torch.random.fork_rng(devices=[]):
        report = fast.apply(model, example, enabled=True, kernels=FAST_KERNELS, margin=1.1, repeats=5)
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(buffers[k])
    return report
