"""The pieces a training run is built from: device, model, memory format, loss and evaluation.

``trainer.fit`` assembles them into the loop; ``inference`` and ``evaluation`` reuse them to
rebuild and evaluate a saved run.
"""
from __future__ import annotations

import inspect as pyinspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import models
from cnnlab.errors import CnnlabError
from cnnlab.train import distributed
from cnnlab.train.config import TrainConfig
from cnnlab.train.metrics import topk_correct

AUX_WEIGHT = 0.3  # GoogLeNet's auxiliary classifiers (Szegedy et al. 2014, sec. 5)


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; anything else
    (``meta``, ``mps``, a typo) is refused in one sentence."""
    from cnnlab.train.config import check_device_name

    if not isinstance(name, str):
        name = str(name)
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def build_model(cfg: TrainConfig, num_classes: int, input_size: tuple[int, int, int],
                layers: list[dict] | None = None) -> nn.Module:
    """The configured model for a dataset with ``num_classes`` classes of ``input_size`` images.

    ``layers``: a layer list (``cfg.spec`` loaded, or the one saved in a checkpoint) to build the
    model from with ``cnnlab.spec.build`` instead of the registry's ``cfg.model``."""
    if layers is not None or cfg.spec is not None:
        try:
            from cnnlab import spec as layer_spec
        except ImportError:
            raise CnnlabError("building a model from a layer list needs the cnnlab.spec module, which this "
                              "installation lacks") from None
        if layers is None:
            layers = layer_spec.load(cfg.spec)
        return layer_spec.build(layers, input_size=tuple(input_size), num_classes=num_classes)
    from cnnlab.train.config import is_import_path

    if is_import_path(cfg.model):
        return build_imported(cfg.model, num_classes, input_size, cfg.model_args)
    try:
        return _build_registered(cfg, num_classes, input_size)
    except CnnlabError:
        raise
    except (TypeError, ValueError, RuntimeError, OverflowError, AttributeError, KeyError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CnnlabError(f"model {cfg.model!r} cannot be built with model_args={str(cfg.model_args)[:100]} "
                          f"({type(e).__name__}: {first[:120]})") from None


def build_imported(path: str, num_classes: int, input_size: tuple[int, int, int], model_args: dict) -> nn.Module:
    """A model of your own given by its import path (``my_pkg.nets:Net``), built with ``model_args``
    plus ``num_classes`` and ``in_channels`` when its constructor takes them."""
    import importlib

    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise CnnlabError(f"the model {path[:100]!r} cannot be imported ({str(e)[:100]}); make its module "
                          f"importable, or from Python pass the module itself (fit(..., model=net), "
                          f"load_model(run, model=net))") from None
    kwargs = dict(model_args)
    try:
        accepted = pyinspect.signature(obj).parameters
    except (TypeError, ValueError):
        accepted = {}
    if "num_classes" in accepted:
        kwargs.setdefault("num_classes", num_classes)
    if "in_channels" in accepted:
        kwargs.setdefault("in_channels", input_size[0])
    try:
        model = obj(**kwargs)
    except Exception as e:  # a user's constructor: any failure is theirs to read in one line
        raise CnnlabError(f"the model {path[:100]!r} cannot be built with {str(kwargs)[:100]} "
                          f"({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(model, nn.Module):
        raise CnnlabError(f"{path[:100]!r} built a {type(model).__name__}, not a torch.nn.Module")
    return model


def _build_registered(cfg: TrainConfig, num_classes: int, input_size: tuple[int, int, int]) -> nn.Module:
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_channels": input_size[0], **cfg.model_args}
    accepted = pyinspect.signature(models.info(cfg.model).builder).parameters
    if "input_size" in accepted and "input_size" not in kwargs:
        kwargs["input_size"] = input_size[1]  # models with a fixed flatten size (LeNet-5, MLP)
    if cfg.dropout is not None:
        if "dropout" not in accepted:
            raise CnnlabError(f"model {cfg.model!r} has no dropout to set; received dropout={cfg.dropout}")
        kwargs["dropout"] = cfg.dropout
    return models.create(cfg.model, backend=cfg.backend, init=cfg.init, **kwargs)


def use_channels_last(cfg: TrainConfig, model: nn.Module) -> bool:
    """``cfg.channels_last``, or when it is None: NHWC for models without batch norm, where it was
    measured faster on the CPU (BatchNorm's CPU kernels are slower in NHWC)."""
    if cfg.channels_last is not None:
        return cfg.channels_last
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def main_loss(output: Any, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The cross-entropy of the main logits only (what ``train_loss`` logs: comparable to the test
    loss also for models with auxiliary heads)."""
    logits = output[0] if isinstance(output, tuple) else output
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def classification_loss(output: Any, target: torch.Tensor, label_smoothing: float = 0.0
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on int labels or soft targets (mixup/cutmix); a model that returns
    ``(logits, *aux_logits)`` in training (GoogLeNet) adds 0.3 x each auxiliary loss."""
    if isinstance(output, tuple):
        logits, *aux = output
        loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
        for a in aux:
            if a is not None:
                loss = loss + AUX_WEIGHT * F.cross_entropy(a, target, label_smoothing=label_smoothing)
        return loss, logits
    return F.cross_entropy(output, target, label_smoothing=label_smoothing), output


@torch.inference_mode()
def evaluate(model: nn.Module, loader, *, info: distributed.Dist = distributed.SINGLE,
             amp: str | None = None) -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 of ``model`` over ``loader`` in eval mode (summed over
    the ranks when the loader is sharded)."""
    was_training = model.training
    model.eval()
    device = loader.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top1 = torch.zeros((), dtype=torch.int64, device=device)
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    for x, y in loader:
        with torch.autocast(device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16,
                            enabled=amp is not None):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        c1, c5 = topk_correct(logits, y, (1, 5))
        top1 += c1
        top5 += c5
        n += len(y)
    model.train(was_training)
    loss, t1, t5, n = distributed.all_sum([loss_sum.item(), top1.item(), top5.item(), n], info, device)
    return {"loss": loss / n, "top1": t1 / n, "top5": t5 / n}
