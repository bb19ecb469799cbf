"""The training configuration: one typed dataclass, saved with every run.

    >>> cfg = TrainConfig(model="lenet5", epochs=3)
    >>> cfg = cfg.updated({"lr": "0.01"})      # from the CLI or a YAML file: type-checked
    >>> cfg.lr
    0.01

An unknown key or a value of the wrong type is refused with the key's name.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from cnnlab.errors import CnnlabError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "onecycle")


@dataclass
class TrainConfig:
    model: str = "lenet5"  # a registered name, see `cnnlab zoo`
    data: str = "mnist"  # a dataset name, see cnnlab.data.names()
    epochs: int = 3  # passes over the training set
    batch_size: int = 128  # images per optimizer step
    optimizer: str = "adam"  # one of OPTIMIZERS
    lr: float = 4e-3  # peak learning rate (the constant one with schedule=constant)
    momentum: float = 0.9  # SGD momentum (Adam's beta1 is left at 0.9)
    weight_decay: float = 0.0  # decoupled for adam (AdamW), L2 in the update for sgd
    schedule: str = "onecycle"  # one of SCHEDULES, stepped once per iteration
    seed: int = 0  # the one seed: init, data order, dropout
    val_split: float = 0.0  # fraction of the training set held out for validation; 0 = none
    backend: str = "torch"  # "torch" or "manual" (cnnlab.manual's hand-written layers)
    init: str | None = None  # None keeps the paper's init; see cnnlab.models.init
    model_args: dict[str, Any] = field(default_factory=dict)  # extra builder kwargs
    eval_batch_size: int = 1000  # images per evaluation forward pass
    channels_last: bool | None = None  # NHWC memory format; None = auto: on for models without BatchNorm
    # (measured on a 2-core CPU: LeNet-5 4.9 -> 4.0 s/epoch with it, BN models 5.5 -> 8.3 s/epoch)
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
    data_root: str | None = None  # dataset cache; None = $CNNLAB_DATA or ~/.cache/cnnlab

    def validate(self) -> TrainConfig:
        """Refuse impossible values with one clear sentence; return self."""
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1; received epochs={self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1; received batch_size={self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval batch size must be at least 1; received {self.eval_batch_size}"),
            (self.lr > 0, f"learning rate must be positive; received lr={self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1); received momentum={self.momentum}"),
            (self.weight_decay >= 0, f"weight decay must be non-negative; received weight_decay={self.weight_decay}"),
            (0 <= self.val_split < 1, f"val_split must be in [0, 1); received val_split={self.val_split}"),
            (self.optimizer in OPTIMIZERS,
             f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}"),
            (self.backend in ("torch", "manual"), f"unknown backend {self.backend!r}; valid: torch, manual"),
        ]
        for ok, message in checks:
            if not ok:
                raise CnnlabError(message)
        from cnnlab import data, models

        models.info(self.model)  # unknown names raise, listing the close ones
        data.spec(self.data)
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


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` to the annotated type ``hint`` or raise naming ``key``."""
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    if args and type(None) in args:  # Optional[X]
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    try:
        if origin is bool:
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            if isinstance(value, bool):
                return value
            raise TypeError
        if origin is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if origin is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if origin is str:
            if not isinstance(value, str):
                raise TypeError
            return value
        if origin is dict:
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    name = getattr(hint, "__name__", str(hint))
    raise CnnlabError(f"config key {key!r} needs a {name}; received {value!r}")
