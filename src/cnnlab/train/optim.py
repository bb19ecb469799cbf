"""The optimizer factory: the lectures' optimizers from ``torch.optim``, and weight decay two ways.

    >>> opt = make_optimizer(model, "sgd", lr=0.1, momentum=0.9, nesterov=True,
    ...                      weight_decay=5e-4, no_decay_bias_bn=True)
    >>> loss = loss + l2_penalty(model, 1e-4, no_decay_bias_bn=True)   # the explicit (λ/2)‖θ‖² term

| name      | torch class                 | weight decay                              |
|-----------|-----------------------------|-------------------------------------------|
| sgd       | SGD (momentum, Nesterov)    | coupled: λθ added to the gradient         |
| adagrad   | Adagrad                     | coupled                                   |
| rmsprop   | RMSprop (momentum)          | coupled                                   |
| adam      | Adam                        | coupled (torch's Adam(weight_decay=λ))    |
| adamw     | AdamW                       | decoupled: θ ← θ(1 - ηλ) beside the step  |
| amsgrad   | AdamW(amsgrad=True)         | decoupled                                 |

Weight decay, as the lectures contrast it (Ryu, ch. 3, "Weight decay ≅ ℓ2-regularization"; the optimization notes,
"Weight decay"): adding (λ/2)‖θ‖² to the loss puts λθ into the gradient, and for plain SGD (with or
without momentum) that is exactly torch's ``SGD(weight_decay=λ)``. For an adaptive method the λθ
term gets divided by sqrt(ĉ) like the rest of the gradient, so large-gradient weights are decayed
less; AdamW (Loshchilov & Hutter 2019) instead shrinks every weight by ηλ outside the adaptive
step: "the proper way to do it had been named AdamW". ``amsgrad`` (Reddi et al. 2018) is built on
AdamW rather than Adam so that, like ``adamw``, its weight decay is the decoupled kind; ``adam``
keeps torch's coupled decay so that the contrast can be run.

The reference implementations of the same update rules, written out by hand, are in
``cnnlab.manual.optim``; this module is what the trainer uses.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError, unknown_name

OPTIMIZERS = ("sgd", "adagrad", "rmsprop", "adam", "adamw", "amsgrad")

# Layers whose parameters are a scale and a shift, not a feature detector: decaying BN's γ toward
# 0 shrinks the layer's output rather than simplifying it (Goyal et al. 2017, sec. 5.1, leave
# them undecayed; so does the "no bias decay" trick of He et al. 2019, sec. 3.1).
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm (+ cnnlab.manual's)
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter, bool]]:
    """(name, parameter, decayable) for every trainable parameter; decayable=False for biases,
    normalization-layer parameters and any parameter with at most one dimension."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters()}
    out = []
    for name, p in model.named_parameters():
        if not p.requires_grad:  # frozen (e.g. --train-only bn): not the optimizer's business
            continue
        is_bias = name == "bias" or name.endswith(".bias")
        out.append((name, p, not (is_bias or id(p) in norm_params or p.ndim <= 1)))
    return out


def param_groups(model: nn.Module, weight_decay: float, *, no_decay_bias_bn: bool) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` as optimizer parameter groups.

    Without ``no_decay_bias_bn`` there is one group with ``weight_decay``. With it, a second
    group holds the biases, the normalization layers' weights and biases and every other 1-D
    parameter, with ``weight_decay`` 0. Empty groups are left out; the decayed group comes first.
    """
    _check_weight_decay(weight_decay, "weight_decay")
    params = _trainable(model)
    if not params:
        raise CnnlabError(f"the model ({type(model).__name__}) has no trainable parameters to optimize")
    if not no_decay_bias_bn:
        return [{"params": [p for _, p, _ in params], "weight_decay": weight_decay}]
    decay = [p for _, p, decayable in params if decayable]
    no_decay = [p for _, p, decayable in params if not decayable]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(
    model: nn.Module,
    name: Any,
    *,
    lr: float | None = None,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    no_decay_bias_bn: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float | None = None,
) -> torch.optim.Optimizer:
    """A ``torch.optim`` optimizer over ``model``'s trainable parameters.

    Args:
        name: one of ``OPTIMIZERS``.
        lr: the learning rate η (a schedule scales it from here).
        momentum: SGD's β and RMSprop's momentum; ignored by adagrad and the Adam family.
        nesterov: Nesterov's look-ahead for SGD (needs momentum > 0).
        weight_decay: λ, coupled or decoupled as the module docstring's table says.
        no_decay_bias_bn: exempt biases and normalization parameters from weight decay.
        betas: (β₁, β₂) of the Adam family.
        eps: the ε of adagrad, rmsprop and the Adam family; None keeps torch's default.

    ``make_optimizer(model, cfg)`` with a ``TrainConfig`` takes every value from the config
    (``lr=`` still overrides the config's learning rate, as the range test does).
    """
    if not isinstance(name, str):
        cfg = name
        return make_optimizer(model, cfg.optimizer, lr=cfg.lr if lr is None else lr, momentum=cfg.momentum,
                              nesterov=cfg.nesterov, weight_decay=cfg.weight_decay,
                              no_decay_bias_bn=not cfg.bias_bn_decay, betas=(cfg.beta1, cfg.beta2), eps=eps)
    if name not in OPTIMIZERS:
        raise unknown_name("optimizer", name, OPTIMIZERS)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise CnnlabError(f"learning rate must be a positive number; received lr={lr}")
    if not 0 <= momentum < 1:
        raise CnnlabError(f"momentum must be in [0, 1); received momentum={momentum}")
    if nesterov and name != "sgd":
        raise CnnlabError(f"Nesterov momentum is only available with sgd; received optimizer={name!r}")
    if nesterov and momentum == 0:
        raise CnnlabError(f"Nesterov momentum needs momentum > 0; received momentum={momentum}")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise CnnlabError(f"betas must be two numbers in [0, 1); received betas={tuple(betas)}")
    if eps is not None and not eps > 0:
        raise CnnlabError(f"eps must be positive; received eps={eps}")
    groups = param_groups(model, weight_decay, no_decay_bias_bn=no_decay_bias_bn)
    # Each group carries its own weight_decay; the constructor's value is only the default.
    extra: dict[str, Any] = {} if eps is None else {"eps": eps}
    betas = (float(betas[0]), float(betas[1]))
    if name == "sgd":
        return _fused(torch.optim.SGD, groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=lr, weight_decay=weight_decay, **extra)
    if name == "rmsprop":
        # alpha (the lecture's γ for the running mean of g²) stays at torch's 0.99.
        return torch.optim.RMSprop(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, **extra)
    if name == "adam":
        return _fused(torch.optim.Adam, groups, lr=lr, betas=betas, weight_decay=weight_decay, **extra)
    # adamw and amsgrad: decoupled weight decay (see the module docstring).
    return _fused(torch.optim.AdamW, groups, lr=lr, betas=betas, weight_decay=weight_decay, amsgrad=name == "amsgrad",
                             **extra)


FUSED_DEVICES = ("cpu", "cuda")


def _fused(cls: type[torch.optim.Optimizer], groups: list[dict], **kwargs: Any) -> torch.optim.Optimizer:
    """``cls(groups, fused=True, ...)``: one kernel updates every parameter (the same update rule;
    on 2 CPU cores Adam's step over LeNet-5 took 0.09 ms instead of 0.36 ms). Falls back to torch's
    default implementation where the fused one is not available (a device or dtype it lacks)."""
    params = [p for g in groups for p in g["params"]]
    if params and all(p.device.type in FUSED_DEVICES and p.is_floating_point() and not p.is_sparse
                      for p in params):
        try:
            return cls([dict(g) for g in groups], fused=True, **kwargs)  # a failed try leaves groups as they were
        except (RuntimeError, ValueError, TypeError):
            pass
    return cls(groups, **kwargs)


def l2_penalty(model: nn.Module, lam: float, *, no_decay_bias_bn: bool) -> torch.Tensor:
    """The explicit ℓ2 term (λ/2)‖θ‖² over the trainable parameters, to add to the loss (``--l2``).

    Ryu, ch. 3 writes it as ``loss += (lambda/2)*param.pow(2.0).sum()`` for every parameter; with
    ``no_decay_bias_bn`` the same parameters as in ``param_groups`` are left out. λ = 0 gives a
    zero tensor without building a graph.
    """
    _check_weight_decay(lam, "l2")
    params = [p for _, p, decayable in _trainable(model) if decayable or not no_decay_bias_bn]
    if not params:
        raise CnnlabError(f"the model ({type(model).__name__}) has no trainable parameters to penalize")
    if lam == 0:
        return torch.zeros((), dtype=params[0].dtype, device=params[0].device)
    return (lam / 2) * sum(p.pow(2).sum() for p in params)


def _check_weight_decay(value: float, key: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise CnnlabError(f"{key.replace('_', ' ')} must be a non-negative number; received {key}={value}")
