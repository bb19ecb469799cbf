"""Reference optimizers: the lectures' update rules written out, checked against ``torch.optim``.

Each class subclasses ``torch.optim.Optimizer`` and takes ``torch.optim``'s constructor arguments
(the math ones and ``maximize``; the implementation switches ``foreach``, ``fused``,
``capturable`` and ``differentiable`` are left out). State entries use PyTorch's names
(``momentum_buffer``, ``exp_avg``, ...). The trainer keeps using ``torch.optim``; these are for
reading and for the tests that prove the two agree to 1e-10 over a trajectory.

g is the gradient, θ the parameter, t the step count starting at 1.

SGD with momentum: the lectures' two conventions
    Ryu, ch. 3:       v ← g + β v,       θ ← θ - α v      (PyTorch's form, ``momentum_step_accumulate``)
    the optimization notes and Hu, lecture 5:  v ← β v - η g,     θ ← θ + v        (``momentum_step_velocity``)
With η = α and both v starting at 0 they give the same θ at every step: by induction the second
velocity is always -α times the first. They part ways only when the learning rate changes during
training: the first rescales the whole accumulated v by the new rate, the second keeps old steps
at the rate they were taken with. PyTorch adds ``dampening`` τ (v ← β v + (1 - τ) g after the first
step) and Nesterov's look-ahead (step along g + β v instead of v).

Weight decay λ (Ryu, ch. 3, "weight decay ≅ ℓ2-regularization"): SGD, Adagrad, RMSprop and Adam add
λθ to g (the ℓ2 penalty's gradient); AdamW decays θ ← θ (1 - αλ) separately, which is not the same
thing for adaptive methods (the optimization notes, "Weight decay": "the proper way to do it had been named AdamW").

Adagrad (Duchi et al. 2011; Hu, lecture 5):  c ← c + g²,  θ ← θ - η g / (sqrt(c) + ε)
RMSprop (Hu, lecture 5):  c ← γ c + (1 - γ) g²,  θ ← θ - η g / (sqrt(c) + ε)
    centered: divide by sqrt(c - ḡ²) with ḡ ← γ ḡ + (1 - γ) g, an estimate of the variance;
    momentum μ: b ← μ b + g / (sqrt(c) + ε),  θ ← θ - η b.
Adam (Kingma & Ba 2015; Ryu, ch. 3 and the optimization notes and Hu, lecture 5):
    m ← β₁ m + (1 - β₁) g,   c ← β₂ c + (1 - β₂) g²
    m̂ = m / (1 - β₁ᵗ),       ĉ = c / (1 - β₂ᵗ)          (bias correction: exact for a constant g)
    θ ← θ - η m̂ / (sqrt(ĉ) + ε)
    amsgrad (Reddi et al. 2018, Ryu's ch. 3 "cautionary tale"): use ĉ_max = max over steps of c, bias-corrected.

The lectures write ε inside the root, g / sqrt(c + ε) (Hu, lecture 5); PyTorch, and so this file,
adds it outside, g / (sqrt(c) + ε). Both only guard against a division by zero.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from cnnlab.errors import CnnlabError

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


def momentum_step_accumulate(theta: torch.Tensor, v: torch.Tensor, g: torch.Tensor, lr: float,
                             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ryu, ch. 3: v ← g + βv, θ ← θ - αv. Returns the new (θ, v)."""
    v = g + beta * v
    return theta - lr * v, v


def momentum_step_velocity(theta: torch.Tensor, v: torch.Tensor, g: torch.Tensor, lr: float,
                           beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """the optimization notes and Hu, lecture 5: v ← βv - ηg, θ ← θ + v. Returns the new (θ, v)."""
    v = beta * v - lr * g
    return theta + v, v


def _check(name: str, value: float, low: float = 0.0, high: float | None = None) -> None:
    if value < low or (high is not None and value >= high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise CnnlabError(f"{name} must be {bound}; received {name}={value}")


class _Reference(torch.optim.Optimizer):
    """Loops over every parameter with a gradient and calls ``_update``; subclasses write the rule."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if group["maximize"] else p.grad
                self._update(p, g, self.state[p], group)
        return loss

    def _update(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


class SGD(_Reference):
    """``torch.optim.SGD``: momentum, dampening, Nesterov, weight decay (the module docstring)."""

    def __init__(self, params: Params, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False) -> None:
        _check("lr", lr), _check("momentum", momentum), _check("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise CnnlabError(f"Nesterov momentum requires a momentum and zero dampening; "
                              f"received momentum={momentum}, dampening={dampening}")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov, maximize=maximize))

    def _update(self, p, g, state, group):
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p  # gradient of the ℓ2 penalty λ/2 ‖θ‖²
        beta = group["momentum"]
        if beta:
            v = state.get("momentum_buffer")
            if v is None:
                v = g.clone()  # v¹ = g + β·0: no dampening on the first step, as in PyTorch
            else:
                v = beta * v + (1 - group["dampening"]) * g  # v ← βv + (1 - τ) g
            state["momentum_buffer"] = v
            g = g + beta * v if group["nesterov"] else v  # Nesterov: step from the look-ahead point
        p.sub_(group["lr"] * g)  # θ ← θ - α v


class Adagrad(_Reference):
    """``torch.optim.Adagrad``: c ← c + g², θ ← θ - η_t g / (sqrt(c) + ε), η_t = η / (1 + (t-1)·decay)."""

    def __init__(self, params: Params, lr: float = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10, *, maximize: bool = False) -> None:
        _check("lr", lr), _check("lr_decay", lr_decay), _check("weight_decay", weight_decay)
        _check("initial_accumulator_value", initial_accumulator_value), _check("eps", eps)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize))

    def _update(self, p, g, state, group):
        if not state:
            state["step"] = torch.tensor(0.0)
            state["sum"] = torch.full_like(p, group["initial_accumulator_value"])
        state["step"] += 1
        t = state["step"].item()
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        lr_t = group["lr"] / (1 + (t - 1) * group["lr_decay"])
        state["sum"] = state["sum"] + g * g  # c ← c + g²: every past gradient counts equally
        p.sub_(lr_t * g / (state["sum"].sqrt() + group["eps"]))


class RMSprop(_Reference):
    """``torch.optim.RMSprop``: c ← αc + (1 - α)g², θ ← θ - η g / (sqrt(c) + ε); centered, momentum."""

    def __init__(self, params: Params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False, *,
                 maximize: bool = False) -> None:
        _check("lr", lr), _check("alpha", alpha), _check("eps", eps)
        _check("weight_decay", weight_decay), _check("momentum", momentum)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize))

    def _update(self, p, g, state, group):
        if not state:
            state["step"] = torch.tensor(0.0)
            state["square_avg"] = torch.zeros_like(p)
            if group["momentum"] > 0:
                state["momentum_buffer"] = torch.zeros_like(p)
            if group["centered"]:
                state["grad_avg"] = torch.zeros_like(p)
        state["step"] += 1
        alpha = group["alpha"]
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        # c ← γc + (1 - γ)g²: recent gradients count, old ones decay like γ^k (Hu, lecture 5).
        state["square_avg"] = alpha * state["square_avg"] + (1 - alpha) * g * g
        second_moment = state["square_avg"]
        if group["centered"]:
            state["grad_avg"] = alpha * state["grad_avg"] + (1 - alpha) * g
            second_moment = second_moment - state["grad_avg"] ** 2  # E[g²] - E[g]² = Var[g]
        step = g / (second_moment.sqrt() + group["eps"])
        if group["momentum"] > 0:
            state["momentum_buffer"] = group["momentum"] * state["momentum_buffer"] + step
            step = state["momentum_buffer"]
        p.sub_(group["lr"] * step)


class Adam(_Reference):
    """``torch.optim.Adam``: bias-corrected first and second moments; ``amsgrad``; ℓ2 weight decay
    (or decoupled, as AdamW, with ``decoupled_weight_decay=True``)."""

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, *,
                 maximize: bool = False, decoupled_weight_decay: bool = False) -> None:
        _check("lr", lr), _check("eps", eps), _check("weight_decay", weight_decay)
        _check("betas[0]", betas[0], 0.0, 1.0), _check("betas[1]", betas[1], 0.0, 1.0)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def _update(self, p, g, state, group):
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p)  # m⁰ = 0
            state["exp_avg_sq"] = torch.zeros_like(p)  # c⁰ = 0
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = state["step"].item()
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        if wd and group["decoupled_weight_decay"]:
            p.mul_(1 - lr * wd)  # AdamW: shrink θ directly, outside the adaptive scaling
        elif wd:
            g = g + wd * p  # Adam: ℓ2 penalty's gradient, which then gets divided by sqrt(ĉ)
        state["exp_avg"] = beta1 * state["exp_avg"] + (1 - beta1) * g  # m: smoothed g, the momentum
        state["exp_avg_sq"] = beta2 * state["exp_avg_sq"] + (1 - beta2) * g * g  # c: as in RMSprop
        c = state["exp_avg_sq"]
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.maximum(state["max_exp_avg_sq"], c)  # never shrink the denominator
            c = state["max_exp_avg_sq"]
        m_hat = state["exp_avg"] / (1 - beta1 ** t)
        c_hat = c / (1 - beta2 ** t)
        p.sub_(lr * m_hat / (c_hat.sqrt() + group["eps"]))


class AdamW(Adam):
    """``torch.optim.AdamW`` (Loshchilov & Hutter 2019): Adam with decoupled weight decay."""

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)


__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "momentum_step_accumulate", "momentum_step_velocity"]
