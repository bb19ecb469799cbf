"""The model registry: one dict, one decorator, ``create(name, **kw)`` and ``names()``.

A family file registers its builders with ``@register``; variants are registered as data by
passing fixed keyword arguments (``register("vgg16", defaults={"config": "D"})(vgg)``).

    >>> from cnnlab import models
    >>> m = models.create("lenet5", num_classes=10)
    >>> sum(p.numel() for p in m.parameters())
    61706
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from cnnlab.errors import CnnlabError, unknown_name

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one registered name."""

    name: str
    builder: Builder
    family: str  # e.g. "LeNet", "VGG"
    paper: str  # short citation, e.g. "LeCun et al. 1998"
    year: int
    input_size: tuple[int, int, int]  # native (C, H, W)
    num_classes: int  # the class count the published parameter count is for
    params: int | None  # published parameter count at (num_classes, input_size), if any
    defaults: dict[str, Any] = field(default_factory=dict)  # fixed kwargs of this variant
    aliases: tuple[str, ...] = ()
    aux_params: int = 0  # of ``params``, those in heads used only in training (GoogLeNet's auxiliary classifiers)


_REGISTRY: dict[str, ModelInfo] = {}
_ALIASES: dict[str, str] = {}
# Modules of this package that hold no architectures.
_NOT_FAMILIES = {"registry", "blocks", "init", "surgery", "fast"}
_loaded = False


def register(
    name: str,
    *,
    family: str,
    paper: str,
    year: int,
    input_size: tuple[int, int, int],
    num_classes: int = 1000,
    params: int | None = None,
    defaults: dict[str, Any] | None = None,
    aliases: tuple[str, ...] = (),
    aux_params: int = 0,
) -> Callable[[Builder], Builder]:
    """Register ``builder`` under ``name``; a duplicate name or alias raises."""

    def decorator(builder: Builder) -> Builder:
        for key in (name, *aliases):
            if key in _REGISTRY or key in _ALIASES:
                raise RuntimeError(f"model name {key!r} is registered twice")
        _REGISTRY[name] = ModelInfo(
            name, builder, family, paper, year, tuple(input_size), num_classes, params,
            dict(defaults or {}), tuple(aliases), aux_params,
        )
        for alias in aliases:
            _ALIASES[alias] = name
        return builder

    return decorator


def _load_families() -> None:
    """Import every family module in ``cnnlab.models`` once, so that adding a model is one file."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = importlib.import_module("cnnlab.models")
    for mod in pkgutil.iter_modules(package.__path__):
        if not mod.name.startswith("_") and mod.name not in _NOT_FAMILIES:
            importlib.import_module(f"cnnlab.models.{mod.name}")


def names(*, aliases: bool = False) -> list[str]:
    """Every registered model name, sorted (with aliases too if ``aliases=True``)."""
    _load_families()
    out = list(_REGISTRY)
    if aliases:
        out += list(_ALIASES)
    return sorted(out)


def info(name: str) -> ModelInfo:
    """The registry entry for ``name`` or one of its aliases."""
    _load_families()
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise unknown_name("model", name, names(aliases=True))
    return _REGISTRY[key]


def create(name: str, *, backend: str = "torch", init: str | None = None, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: a registered name or alias, see ``names()``.
        backend: ``"torch"`` (torch.nn layers) or ``"manual"`` (cnnlab.manual's hand-written
            layers, same ``state_dict`` keys).
        init: an initialization scheme from ``cnnlab.models.init.SCHEMES``; ``None`` keeps the
            paper's initialization that the builder applies.
        **kwargs: passed to the builder, e.g. ``num_classes=10, in_channels=1``.
    """
    entry = info(name)
    for key in ("num_classes", "in_channels"):
        value = kwargs.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise CnnlabError(f"{key} must be a positive integer; received {key}={value!r}")
    if backend not in ("torch", "manual"):
        raise CnnlabError(f"unknown backend {backend!r}; valid: torch, manual")
    params = {**entry.defaults, **kwargs}
    accepted = inspect.signature(entry.builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        for key in params:
            if key not in accepted:
                valid = ", ".join(k for k in accepted if k not in entry.defaults)
                raise CnnlabError(f"model {name!r} does not accept argument {key!r}; it accepts: {valid}")
    model = entry.builder(**params)
    if init is not None:
        from cnnlab.models.init import apply_init

        apply_init(model, init)
    if backend == "manual":
        from cnnlab.manual import convert

        model = convert(model)
    return model


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in seen.values())
