"""Class model visualization (Simonyan et al. 2014; Saremi 2024's "Flamingo / Billiard table /
School bus": "this method is not principled ... and it needs some regularization").

Gradient ascent on the input, from a zero image (the mean image, in normalized units), of the
class score S_c(x) (before the softmax) minus an L2 penalty, with two more regularizers that
keep the picture natural rather than adversarial: a random jitter (a circular shift of up to
``jitter`` pixels before each step, undone after) and a Gaussian blur every ``blur_every`` steps.

    >>> image, confidence = class_model(model, 3, steps=200, mean=ds.mean, std=ds.std)
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from cnnlab.errors import CnnlabError


def _blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(round(2 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = nn.functional.conv2d(nn.functional.pad(x, (radius, radius, 0, 0), mode="replicate"),
                             k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return nn.functional.conv2d(nn.functional.pad(x, (0, 0, radius, radius), mode="replicate"),
                                k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def class_model(model: nn.Module, target: int, steps: int = 200, lr: float = 0.1, l2: float = 1e-3,
                jitter: int = 1, blur: float = 0.5, *, blur_every: int = 10,
                input_size: Sequence[int] = (1, 28, 28), mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, generator: torch.Generator | None = None,
                progress: Callable[[int], None] | None = None) -> tuple[Tensor, float]:
    """The image (C, H, W) in [0, 1] that the regularized ascent reaches, and the model's softmax
    confidence in ``target`` on it. Runs on the model's device in the model's current mode."""
    if steps < 1:
        raise CnnlabError(f"class model visualization needs at least 1 step; received steps={steps}")
    if lr <= 0 or l2 < 0 or jitter < 0 or blur < 0 or blur_every < 1:
        raise CnnlabError(f"lr must be positive, l2, jitter and blur non-negative, blur_every at least 1; received "
                          f"lr={lr}, l2={l2}, jitter={jitter}, blur={blur}, blur_every={blur_every}")
    param = next(model.parameters())
    c = input_size[0]
    m = torch.tensor(mean if mean is not None else [0.0] * c, dtype=param.dtype, device=param.device).view(1, c, 1, 1)
    s = torch.tensor(std if std is not None else [1.0] * c, dtype=param.dtype, device=param.device).view(1, c, 1, 1)
    x = torch.zeros(1, *input_size, dtype=param.dtype, device=param.device)  # normalized units: the mean image
    with torch.no_grad():
        classes = model(x).shape[1]
    if not 0 <= target < classes:
        raise CnnlabError(f"the target class must lie in [0, {classes - 1}]; received {target}")
    lo, hi = (0 - m) / s, (1 - m) / s  # keep the image a valid [0, 1] picture
    for step in range(steps):
        dy, dx = (torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist() if jitter else (0, 0))
        xj = torch.roll(x, (dy, dx), dims=(-2, -1)).requires_grad_(True)
        objective = model(xj)[0, target] - l2 * xj.pow(2).sum()
        (grad,) = torch.autograd.grad(objective, xj)
        with torch.no_grad():
            grad = torch.roll(grad, (-dy, -dx), dims=(-2, -1))
            x = x + lr * grad / grad.abs().mean().clamp_min(1e-12)  # normalized step: lr is in input units
            if blur > 0 and (step + 1) % blur_every == 0:
                x = _blur(x, blur)
            x = torch.maximum(torch.minimum(x, hi), lo)
        if progress is not None:
            progress(1)
    with torch.no_grad():
        confidence = float(model(x).softmax(1)[0, target])
    return (x * s + m).clamp(0, 1)[0], confidence
