"""Fitting Gabor functions to first-layer filters (Saremi 2024, "emergence of Gabor filters in the
first layer of ConvNets"; Gabor 1946):

    G(x1, x2) = exp(-(x1² + x2²) / 2σ²) · cos(ω (cos θ x1 + sin θ x2) + φ)

A filter is a few pixels wide, so the fit also lets the Gaussian's centre (c1, c2) move, and adds
an amplitude A and an offset b (the filter's scale and DC level are arbitrary):

    f(x) ≈ A · G(x - c) + b

For fixed (c1, c2, σ, ω, θ, φ) the best A and b are a linear least-squares solution, so the fit
is a grid search over those six (A and b solved in closed form for every candidate), followed by
gradient refinement of all eight in float64. The quality is the fraction of variance explained,
R² = 1 - SS_res / SS_tot (SS_tot about the filter's mean). A filter counts as Gabor-like when
R² ≥ ``threshold``; compare a trained layer against the same layer at initialization, since
eight parameters explain part of any 5x5 patch.

    >>> fit = gabor_fit(torch.randn(6, 1, 5, 5))
    >>> fit.r2.shape, fit.params.shape
    (torch.Size([6]), torch.Size([6, 8]))
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cnnlab.errors import CnnlabError

PARAM_NAMES = ("A", "c1", "c2", "sigma", "omega", "theta", "phi", "b")


@dataclass
class GaborFit:
    """Best-fit parameters of each filter, in the order of ``PARAM_NAMES``, and its R²."""

    params: Tensor  # (N, 8) float64: A, c1, c2, sigma, omega, theta, phi, b (pixel units, centre 0)
    r2: Tensor  # (N,) fraction of variance explained
    fitted: Tensor  # (N, kH, kW) the fitted Gabor functions
    target: Tensor  # (N, kH, kW) the filters that were fitted (channel-averaged if C_in > 1)

    def fraction_gabor_like(self, threshold: float = 0.8) -> float:
        return float((self.r2 >= threshold).float().mean()) if len(self.r2) else 0.0

    def rows(self) -> list[dict[str, float]]:
        return [{"filter": i, **{k: float(v) for k, v in zip(PARAM_NAMES, p)}, "r2": float(r)}
                for i, (p, r) in enumerate(zip(self.params, self.r2))]


def _coords(kh: int, kw: int) -> tuple[Tensor, Tensor]:
    """Pixel coordinates with the origin at the filter's centre: x1 along the width, x2 down."""
    x2, x1 = torch.meshgrid(torch.arange(kh, dtype=torch.float64) - (kh - 1) / 2,
                            torch.arange(kw, dtype=torch.float64) - (kw - 1) / 2, indexing="ij")
    return x1.reshape(-1), x2.reshape(-1)


def gabor(x1: Tensor, x2: Tensor, c1: Tensor, c2: Tensor, sigma: Tensor, omega: Tensor, theta: Tensor,
          phi: Tensor) -> Tensor:
    """The lecture's G at points (x1, x2) - c; parameters broadcast against the points."""
    u1, u2 = x1 - c1, x2 - c2
    envelope = torch.exp(-(u1 ** 2 + u2 ** 2) / (2 * sigma ** 2))
    return envelope * torch.cos(omega * (torch.cos(theta) * u1 + torch.sin(theta) * u2) + phi)


def _affine_fit(g: Tensor, f: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form A, b minimising ||A g + b - f||² over the last dim; returns A, b, SS_res."""
    gm, fm = g.mean(-1, keepdim=True), f.mean(-1, keepdim=True)
    gc, fc = g - gm, f - fm
    a = (gc * fc).sum(-1, keepdim=True) / (gc * gc).sum(-1, keepdim=True).clamp_min(1e-12)
    b = fm - a * gm
    res = ((a * g + b - f) ** 2).sum(-1)
    return a.squeeze(-1), b.squeeze(-1), res


def gabor_fit(weights: Tensor, *, refine_steps: int = 60) -> GaborFit:
    """Fit a Gabor function to each filter of ``weights`` (C_out, C_in, kH, kW) or (N, kH, kW).

    Filters with several input channels (RGB) are averaged over channels first: the fit is of the
    luminance pattern.
    """
    if weights.ndim == 4:
        target = weights.detach().double().cpu().mean(dim=1)
    elif weights.ndim == 3:
        target = weights.detach().double().cpu()
    else:
        raise CnnlabError(f"gabor_fit takes filters of shape (C_out, C_in, kH, kW) or (N, kH, kW); "
                          f"received shape {tuple(weights.shape)}")
    n, kh, kw = target.shape
    if kh < 3 or kw < 3:
        raise CnnlabError(f"a Gabor fit needs filters of at least 3x3; received {kh}x{kw}")
    x1, x2 = _coords(kh, kw)
    f = target.reshape(n, -1)
    size = max(kh, kw)

    # 1. grid search over the nonlinear parameters; A and b in closed form for every candidate.
    half = (size - 1) / 2
    centres = torch.linspace(-half / 2, half / 2, 3, dtype=torch.float64)
    sigmas = torch.tensor([0.35, 0.6, 1.0], dtype=torch.float64) * size / 2
    omegas = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.6, 2.4], dtype=torch.float64) * (5 / size)
    thetas = torch.arange(8, dtype=torch.float64) * math.pi / 8
    phis = torch.arange(4, dtype=torch.float64) * math.pi / 2
    grid = torch.cartesian_prod(centres, centres, sigmas, omegas, thetas, phis)  # (M, 6)
    g = gabor(x1, x2, *(grid[:, i:i + 1] for i in range(6)))  # (M, P)
    _, _, res = _affine_fit(g.unsqueeze(0), f.unsqueeze(1))  # (N, M)
    best = grid[res.argmin(dim=1)]  # (N, 6)

    # 2. refine all parameters together (each filter's loss is independent, so one sum is fine).
    a, b, _ = _affine_fit(gabor(x1, x2, *(best[:, i:i + 1] for i in range(6))), f)
    theta = torch.cat([a[:, None], best[:, :2], best[:, 2:3].log(), best[:, 3:], b[:, None]], dim=1)
    theta = theta.clone().requires_grad_(True)
    scale = f.std(dim=1).clamp_min(1e-12)  # so every filter gets a similar step size

    def residual(t: Tensor) -> Tensor:
        g = gabor(x1, x2, t[:, 1:2], t[:, 2:3], t[:, 3:4].exp(), t[:, 4:5], t[:, 5:6], t[:, 6:7])
        return (((t[:, 0:1] * g + t[:, 7:8] - f) / scale[:, None]) ** 2).sum(-1)

    start = residual(theta).detach()
    # Adam, written out: torch.optim's first use imports torch._dynamo, seconds for a 6x8 problem.
    m, v, lr, (b1, b2) = torch.zeros_like(theta), torch.zeros_like(theta), 0.03, (0.9, 0.999)
    for step in range(1, refine_steps + 1):
        (grad,) = torch.autograd.grad(residual(theta).sum(), theta)
        with torch.no_grad():
            m.mul_(b1).add_(grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            theta -= lr * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + 1e-8)
    t = theta.detach()
    keep = residual(t) <= start  # never worse than the grid's best
    t = torch.where(keep[:, None], t, torch.cat([a[:, None], best[:, :2], best[:, 2:3].log(), best[:, 3:],
                                                  b[:, None]], dim=1))
    fitted = t[:, 0:1] * gabor(x1, x2, t[:, 1:2], t[:, 2:3], t[:, 3:4].exp(), t[:, 4:5], t[:, 5:6], t[:, 6:7]) \
        + t[:, 7:8]
    ss_res = ((fitted - f) ** 2).sum(-1)
    ss_tot = ((f - f.mean(-1, keepdim=True)) ** 2).sum(-1)
    r2 = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300), torch.zeros_like(ss_tot))
    params = t.clone()
    params[:, 3] = t[:, 3].exp()  # sigma
    # canonical form: A >= 0 (a sign flip is a phase shift of pi), omega >= 0, angles wrapped
    neg = params[:, 0] < 0
    params[neg, 0] = -params[neg, 0]
    params[neg, 6] = params[neg, 6] + math.pi
    negw = params[:, 4] < 0
    params[negw, 4] = -params[negw, 4]
    params[negw, 6] = -params[negw, 6]
    params[:, 5] = torch.remainder(params[:, 5], 2 * math.pi)
    params[:, 6] = torch.remainder(params[:, 6], 2 * math.pi)
    return GaborFit(params=params, r2=r2, fitted=fitted.reshape(n, kh, kw), target=target)
