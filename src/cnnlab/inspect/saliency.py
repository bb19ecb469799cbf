"""Saliency maps: gradients of a class score with respect to the input (Saremi 2024, "from ∇θL to
∇xL"; Simonyan et al. 2014, "Deep inside convolutional networks"), and the sanity check of
Adebayo et al. 2018 ("Sanity checks for saliency maps").

    >>> s = saliency(model, x)                               # |∂ score / ∂ x|, same shape as x
    >>> s = saliency(model, x, method="integrated_gradients", steps=50)

Methods, each the same computation as Captum's class of the same purpose (tested to 1e-5):

- ``grad``: |∇x S_c(x)| (Simonyan et al. 2014; Captum ``Saliency``, whose default is the absolute value).
- ``grad_x_input``: x ⊙ ∇x S_c(x) (Captum ``InputXGradient``).
- ``smoothgrad``: the mean of |∇x S_c(x + n)| over ``samples`` draws n ~ N(0, stdev²) (Smilkov et al.
  2017; Captum ``NoiseTunnel(Saliency)`` with ``nt_type="smoothgrad"``). The noise comes from torch's
  global RNG, drawn as Captum draws it, so the same seed gives the same map.
- ``integrated_gradients``: (x - x0) ⊙ ∫₀¹ ∇x S_c(x0 + α(x - x0)) dα with Gauss-Legendre quadrature
  of ``steps`` nodes (Sundararajan et al. 2017; Captum ``IntegratedGradients``' default), x0 = 0.

S_c is the model's output for class c before the softmax; c defaults to the predicted class. Only
the input's gradient is taken (``torch.autograd.grad``), so the parameters' ``.grad`` are untouched;
the model's mode is the caller's.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from cnnlab.errors import CnnlabError

METHODS = ("grad", "grad_x_input", "smoothgrad", "integrated_gradients")


def _targets(model: nn.Module, x: Tensor, target: int | Sequence[int] | Tensor | None) -> Tensor:
    if target is None:
        with torch.no_grad():
            return model(x).argmax(dim=1)
    t = torch.as_tensor(target, device=x.device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(len(x))
    if len(t) != len(x):
        raise CnnlabError(f"target needs one class per image ({len(x)}); received {len(t)}")
    return t


def _score_grad(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """∂ Σ_i S_{target_i}(x_i) / ∂ x."""
    x = x.detach().requires_grad_(True)
    out = model(x)
    if target.numel() and (target.min() < 0 or target.max() >= out.shape[1]):
        raise CnnlabError(f"target classes must lie in [0, {out.shape[1] - 1}]; received {target.tolist()[:10]}")
    score = out.gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(score, x)
    return grad


def saliency(model: nn.Module, x: Tensor, target: int | Sequence[int] | Tensor | None = None,
             method: str = "grad", *, samples: int = 25, stdev: float = 0.15, steps: int = 50,
             baseline: Tensor | None = None) -> Tensor:
    """The saliency map of ``method`` for the batch ``x`` (same shape as ``x``).

    ``x`` is what the model takes (normalized, if it was trained on normalized inputs); ``stdev``
    and ``baseline`` are in those units.
    """
    if method not in METHODS:
        raise CnnlabError(f"unknown saliency method {method[:40]!r}; valid: {', '.join(METHODS)}")
    if samples < 1 or steps < 1 or stdev < 0:
        raise CnnlabError(f"samples and steps must be at least 1 and stdev non-negative; received samples={samples}, "
                          f"steps={steps}, stdev={stdev}")
    target = _targets(model, x, target)
    x = x.detach()
    if method == "grad":
        return _score_grad(model, x, target).abs()
    if method == "grad_x_input":
        return x * _score_grad(model, x, target)
    if method == "smoothgrad":
        shape = (len(x) * samples,) + tuple(x.shape[1:])
        # as Captum draws it: one normal sample per element, std given as a float32 tensor
        noise = torch.normal(0, torch.tensor(float(stdev), device=x.device).repeat(shape))
        noisy = x.repeat_interleave(samples, dim=0) + noise
        grads = _score_grad(model, noisy, target.repeat_interleave(samples)).abs()
        return grads.reshape(len(x), samples, *x.shape[1:]).mean(dim=1)
    # integrated gradients, Gauss-Legendre nodes on [0, 1]
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas, step_sizes = (0.5 * (1 + nodes)).tolist(), (0.5 * weights).tolist()
    x0 = torch.zeros_like(x) if baseline is None else baseline.to(x).expand_as(x)
    path = torch.cat([x0 + a * (x - x0) for a in alphas], dim=0)  # (steps * B, ...), step-major as Captum
    grads = _score_grad(model, path, target.repeat(steps))
    w = torch.tensor(step_sizes, dtype=grads.dtype, device=grads.device).view(steps, 1, *([1] * (x.ndim - 1)))
    total = (grads.reshape(steps, *x.shape) * w).sum(dim=0)
    return (x - x0) * total


# --- the sanity check ------------------------------------------------------------------------

@dataclass(frozen=True)
class SanityRow:
    layer: str  # the layer re-initialized last (all layers above it are re-initialized too)
    spearman: float  # rank correlation of |map| with the trained model's |map|, averaged over images


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two equally long vectors (ties get their average rank)."""
    ra, rb = _rank(a.reshape(-1).double()), _rank(b.reshape(-1).double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom > 0 else 0.0


def _rank(v: Tensor) -> Tensor:
    _, inverse, counts = torch.unique(v, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return (ends - (counts.double() - 1) / 2)[inverse]  # 1-based average rank of each tie group


def _reinit(module: nn.Module) -> None:
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
    else:
        for p in module.parameters(recurse=False):
            nn.init.normal_(p, std=0.01)


def saliency_sanity(model: nn.Module, x: Tensor, target: int | Sequence[int] | Tensor | None = None,
                    method: str = "grad", *, seed: int = 0, **kw) -> list[SanityRow]:
    """Cascading randomization (Adebayo et al. 2018): re-initialize the layers one by one from the
    output down, each time comparing the map with the trained model's map.

    A map that explains the model should change once the weights it depends on are random: the
    correlations should fall. Works on a copy of ``model``; the targets stay the trained model's
    classes. The first row, ``(none)``, is the trained model itself (1.0). Random draws use
    ``seed`` inside a forked RNG, so the caller's global RNG state is unchanged.
    """
    target = _targets(model, x, target)
    rows = [SanityRow("(none)", 1.0)]
    randomized = copy.deepcopy(model)
    layers = [(name, m) for name, m in randomized.named_modules() if name and any(True for _ in m.parameters(False))]
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        reference = saliency(model, x, target, method, **kw).abs()
        for i, (name, module) in enumerate(reversed(layers)):
            torch.manual_seed(seed + 1 + i)
            _reinit(module)
            torch.manual_seed(seed)  # the same noise as the reference (smoothgrad)
            m = saliency(randomized, x, target, method, **kw).abs()
            rho = float(np.mean([spearman(reference[i], m[i]) for i in range(len(x))]))
            rows.append(SanityRow(name, rho))
    return rows
