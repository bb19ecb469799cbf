"""Adversarial examples (Saremi 2024: "negatively optimize the loss", argmax over x' ∈ N_ε(x) of
L(x', y; θ̂), and the fast gradient sign method x ← x + ε sign(∇x L)), and attacks for adversarial
training.

    >>> x_adv = fgsm(model, images, labels, 0.1, mean=ds.mean, std=ds.std)       # images in [0, 1]
    >>> x_adv = pgd(model, images, labels, 0.3, alpha=0.01, steps=40, mean=ds.mean, std=ds.std)

- ``fgsm``: Goodfellow et al. 2015, one step of size ε along the sign of the input gradient.
- ``pgd``: Madry et al. 2018, projected gradient ascent in the L∞ ball of radius ε: from a uniform
  random start in the ball, ``steps`` steps x ← Π(x + α sign(∇x L)), where Π clips to the ball
  and to [0, 1]. With ``steps=1``, ``alpha=eps`` and no random start it is FGSM.

Images are in [0, 1] and ε is in those pixel units; a model trained on normalized inputs gets
``mean=``/``std=`` (or any ``normalize`` callable), applied inside the attack. The loss is the
mean cross-entropy, as in torchattacks (tested equal to its FGSM and PGD). Random starts draw
from torch's global RNG on the images' device (or ``generator``). Only the input's gradient is
taken, so parameter ``.grad`` stay untouched; the model's mode is the caller's.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnnlab.errors import CnnlabError

Normalize = Callable[[Tensor], Tensor]


def _normalizer(mean: Sequence[float] | None, std: Sequence[float] | None,
                normalize: Normalize | None) -> Normalize:
    if normalize is not None:
        if mean is not None or std is not None:
            raise CnnlabError("pass either mean=/std= or normalize=, not both")
        return normalize
    if (mean is None) != (std is None):
        raise CnnlabError("mean= and std= go together; received only one of them")
    if mean is None:
        return lambda x: x
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    return lambda x: (x - m.to(x.device, x.dtype)) / s.to(x.device, x.dtype)


def check_eps(eps: float, name: str = "eps") -> None:
    if not 0 <= eps <= 1:
        raise CnnlabError(f"{name} is in pixel units of a [0, 1] image and must lie in [0, 1]; received {eps}")


def _check_images(x: Tensor) -> None:
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise CnnlabError(f"attacks take images in [0, 1] (normalization goes in mean=/std=); received values in "
                          f"[{x.min().item():.3g}, {x.max().item():.3g}]")


def _logits(out) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out  # (logits, aux...) of some nets in train mode


def _loss_grad(model: nn.Module, normalize: Normalize, x: Tensor, y: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    loss = nn.functional.cross_entropy(_logits(model(normalize(x))), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, mean: Sequence[float] | None = None,
         std: Sequence[float] | None = None, normalize: Normalize | None = None) -> Tensor:
    """x + ε sign(∇x L(x, y)), clipped to [0, 1]."""
    check_eps(eps)
    _check_images(x)
    grad = _loss_grad(model, _normalizer(mean, std, normalize), x, y)
    return torch.clamp(x.detach() + eps * grad.sign(), 0, 1)


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float | None = None, steps: int = 40,
        random_start: bool = True, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
        normalize: Normalize | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Projected gradient descent on the loss in the L∞ ball of radius ε around ``x``.

    ``alpha`` defaults to 2.5 ε / steps (Madry et al. 2018: enough to reach the boundary from any
    start).
    """
    check_eps(eps)
    if steps < 1:
        raise CnnlabError(f"PGD needs at least 1 step; received steps={steps}")
    alpha = 2.5 * eps / steps if alpha is None else alpha
    if alpha <= 0 and eps > 0:
        raise CnnlabError(f"the PGD step alpha must be positive; received alpha={alpha}")
    _check_images(x)
    norm = _normalizer(mean, std, normalize)
    x = x.detach()
    adv = x.clone()
    if random_start:
        adv = torch.clamp(adv + torch.empty_like(adv).uniform_(-eps, eps, generator=generator), 0, 1)
    for _ in range(steps):
        adv = adv + alpha * _loss_grad(model, norm, adv, y).sign()
        adv = torch.clamp(x + torch.clamp(adv - x, -eps, eps), 0, 1)
    return adv


# --- robustness -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RobustPoint:
    eps: float
    accuracy: float  # on the attacked images
    mean_confidence: float  # mean softmax probability of the predicted class on the attacked images


def robustness_curve(model: nn.Module, x: Tensor, y: Tensor, eps_values: Sequence[float], *,
                     method: str = "fgsm", steps: int = 40, alpha: float | None = None, batch_size: int = 500,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     progress: Callable[[int], None] | None = None) -> list[RobustPoint]:
    """Accuracy under attack for each ε over the images ``x`` in [0, 1] (moved to the model's device
    batch by batch). ``progress(n)`` is called after each batch with the images done."""
    if method not in ("fgsm", "pgd"):
        raise CnnlabError(f"unknown attack {method[:40]!r}; valid: fgsm, pgd")
    for eps in eps_values:
        check_eps(eps)
    if steps < 1:
        raise CnnlabError(f"PGD needs at least 1 step; received steps={steps}")
    device = next(model.parameters()).device
    points = []
    for eps in eps_values:
        correct, confidence = 0, 0.0
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device)
            yb = y[start:start + batch_size].to(device)
            if eps == 0:
                adv = xb
            elif method == "fgsm":
                adv = fgsm(model, xb, yb, eps, mean=mean, std=std)
            else:
                a = alpha if alpha is not None else 2.5 * eps / steps
                adv = pgd(model, xb, yb, eps, a, steps, mean=mean, std=std)
            with torch.no_grad():
                proba = _logits(model(_normalizer(mean, std, None)(adv))).softmax(1)
            conf, pred = proba.max(1)
            correct += int((pred == yb).sum())
            confidence += float(conf.sum())
            if progress is not None:
                progress(len(xb))
        points.append(RobustPoint(eps, correct / max(len(x), 1), confidence / max(len(x), 1)))
    return points


# --- adversarial training -------------------------------------------------------------------------

@dataclass(frozen=True)
class AdversarialSpec:
    """A parsed ``--adversarial`` value."""

    method: str  # fgsm, fgsm-rs or pgd
    eps: float  # L∞ radius in [0, 1] pixel units
    alpha: float | None  # step size (fgsm-rs, pgd)
    steps: int  # 1 for fgsm and fgsm-rs

    def __str__(self) -> str:
        if self.method == "fgsm":
            return f"fgsm:{self.eps:g}"
        if self.method == "fgsm-rs":
            return f"fgsm-rs:{self.eps:g},{self.alpha:g}"
        return f"pgd:{self.eps:g},{self.alpha:g},{self.steps}"


_FORMS = "fgsm:EPS, fgsm-rs:EPS,ALPHA or pgd:EPS,ALPHA,STEPS (e.g. fgsm-rs:0.3,0.375)"


def parse_adversarial(spec: str) -> AdversarialSpec:
    """``fgsm:EPS | fgsm-rs:EPS,ALPHA | pgd:EPS,ALPHA,STEPS`` -> AdversarialSpec, or one clear error.

    >>> parse_adversarial("pgd:0.3,0.01,40")
    AdversarialSpec(method='pgd', eps=0.3, alpha=0.01, steps=40)
    """
    shown = repr(str(spec)[:60])
    method, sep, rest = str(spec).strip().partition(":")
    counts = {"fgsm": 1, "fgsm-rs": 2, "pgd": 3}
    if method not in counts or not sep:
        raise CnnlabError(f"an adversarial training spec is {_FORMS}; received {shown}")
    parts = [p.strip() for p in rest.split(",")]
    if len(parts) != counts[method]:
        raise CnnlabError(f"{method} takes {counts[method]} number{'s' if counts[method] > 1 else ''} "
                          f"({_FORMS}); received {shown}")
    try:
        eps = float(parts[0])
        alpha = float(parts[1]) if len(parts) > 1 else None
        steps = int(parts[2]) if len(parts) > 2 else 1
    except ValueError:
        raise CnnlabError(f"an adversarial training spec is {_FORMS}, with numbers; received {shown}") from None
    if not 0 < eps <= 1:
        raise CnnlabError(f"the adversarial eps is in pixel units of a [0, 1] image and must lie in (0, 1]; "
                          f"received {shown}")
    if alpha is not None and not alpha > 0:
        raise CnnlabError(f"the adversarial step alpha must be positive; received {shown}")
    if steps < 1:
        raise CnnlabError(f"PGD needs at least 1 step; received {shown}")
    return AdversarialSpec(method, eps, alpha, steps)


@contextlib.contextmanager
def frozen_bn_statistics(model: nn.Module) -> Iterator[None]:
    """Run forward passes that leave BatchNorm's running statistics (and step count) unchanged."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats and m.running_mean is not None:
            saved.append((m, m.running_mean.clone(), m.running_var.clone(),
                          None if m.num_batches_tracked is None else m.num_batches_tracked.clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                if count is not None:
                    m.num_batches_tracked.copy_(count)


def make_training_attack(spec: str, *, mean: Sequence[float], std: Sequence[float]
                         ) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """The attack adversarial training applies to each batch: ``attack(model, x, y) -> x_adv``.

    ``x`` is a NORMALIZED batch, as the loader gives it; the attack maps it back to [0, 1], attacks
    there (ε in pixel units), and returns the normalized adversarial batch with ``x``'s shape,
    dtype, device and memory format. fgsm-rs is FGSM from a uniform random start in the ε-ball
    (Wong et al. 2020, "Fast is better than free"), i.e. one PGD step of size ALPHA.

    The model is attacked in whatever mode the caller left it. In train mode BatchNorm normalizes
    with the batch's statistics and dropout is active, as in the training step that follows (the
    choice of Madry et al. 2018 and Wong et al. 2020), but the attack's forward passes leave BN's
    running statistics untouched, so only the training step itself updates them. Random starts
    and dropout masks come from torch's global RNG on ``x``'s device, so a resumed run draws the
    same numbers as an uninterrupted one.
    """
    s = parse_adversarial(spec)
    c = len(mean)
    if len(std) != c:
        raise CnnlabError(f"mean and std need one value per channel; received mean={mean}, std={std}")

    def attack(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        sd = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        unit = torch.clamp(x.detach() * sd + m, 0, 1)
        with frozen_bn_statistics(model):
            if s.method == "fgsm":
                adv = fgsm(model, unit, y, s.eps, mean=mean, std=std)
            else:
                adv = pgd(model, unit, y, s.eps, s.alpha, s.steps, random_start=True, mean=mean, std=std)
        out = (adv - m) / sd
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return out.contiguous(memory_format=torch.channels_last)
        return out.contiguous()

    attack.spec = s  # type: ignore[attr-defined]
    return attack
