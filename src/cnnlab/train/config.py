"""The training configuration: one typed dataclass, saved with every run.

Every field is a key of a YAML recipe and a flag of ``cnnlab train`` (``batch_size`` is
``--batch-size``); its help text, with its unit, is the field's ``help`` metadata. Later sources
win: defaults < ``--config FILE.yaml`` < flags.

    >>> cfg = TrainConfig(model="lenet5", epochs=3)
    >>> cfg = cfg.updated({"lr": "0.01", "milestones": "30,60"})   # type-checked
    >>> cfg.lr, cfg.milestones
    (0.01, [30, 60])

An unknown key or a value of the wrong type is refused with the key's name.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError, clip
from cnnlab.train.optim import OPTIMIZERS
from cnnlab.train.schedules import INTERVALS, SCHEDULES, check_milestones, is_fraction

TRAIN_ONLY = ("bn",)
MAX_INT = 2**31 - 1  # counts (epochs, batch sizes, steps): larger ones are typing mistakes
MIN_LR = float.fromhex("0x1p-126")  # float32's smallest normal number, about 1.18e-38
DEVICES = ("auto", "cpu", "cuda")
AMP = ("bf16", "fp16")
DEFAULT_VAL_SPLIT = 0.1
# Fields a resumed run may change: how it runs, not what it trains (epochs may also grow).
RUNTIME_FIELDS = ("threads", "device", "tensorboard", "data_root", "eval_batch_size", "workers", "log_every",
                  "checkpoint_every", "compile", "deterministic")


# Keys renamed since runs were first saved: old name -> (new name, whether the boolean is inverted).
RENAMED = {"no_decay_bias_bn": ("bias_bn_decay", True)}


def upgrade_keys(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the keys renamed since (``RENAMED``) under their new names, for comparing
    an older run's saved config with a newer one; values are left as they are otherwise."""
    out = {}
    for key, value in values.items():
        if key in RENAMED:
            key, invert = RENAMED[key]
            value = (not value) if invert and isinstance(value, bool) else value
        out.setdefault(key, value)
    return out


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # what to train
    model: str = _f("lenet5", "a registered model (see `cnnlab zoo`), or a module of your own as my_pkg.nets:Net")
    data: str = _f("mnist", "mnist, fashion-mnist, cifar10, cifar100, or folder:PATH (an image folder)")
    spec: str | None = _f(None, "build the model from a layer list (JSON/YAML) instead of --model")
    model_args: dict[str, Any] = _f({}, "extra model builder arguments, e.g. {hidden: [256]}")
    backend: str = _f("torch", "torch, or manual for cnnlab.manual's hand-derived layers")
    init: str | None = _f(None, "lecun, xavier-normal, xavier-uniform, he-fan-in, he-fan-out, torch-default; "
                                "default: the paper's")
    dropout: float | None = _f(None, "dropout rate for models that have dropout; default: the paper's")
    # how long, how big
    epochs: int = _f(2, "passes over the training set")
    batch_size: int = _f(128, "images per optimizer step (the global batch with several processes)")
    eval_batch_size: int = _f(1000, "images per evaluation forward pass")
    # optimizer
    optimizer: str = _f("adam", f"one of {', '.join(OPTIMIZERS)}")
    lr: float = _f(8e-3, "learning rate (the peak of one-cycle, the base of other schedules)")
    momentum: float = _f(0.9, "SGD/RMSprop momentum")
    nesterov: bool = _f(False, "Nesterov momentum (sgd)")
    beta1: float = _f(0.9, "Adam's beta1")
    beta2: float = _f(0.999, "Adam's beta2")
    weight_decay: float = _f(0.0, "weight decay in the optimizer (coupled for sgd/adam, decoupled for adamw)")
    l2: float = _f(0.0, "lambda of an explicit (lambda/2)*||theta||^2 term in the loss")
    bias_bn_decay: bool = _f(True, "weight decay and L2 also on biases and normalization parameters "
                                   "(--no-bias-bn-decay exempts them)")
    label_smoothing: float = _f(0.1, "label smoothing of the cross-entropy, in [0, 1) (Szegedy et al. 2016); "
                                    "0 for the plain cross-entropy")
    grad_clip: float | None = _f(None, "clip the gradient's global L2 norm to this value")
    # schedule
    schedule: str = _f("onecycle", f"one of {', '.join(SCHEDULES)}")
    schedule_interval: str = _f("iteration", "update the lr every iteration or every epoch")
    warmup: float = _f(0.0, "epochs of linear warmup in front of the schedule")
    step_size: float = _f(30, "epochs between lr drops (step), or a fraction of the run in (0, 1), e.g. 0.3")
    milestones: list[float] = _f([], "epochs at which the lr drops (multistep), e.g. 30,60, or all fractions of "
                                     "the run, e.g. 0.5,0.75 (kept when --epochs changes)")
    gamma: float = _f(0.1, "lr factor per drop (step, multistep) or per epoch (exponential)")
    eta_min: float = _f(0.0, "final lr of the cosine schedule")
    pct_start: float = _f(0.25, "fraction of the run spent warming up in one-cycle")
    momentum_ramp: float | None = _f(None, "Sutskever et al.'s momentum ramp up to this value")
    # regularization and data
    augment: str = _f("none", "batch augmentations, e.g. flip,crop:4,cutout:8 (see `cnnlab augment --help`)")
    val_split: float | None = _f(None, "fraction of the training set held out for validation, on which best.pt "
                                       "is chosen; default: 0.1 when the data has no validation split; "
                                       "0: none (best.pt chosen on the test set, optimistic)")
    diverge_factor: float = _f(10.0, "stop as diverged when the smoothed training loss exceeds this multiple of its "
                                    "running minimum (and the first step's loss); inf: only NaN/inf stop")
    adversarial: str | None = _f(None, "adversarial training: fgsm:EPS | fgsm-rs:EPS,ALPHA | pgd:EPS,ALPHA,STEPS, "
                                       "eps in [0,1] pixel units")
    early_stopping: int | None = _f(None, "stop after this many epochs without a better validation top-1, "
                                          "and restore the best weights (needs --val-split)")
    # batch norm
    precise_bn: bool = _f(False, "after training, recompute BN statistics over the training set")
    precise_bn_batches: int | None = _f(None, "batches for --precise-bn; default: the whole training set")
    train_only: str | None = _f(None, "train only these parameters: bn (the BN-only experiment)")
    # reproducibility and speed
    seed: int = _f(0, "the one seed: init, data order, augmentation, dropout")
    deterministic: bool = _f(False, "torch.use_deterministic_algorithms (slower on GPU)")
    device: str = _f("auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    threads: int | None = _f(None, "torch CPU threads (at most 4x the cores); default on the CPU: the cores this "
                                   "process may use less those busy with other processes (on 2 cores under a load of 6, "
                                   "a LeNet-5 epoch took 86 s in the tutorial loop with torch's 2 threads, 6.8 s in "
                                   "the trainer with 1); on a GPU torch's choice")
    channels_last: bool | None = _f(None, "NHWC memory format; default: on for models without BatchNorm "
                                          "(measured on 2 CPU cores: LeNet-5 4.9 -> 4.0 s/epoch, BN models slower)")
    amp: str | None = _f(None, "mixed precision: bf16 (autocast on CPU or GPU)")
    compile: bool = _f(False, "torch.compile the model (compile time is reported separately)")
    fast_kernels: bool = _f(True, "exact faster kernels on the CPU (ReLU after max pooling, pooling as strided "
                                  "maxima), kept only where measured faster; same results and checkpoints")
    # files
    data_root: str | None = _f(None, "dataset cache; default $CNNLAB_DATA or ~/.cache/cnnlab")
    tensorboard: bool = _f(False, "also write TensorBoard event files (needs the tensorboard package)")
    # your own data, the run lifecycle, practitioners' training features
    image_size: int | None = _f(None, "image folders: side of the square input (resize + centre crop); "
                                      "default: the images' own size when they all share it")
    crop_pct: float = _f(1.0, "image folders: evaluation crop fraction (0.875: resize to size/0.875, crop size)")
    train_crop: str = _f("resize", "image folders: training crop, resize or rrc (random resized crop, streaming)")
    test_split: float = _f(0.2, "image folders without test/ (or val/): fraction held out as the test set")
    workers: int | None = _f(None, "image folders: decoding worker processes; default: from the CPU count")
    strict: bool = _f(False, "image folders: refuse unreadable images instead of skipping them")
    ema: float | None = _f(None, "keep an exponential moving average of the weights with this decay, "
                                 "e.g. 0.999; evaluated (ema_* columns) and saved beside the raw weights")
    ema_warmup: bool = _f(True, "the EMA's decay of update n is min(decay, (1+n)/(10+n)), so that a short run's "
                                "average is not dominated by its initial weights")
    accumulate: int = _f(1, "gradient accumulation: each optimizer step sums the gradients of this many "
                            "pieces of a batch of batch_size*accumulate images (same as one large batch)")
    max_steps: int | None = _f(None, "stop after this many optimizer steps (quick runs; the run is finished "
                                     "and evaluated there)")
    limit_batches: int | None = _f(None, "train on at most this many batches per epoch (quick runs)")
    log_every: int | None = _f(None, "write the loss and lr of every N-th step to steps.csv (and TensorBoard)")
    checkpoint_every: str | None = _f(None, "also write last.pt every N steps (500) or minutes (10m) inside "
                                            "an epoch; a resumed run continues from that batch")
    init_from: str | None = _f(None, "start from the weights of a run directory or checkpoint (fine-tuning); "
                                     "a head of another class count is replaced by a fresh one")

    def validate(self, *, own_data: bool = False, own_model: bool = False) -> TrainConfig:
        """Refuse impossible values with one clear sentence; return self.

        Every field is checked, also those the chosen optimizer or schedule does not use (a
        ``gamma`` of NaN is refused even with onecycle); the factories check their combination."""
        _check_types(self)
        num = _num
        checks = [
            (1 <= self.epochs <= MAX_INT, f"epochs must be at least 1 (and at most {MAX_INT}); received epochs={_short(self.epochs)}"),
            (1 <= self.batch_size <= MAX_INT,
             f"batch size must be at least 1 (and at most {MAX_INT}); received batch_size={_short(self.batch_size)}"),
            (1 <= self.eval_batch_size <= MAX_INT,
             f"eval batch size must be at least 1 (and at most {MAX_INT}); received {_short(self.eval_batch_size)}"),
            (num(self.lr) and self.lr > 0, f"learning rate must be positive; received lr={self.lr}"),
            (not (self.lr > 0) or self.lr >= MIN_LR,
             f"learning rate must be at least {MIN_LR:.3g} (smaller ones are zero or subnormal in float32, so "
             f"nothing would train); received lr={self.lr}"),
            (num(self.momentum) and 0 <= self.momentum < 1, f"momentum must be in [0, 1); received momentum={self.momentum}"),
            (num(self.beta1) and 0 <= self.beta1 < 1, f"beta1 must be in [0, 1); received beta1={self.beta1}"),
            (num(self.beta2) and 0 <= self.beta2 < 1, f"beta2 must be in [0, 1); received beta2={self.beta2}"),
            (num(self.weight_decay) and self.weight_decay >= 0,
             f"weight decay must be non-negative; received weight_decay={self.weight_decay}"),
            (num(self.l2) and self.l2 >= 0, f"l2 must be non-negative; received l2={self.l2}"),
            (num(self.label_smoothing) and 0 <= self.label_smoothing < 1,
             f"label smoothing must be in [0, 1); received {self.label_smoothing}"),
            (self.grad_clip is None or (num(self.grad_clip) and self.grad_clip > 0),
             f"grad_clip must be positive; received {self.grad_clip}"),
            (self.dropout is None or (num(self.dropout) and 0 <= self.dropout < 1),
             f"dropout must be in [0, 1); received {self.dropout}"),
            (num(self.warmup) and 0 <= self.warmup < self.epochs,
             f"warmup must be at least 0 and shorter than the run ({self.epochs} epochs); received warmup={self.warmup}"),
            (_epoch_or_fraction(self.step_size),
             f"step_size must be a whole number of epochs of at least 1 or a fraction of the run in (0, 1); "
             f"received step_size={_short(self.step_size)}"),
            (all(_epoch_or_fraction(m) for m in self.milestones) and
             all(b > a for a, b in zip(self.milestones, self.milestones[1:])),
             f"milestones must be increasing whole epochs of at least 1, or increasing fractions of the run in "
             f"(0, 1); received milestones={_short(self.milestones)}"),
            (num(self.gamma) and 0 < self.gamma <= 1, f"gamma must be in (0, 1]; received gamma={self.gamma}"),
            (num(self.eta_min) and self.eta_min >= 0, f"eta_min must be at least 0; received eta_min={self.eta_min}"),
            (num(self.pct_start) and 0 < self.pct_start < 1, f"pct_start must be in (0, 1); received pct_start={self.pct_start}"),
            (self.momentum_ramp is None or (num(self.momentum_ramp) and 0 < self.momentum_ramp < 1),
             f"momentum_ramp (the largest momentum) must be in (0, 1); received momentum_ramp={self.momentum_ramp}"),
            (not math.isnan(self.diverge_factor) and self.diverge_factor > 1,
             f"diverge_factor must be greater than 1 (inf: off); received diverge_factor={self.diverge_factor}"),
            (self.val_split is None or (num(self.val_split) and 0 <= self.val_split < 1),
             f"val_split must be in (0, 1), or 0 for none; received val_split={self.val_split}"),
            (self.early_stopping is None or 1 <= self.early_stopping <= MAX_INT,
             f"early_stopping must be at least 1; received early_stopping={self.early_stopping}"),
            (self.early_stopping is None or self.val_split != 0,
             "early stopping watches a validation split; do not pass --val-split 0 with it"),
            (self.precise_bn_batches is None or 1 <= self.precise_bn_batches <= MAX_INT,
             f"precise_bn_batches must be at least 1; received precise_bn_batches={self.precise_bn_batches}"),
            (self.threads is None or 1 <= self.threads <= max_threads(),
             f"threads must be in [1, {max_threads()}] (4x the {os.cpu_count() or 1} cores); "
             f"received threads={self.threads}"),
            (0 <= self.seed < 2**63, f"seed must be in [0, 2**63); received seed={_short(self.seed)}"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {_short(self.optimizer)!r}; valid: {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"unknown schedule {_short(self.schedule)!r}; valid: {', '.join(SCHEDULES)}"),
            (self.schedule_interval in INTERVALS,
             f"unknown schedule interval {_short(self.schedule_interval)!r}; valid: {', '.join(INTERVALS)}"),
            (self.backend in ("torch", "manual"), f"unknown backend {_short(self.backend)!r}; valid: torch, manual"),
            (self.train_only is None or self.train_only in TRAIN_ONLY,
             f"unknown --train-only {_short(self.train_only)!r}; valid: {', '.join(TRAIN_ONLY)}"),
            (self.amp is None or self.amp in AMP, f"unknown --amp {_short(self.amp)!r}; valid: {', '.join(AMP)}"),
        ] + self._lifecycle_checks()
        check_milestones(self.milestones)  # not a mix of fractions and epochs
        for ok, message in checks:
            if not ok:
                raise CnnlabError(message)
        check_device_name(self.device)
        if self.data_root is not None and Path(self.data_root).exists() and not Path(self.data_root).is_dir():
            raise CnnlabError(f"--data-root must be a directory; {_short(self.data_root)} is a file")
        from cnnlab import data, models
        from cnnlab.data.augment import parse_augment

        if self.spec is None and not own_model and not is_import_path(self.model):
            models.info(self.model)  # unknown names raise, listing the close ones
        if not own_data:
            check_data_name(self.data)
        parse_augment(self.augment)
        if self.adversarial is not None:
            try:
                from cnnlab.inspect.adversarial import parse_adversarial
            except ImportError:
                pass  # the attack module is optional; the trainer says so if it is asked for
            else:
                parse_adversarial(self.adversarial)
        return self

    def _lifecycle_checks(self) -> list[tuple[bool, str]]:
        num = _num
        return [
            (self.image_size is None or 1 <= self.image_size <= 8192,
             f"image_size must be in [1, 8192] pixels; received image_size={_short(self.image_size)}"),
            (num(self.crop_pct) and 0 < self.crop_pct <= 1, f"crop_pct must be in (0, 1]; received {self.crop_pct}"),
            (self.train_crop in ("resize", "rrc"),
             f"unknown train_crop {_short(self.train_crop)!r}; valid: resize, rrc"),
            (num(self.test_split) and 0 < self.test_split < 1,
             f"test_split must be in (0, 1); received test_split={self.test_split}"),
            (self.workers is None or 0 <= self.workers <= 256, f"workers must be in [0, 256]; received {self.workers}"),
            (self.ema is None or (num(self.ema) and 0 < self.ema < 1),
             f"the EMA decay must be in (0, 1), e.g. 0.999; received --ema {self.ema}"),
            (1 <= self.accumulate <= 4096, f"--accumulate takes the number of pieces per optimizer step, "
                                           f"at least 1; received {_short(self.accumulate)}"),
            (self.max_steps is None or 1 <= self.max_steps <= MAX_INT,
             f"max_steps must be at least 1; received {_short(self.max_steps)}"),
            (self.limit_batches is None or 1 <= self.limit_batches <= MAX_INT,
             f"limit_batches must be at least 1; received {_short(self.limit_batches)}"),
            (self.log_every is None or 1 <= self.log_every <= MAX_INT,
             f"log_every must be at least 1 step; received {_short(self.log_every)}"),
            (self.checkpoint_every is None or parse_every(self.checkpoint_every) is not None,
             f"checkpoint_every takes a number of steps (500) or of minutes (10m); "
             f"received {_short(self.checkpoint_every)!r}"),
        ]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return cls().updated(values)

    def updated(self, values: dict[str, Any]) -> TrainConfig:
        """A copy with ``values`` applied; strings are converted to the field's type."""
        hints = typing.get_type_hints(type(self))
        known = {f.name for f in dataclasses.fields(self)}
        if not isinstance(values, dict):
            raise CnnlabError(f"a config must be a mapping of keys to values; received a {type(values).__name__}")
        out = {}
        for key, value in values.items():
            if not isinstance(key, str):
                raise CnnlabError(f"config keys are names; received the key {clip(repr(key), 60)}")
            key = key.replace("-", "_")
            if key in RENAMED:  # an older name, still read from recipes and saved runs
                new, invert = RENAMED[key]
                value = not _coerce(key, value, bool) if invert else value
                if any(isinstance(k, str) and k.replace("-", "_") == new and _coerce(new, v, bool) != value
                       for k, v in values.items()):
                    raise CnnlabError(f"config keys {key!r} and {new!r} (its new name) disagree; give only {new!r}")
                key = new
            if key not in known:
                raise CnnlabError(f"unknown config key {clip(key, 60)!r}; valid keys: {', '.join(sorted(known))}")
            out[key] = _coerce(key, value, hints[key])
            if key == "step_size":
                out[key] = _whole(out[key])
            elif key == "milestones":
                out[key] = [_whole(m) for m in out[key]]
        return dataclasses.replace(self, **out)


def parse_every(text: str) -> tuple[str, float] | None:
    """``"500"`` -> ("steps", 500); ``"10m"`` -> ("minutes", 10.0); None when malformed."""
    text = str(text).strip().lower()
    try:
        if text.endswith("m"):
            value = float(text[:-1])
            return ("minutes", value) if math.isfinite(value) and value > 0 else None
        value = int(text)
        return ("steps", value) if 1 <= value <= MAX_INT else None
    except ValueError:
        return None


def is_import_path(name: str) -> bool:
    """``my_pkg.nets:Net``: a model class given by its import path."""
    module, sep, attr = str(name).partition(":")
    return bool(sep and module and attr) and all(p.isidentifier() for p in module.split(".") + attr.split("."))


def check_data_name(name: str) -> None:
    """A built-in dataset name or ``folder:PATH`` (an existing folder)."""
    from cnnlab import data
    from cnnlab.data.folder import PREFIX, parse_folder_spec

    if str(name).startswith(PREFIX):
        parse_folder_spec(name)
        return
    data.spec(name)


def fields_help() -> list[tuple[str, Any, str]]:
    """(name, type, help) of every field, in declaration order (for the CLI and the docs)."""
    hints = typing.get_type_hints(TrainConfig)
    return [(f.name, hints[f.name], f.metadata.get("help", "")) for f in dataclasses.fields(TrainConfig)]


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` to the annotated type ``hint`` or raise naming ``key``."""
    args = typing.get_args(hint)
    if type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    try:
        if origin is bool:
            if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
                return value.lower() in _TRUE
            if isinstance(value, bool):
                return value
        elif origin is int:
            if not isinstance(value, bool) and not (isinstance(value, float) and not value.is_integer()):
                return int(value)
        elif origin is float:
            if not isinstance(value, bool):
                return float(value)
        elif origin is str:
            if isinstance(value, str):
                return value
        elif origin is list:
            items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
            if isinstance(items, (list, tuple)):
                (item_type,) = typing.get_args(hint) or (Any,)
                return [_coerce(key, v, item_type) if item_type is not Any else v for v in items]
        elif origin is dict:
            if isinstance(value, dict) and all(isinstance(k, str) for k in value):
                json.dumps(value, allow_nan=True)  # saved in config.json: plain values only
                return dict(value)
        elif hint is Any:
            return value
    except (TypeError, ValueError, OverflowError, RecursionError, CnnlabError):
        pass
    kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
             dict: "a mapping"}
    shown = clip(repr(value)) if not isinstance(value, (dict, list)) else f"a {type(value).__name__}"
    if origin is dict:
        kinds[dict] = "a mapping of names to plain values (numbers, strings, lists, mappings)"
    raise CnnlabError(f"config key {key!r} needs {kinds.get(origin, str(hint))}; received {shown}")


def _whole(value: Any) -> Any:
    """30.0 -> 30: a step size or milestone that is a whole number stays a count of epochs."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _epoch_or_fraction(value: Any) -> bool:
    """A whole number of epochs (at least 1) or a fraction of the run in (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return is_fraction(value) or (float(value).is_integer() and 1 <= value <= MAX_INT)


def _num(value: Any) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: Any) -> str:
    return clip(value, 60)


def max_threads() -> int:
    return 4 * (os.cpu_count() or 1)


def check_device_name(name: str) -> None:
    """Refuse a device other than auto, cpu, cuda or cuda:N (N an existing GPU) in one sentence."""
    base, _, index = name.partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise CnnlabError(f"unknown or unsupported device {_short(name)!r}; use auto, cpu, cuda or cuda:N")
    if base == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CnnlabError(f"device {name!r} was asked for, but CUDA is not available on this machine; "
                              f"use --device cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise CnnlabError(f"device {name!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")


_SIMPLE = {bool: bool, int: int, float: (int, float), str: str}


def _check_types(cfg: TrainConfig) -> None:
    """Fields set directly (``TrainConfig(lr="x")``) must still have their annotated types."""
    for name, hint, _ in fields_help():
        value = getattr(cfg, name)
        args = typing.get_args(hint)
        if type(None) in args:
            if value is None:
                continue
            hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint) or hint
        if origin in (int, float) and isinstance(value, bool):
            ok = False
        elif origin in _SIMPLE:
            ok = isinstance(value, _SIMPLE[origin])
        elif origin is list:
            (item,) = typing.get_args(hint) or (int,)
            ok = isinstance(value, list) and all(isinstance(v, _SIMPLE.get(item, object)) and not isinstance(v, bool)
                                                 for v in value)
        elif origin is dict:
            ok = isinstance(value, dict)
        else:
            ok = True
        if not ok:
            _coerce(name, value, hint)  # raises the usual one sentence
            raise CnnlabError(f"config key {name!r} has the wrong type; received {clip(repr(value))}")


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping of config keys in the YAML file ``path`` (size, depth and aliases limited)."""
    from cnnlab.yamlio import load_yaml

    values = load_yaml(path)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise CnnlabError(f"{clip(path)} must hold a mapping of config keys; it holds a {type(values).__name__}")
    return values
