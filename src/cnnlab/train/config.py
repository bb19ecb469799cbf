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
import typing
from dataclasses import dataclass, field
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.train.optim import OPTIMIZERS
from cnnlab.train.schedules import INTERVALS, SCHEDULES

TRAIN_ONLY = ("bn",)
AMP = ("bf16",)


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # what to train
    model: str = _f("lenet5", "a registered model, see `cnnlab zoo`")
    data: str = _f("mnist", "mnist, fashion-mnist, cifar10 or cifar100")
    model_args: dict[str, Any] = _f({}, "extra model builder arguments, e.g. {hidden: [256]}")
    backend: str = _f("torch", "torch, or manual for cnnlab.manual's hand-derived layers")
    init: str | None = _f(None, "lecun, xavier-normal, xavier-uniform, he-fan-in, he-fan-out, torch-default; "
                                "default: the paper's")
    dropout: float | None = _f(None, "dropout rate for models that have dropout; default: the paper's")
    # how long, how big
    epochs: int = _f(3, "passes over the training set")
    batch_size: int = _f(128, "images per optimizer step (the global batch with several processes)")
    eval_batch_size: int = _f(1000, "images per evaluation forward pass")
    # optimizer
    optimizer: str = _f("adam", f"one of {', '.join(OPTIMIZERS)}")
    lr: float = _f(4e-3, "learning rate (the peak of one-cycle, the base of other schedules)")
    momentum: float = _f(0.9, "SGD/RMSprop momentum")
    nesterov: bool = _f(False, "Nesterov momentum (sgd)")
    beta1: float = _f(0.9, "Adam's beta1")
    beta2: float = _f(0.999, "Adam's beta2")
    weight_decay: float = _f(0.0, "weight decay in the optimizer (coupled for sgd/adam, decoupled for adamw)")
    l2: float = _f(0.0, "lambda of an explicit (lambda/2)*||theta||^2 term in the loss")
    no_decay_bias_bn: bool = _f(False, "no weight decay or L2 on biases and normalization parameters")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy, in [0, 1)")
    grad_clip: float | None = _f(None, "clip the gradient's global L2 norm to this value")
    # schedule
    schedule: str = _f("onecycle", f"one of {', '.join(SCHEDULES)}")
    schedule_interval: str = _f("iteration", "update the lr every iteration or every epoch")
    warmup: float = _f(0.0, "epochs of linear warmup in front of the schedule")
    step_size: int = _f(30, "epochs between lr drops (step)")
    milestones: list[int] = _f([], "epochs at which the lr drops (multistep), e.g. 30,60")
    gamma: float = _f(0.1, "lr factor per drop (step, multistep) or per epoch (exponential)")
    eta_min: float = _f(0.0, "final lr of the cosine schedule")
    pct_start: float = _f(0.25, "fraction of the run spent warming up in one-cycle")
    momentum_ramp: float | None = _f(None, "Sutskever et al.'s momentum ramp up to this value")
    # regularization and data
    augment: str = _f("none", "batch augmentations, e.g. flip,crop:4,cutout:8 (see `cnnlab augment --help`)")
    val_split: float = _f(0.0, "fraction of the training set held out for validation")
    early_stopping: int | None = _f(None, "stop after this many epochs without a better validation top-1, "
                                          "and restore the best weights (needs --val-split)")
    # batch norm
    precise_bn: bool = _f(False, "after training, recompute BN statistics over the training set")
    precise_bn_batches: int | None = _f(None, "batches for --precise-bn; default: the whole training set")
    train_only: str | None = _f(None, "train only these parameters: bn (the BN-only experiment)")
    # reproducibility and speed
    seed: int = _f(0, "the one seed: init, data order, augmentation, dropout")
    deterministic: bool = _f(False, "torch.use_deterministic_algorithms (slower on GPU)")
    device: str = _f("cpu", "cpu, cuda or cuda:N")
    threads: int | None = _f(None, "torch CPU threads; default: torch's choice")
    channels_last: bool | None = _f(None, "NHWC memory format; default: on for models without BatchNorm "
                                          "(measured on 2 CPU cores: LeNet-5 4.9 -> 4.0 s/epoch, BN models slower)")
    amp: str | None = _f(None, "mixed precision: bf16 (autocast on CPU or GPU)")
    compile: bool = _f(False, "torch.compile the model (compile time is reported separately)")
    # files
    data_root: str | None = _f(None, "dataset cache; default $CNNLAB_DATA or ~/.cache/cnnlab")
    tensorboard: bool = _f(False, "also write TensorBoard event files (needs the tensorboard package)")

    def validate(self) -> TrainConfig:
        """Refuse impossible values with one clear sentence; return self.

        Optimizer and schedule parameters are checked again, in full, by their factories."""
        def positive_or_none(value, key):
            return value is None or value >= 1, f"{key} must be at least 1; received {key}={value}"

        checks = [
            (self.epochs >= 1, f"epochs must be at least 1; received epochs={self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1; received batch_size={self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval batch size must be at least 1; received {self.eval_batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"learning rate must be positive; received lr={self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1); received momentum={self.momentum}"),
            (self.weight_decay >= 0, f"weight decay must be non-negative; received weight_decay={self.weight_decay}"),
            (self.l2 >= 0, f"l2 must be non-negative; received l2={self.l2}"),
            (0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1); received {self.label_smoothing}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be positive; received {self.grad_clip}"),
            (self.dropout is None or 0 <= self.dropout < 1, f"dropout must be in [0, 1); received {self.dropout}"),
            (0 <= self.val_split < 1, f"val_split must be in (0, 1), or 0 for none; received val_split={self.val_split}"),
            positive_or_none(self.early_stopping, "early_stopping"),
            (self.early_stopping is None or self.val_split > 0,
             "early stopping watches a validation split; pass --val-split too (e.g. --val-split 0.1)"),
            positive_or_none(self.precise_bn_batches, "precise_bn_batches"),
            positive_or_none(self.threads, "threads"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}"),
            (self.schedule_interval in INTERVALS,
             f"unknown schedule interval {self.schedule_interval!r}; valid: {', '.join(INTERVALS)}"),
            (self.backend in ("torch", "manual"), f"unknown backend {self.backend!r}; valid: torch, manual"),
            (self.train_only is None or self.train_only in TRAIN_ONLY,
             f"unknown --train-only {self.train_only!r}; valid: {', '.join(TRAIN_ONLY)}"),
            (self.amp is None or self.amp in AMP, f"unknown --amp {self.amp!r}; valid: {', '.join(AMP)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise CnnlabError(message)
        from cnnlab import data, models
        from cnnlab.data.augment import parse_augment

        models.info(self.model)  # unknown names raise, listing the close ones
        data.spec(self.data)
        parse_augment(self.augment)
        return self

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
        out = {}
        for key, value in values.items():
            key = key.replace("-", "_")
            if key not in known:
                raise CnnlabError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(known))}")
            out[key] = _coerce(key, value, hints[key])
        return dataclasses.replace(self, **out)


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
            if isinstance(value, dict):
                return dict(value)
        elif hint is Any:
            return value
    except (TypeError, ValueError, CnnlabError):
        pass
    kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
             dict: "a mapping"}
    raise CnnlabError(f"config key {key!r} needs {kinds.get(origin, str(hint))}; received {value!r}")
