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
from cnnlab.train.config import DEFAULT_VAL_SPLIT, TrainConfig
from cnnlab.train.ema import EMA
from cnnlab.data.folder import StreamingFolder, load_folder, make_loader, parse_folder_spec
from cnnlab.errors import clip
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
    # lifecycle
    selection: str = ""  # what best.pt is chosen on, in words
    ema: EMA | None = None
    batch_in_epoch: int = 0  # batches of epoch ``epoch + 1`` already trained (a mid-epoch checkpoint)
    partial: dict[str, Any] | None = None  # that epoch's running sums, restored from the checkpoint
    scaler: Any = None  # fp16's GradScaler while training
    scaler_state: dict[str, Any] | None = None  # its state from the checkpoint

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
    """What a checkpoint records of its data: enough for eval, predict and export without it."""
    if isinstance(ds, StreamingFolder):
        sizes = {"train_size": len(ds.index.train), "test_size": len(ds.index.test)}
    else:
        sizes = {"train_size": len(ds.train_y), "test_size": len(ds.test_y)}
    meta = {"name": ds.name, "num_classes": ds.num_classes, "input_size": list(ds.input_size),
            "mean": list(ds.mean), "std": list(ds.std), **sizes, "classes": [str(c) for c in ds.classes]}
    info = getattr(ds, "info", None) or {}
    if info.get("preprocess"):
        meta["preprocess"] = dict(info["preprocess"])
    if info.get("skipped"):
        meta["skipped"] = len(info["skipped"])
    return meta


def load_data(cfg: TrainConfig, log: Callable[[str], None] | None = None, progress=None):
    """The dataset of ``cfg.data``: a built-in one from the cache, or an image folder (``folder:PATH``)."""
    path = parse_folder_spec(cfg.data)
    if path is None:
        return cdata.load_dataset(cfg.data, cfg.data_root, log=log)
    return load_folder(path, image_size=cfg.image_size, crop_pct=cfg.crop_pct, train_crop=cfg.train_crop,
                       val_split=folder_val_split(cfg), test_split=cfg.test_split, seed=cfg.seed,
                       strict=cfg.strict, workers=cfg.workers, log=log, progress=progress)


def folder_val_split(cfg: TrainConfig) -> float:
    return DEFAULT_VAL_SPLIT if cfg.val_split is None else cfg.val_split


def steps_per_epoch(cfg: TrainConfig, train_loader) -> int:
    """Optimizer steps per epoch: the loader's batches (of batch_size x accumulate), at most limit_batches."""
    n = len(train_loader)
    return min(n, cfg.limit_batches) if cfg.limit_batches is not None else n


def make_loaders(cfg: TrainConfig, ds, info: distributed.Dist, device: torch.device, channels_last: bool):
    """(train, val or None, test, precise-BN) loaders and what best.pt is chosen on, in words.

    The validation split: the dataset's own (an image folder's val/), else a seeded fraction of
    the training set (``val_split``; default 10%), else none with ``val_split=0``."""
    common = dict(mean=ds.mean, std=ds.std, device=device, channels_last=channels_last)
    shard = dict(rank=info.rank, world_size=info.world_size)
    big_batch = cfg.batch_size * cfg.accumulate
    augment = parse_augment(cfg.augment)
    if isinstance(ds, StreamingFolder):
        has_val = ds.index.val is not None and len(ds.index.val) > 0 and cfg.val_split != 0
        val_loader = make_loader(ds, "val", batch_size=cfg.eval_batch_size, shuffle=False, **common, **shard) \
            if has_val else None
        selection = (f"validation split of {len(ds.index.val)} images ({ds.info.get('sources', {}).get('val', 'val')})"
                     if has_val else "test set (optimistic)")
        train_loader = make_loader(ds, "train", batch_size=big_batch, shuffle=True, seed=cfg.seed, augment=augment,
                                   num_classes=ds.num_classes, **common, **shard)
        test_loader = make_loader(ds, "test", batch_size=cfg.eval_batch_size, shuffle=False, **common, **shard)
        bn_loader = make_loader(ds, "train", train=False, batch_size=cfg.eval_batch_size, shuffle=True,
                                seed=cfg.seed, **common)
        return train_loader, val_loader, test_loader, bn_loader, selection
    train_x, train_y = ds.train_x, ds.train_y
    val_loader, selection = None, "test set (optimistic)"
    own_val = getattr(ds, "val_x", None)
    if own_val is not None and len(own_val) and cfg.val_split != 0:
        val_x, val_y = own_val, ds.val_y
        where = (getattr(ds, "info", None) or {}).get("sources", {}).get("val") or "the dataset's own"
        selection = f"validation split of {len(val_y)} images ({where})"
    else:
        fraction = DEFAULT_VAL_SPLIT if cfg.val_split is None else cfg.val_split
        if cfg.val_split is None and round(len(train_y) * fraction) < 1:
            fraction = 0.0  # too few images to hold any out
        val_x = None
        if fraction > 0:
            (train_x, train_y), (val_x, val_y) = cdata.split_validation(train_x, train_y, fraction, cfg.seed)
            selection = (f"validation split of {len(val_y)} images ({fraction:.0%} of the training set "
                         f"held out, seed {cfg.seed})")
    if val_x is not None:
        val_loader = ShardedEvalLoader(val_x, val_y, batch_size=cfg.eval_batch_size, **common, **shard)
    if big_batch > len(train_y):
        raise CnnlabError(f"batch size {big_batch} is larger than the {len(train_y)} training images of "
                          f"{ds.name}; use at most {len(train_y)}")
    train_loader = ShardedTrainLoader(train_x, train_y, batch_size=big_batch, shuffle=True, seed=cfg.seed,
                                      augment=augment, num_classes=ds.num_classes, **common, **shard)
    if len(train_loader) == 0:
        raise CnnlabError(f"{len(train_y)} training images cannot be shared by {info.world_size} processes")
    test_loader = ShardedEvalLoader(ds.test_x, ds.test_y, batch_size=cfg.eval_batch_size, **common, **shard)
    # precise BN reads the plain training images; every rank reads all of them, so all agree.
    bn_loader = cdata.BatchLoader(train_x, train_y, batch_size=cfg.eval_batch_size, shuffle=True,
                                  seed=cfg.seed, **common)
    return train_loader, val_loader, test_loader, bn_loader, selection


def _head_keys(model: nn.Module) -> set[str]:
    """The state keys of the model's last Linear (or 1x1-conv classifier) layer."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = name
    if last is None:
        return set()
    return {f"{last}.{k}" if last else k for k, _ in model.get_submodule(last).state_dict().items()}


def init_weights_from(model: nn.Module, source: str, log: Callable[[str], None] | None = None) -> None:
    """Load the weights of a run directory or checkpoint into ``model`` (fine-tuning). A head of
    another class count stays freshly initialized; any other mismatch is refused naming the key."""
    from cnnlab.train import checkpoint as ckpt

    file = ckpt.resolve(source)
    state = ckpt.load_checkpoint(file)
    weights, own = state["model"], model.state_dict()
    head = _head_keys(model)
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected:
        key = (missing or unexpected)[0]
        raise CnnlabError(f"--init-from {clip(str(file), 120)}: its architecture does not match this model (first "
                          f"mismatched key: {key!r} is {'missing from the checkpoint' if missing else 'not in the model'})")
    skipped = []
    for k, t in own.items():
        if tuple(weights[k].shape) != tuple(t.shape):
            if k not in head:
                raise CnnlabError(f"--init-from {clip(str(file), 120)}: its architecture does not match this model "
                                  f"(first mismatched key: {k!r} has shape {tuple(weights[k].shape)}, the model "
                                  f"expects {tuple(t.shape)})")
            skipped.append(k)
    with torch.no_grad():
        model.load_state_dict({k: (own[k] if k in skipped else weights[k]) for k in own})
    if log is not None:
        log(f"initialized from {file}" + (f"; new head ({', '.join(skipped)}) for "
                                          f"{own[skipped[0]].shape[0]} classes" if skipped else ""))


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
              layers: list[dict] | None = None, model: nn.Module | None = None, init_from: str | None = None,
              log: Callable[[str], None] | None = None) -> Run:
    """Assemble a run of ``cfg`` on ``ds`` (nothing is written). ``layers``: the layer list of a
    spec-built model (from its checkpoint when resuming; else read from ``cfg.spec``)."""
    check_global_batch(cfg.batch_size, info.world_size)
    if layers is None:
        layers = load_layers(cfg)
    torch.manual_seed(cfg.seed)
    if model is None:
        model = build_model(cfg, ds.num_classes, ds.input_size, layers=layers)
    check_input_size(model, ds.input_size, name=cfg.model if layers is None else "the spec model")
    if cfg.train_only == "bn":
        train_only_bn(model)
    channels_last = use_channels_last(cfg, model)

    # --- data: uint8 in memory (or streamed from an image folder), augmented per batch -------------
    train_loader, val_loader, test_loader, bn_loader, selection = make_loaders(cfg, ds, info, device, channels_last)
    if init_from is not None:
        init_weights_from(model, init_from, log)
    if hasattr(train_loader, "normalized_all"):
        train_loader.normalized_all()  # normalize the set once now, not inside the first epoch's time

    # --- model, optimizer, schedule, wrappers ------------------------------------------------------
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fast_report = apply_fast_kernels(model, cfg, train_loader, info)
    optimizer = make_optimizer(model, cfg)
    schedule = make_schedule(optimizer, cfg, steps_per_epoch(cfg, train_loader))
    train_model: nn.Module = model
    if info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    return Run(cfg=cfg, out=out, info=info, device=device, dataset=dataset_meta(ds), model=model,
               train_model=train_model, optimizer=optimizer, schedule=schedule, train_loader=train_loader,
               val_loader=val_loader, test_loader=test_loader, bn_loader=bn_loader, layers=layers,
               attack=make_attack(cfg, ds.mean, ds.std), compile_pending=cfg.compile, selection=selection,
               ema=EMA(model, cfg.ema, warmup=cfg.ema_warmup) if cfg.ema is not None else None, fast_kernels=fast_report)


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
    if (not cfg.fast_kernels or cfg.backend != "torch" or loader.device.type != "cpu"
            or not hasattr(loader, "x")):  # a streaming folder loader holds no images to time on
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
