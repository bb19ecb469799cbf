"""cnnlab.manual.optim beside torch.optim: the same parameter trajectory to 1e-10 in float64."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.manual import optim

STEPS = 50


def _problem(seed: int = 0):
    """A small MLP regression in float64, and a fixed set of minibatches."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    batches = [(torch.randn(16, 4, generator=gen, dtype=torch.float64),
                torch.randn(16, 2, generator=gen, dtype=torch.float64)) for _ in range(STEPS)]
    return model, batches


def _trajectory(make_optimizer, seed: int = 0) -> list[torch.Tensor]:
    model, batches = _problem(seed)
    optimizer = make_optimizer(model.parameters())
    path = []
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        path.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    return path


CASES = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 1e-2}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    ("SGD", {"lr": 0.05, "maximize": True}),
    ("Adagrad", {"lr": 0.1}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 1e-2, "initial_accumulator_value": 0.1}),
    ("RMSprop", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.01, "alpha": 0.9, "momentum": 0.5, "weight_decay": 1e-2}),
    ("RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.9, "eps": 1e-6}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 1e-2}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
]


@pytest.mark.parametrize("name, kw", CASES, ids=[f"{n}-{'-'.join(kw)}" for n, kw in CASES])
def test_reference_optimizer_follows_torch_optims_trajectory(name, kw):
    ours = _trajectory(lambda params: getattr(optim, name)(params, **kw))
    theirs = _trajectory(lambda params: getattr(torch.optim, name)(params, **kw))
    moved = (theirs[-1] - theirs[0]).abs().max()
    assert moved > 1e-3  # the problem actually moves the parameters
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert torch.allclose(a, b, atol=1e-10, rtol=0), f"step {step}: max diff {(a - b).abs().max():.1e}"


def test_reference_optimizers_work_with_param_groups_and_skip_params_without_grad():
    w1, w2, frozen = (torch.ones(3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    opt = optim.SGD([{"params": [w1], "lr": 0.1}, {"params": [w2, frozen]}], lr=0.5)
    (w1.sum() + w2.sum()).backward()
    opt.step()
    assert torch.allclose(w1, torch.full((3,), 0.9, dtype=torch.float64))
    assert torch.allclose(w2, torch.full((3,), 0.5, dtype=torch.float64))
    assert torch.equal(frozen, torch.ones(3, dtype=torch.float64))


def test_the_lectures_two_momentum_conventions_give_the_same_trajectory_for_the_same_learning_rate():
    # Ryu, ch. 3: v = g + βv, θ -= αv.  the optimization notes and Hu, lecture 5: v = βv - ηg, θ += v.  With η = α they coincide,
    # and the second velocity is -α times the first.
    lr, beta = 0.05, 0.9
    target = torch.tensor([3.0, -1.0], dtype=torch.float64)
    theta_a = theta_b = torch.zeros(2, dtype=torch.float64)
    v_a = v_b = torch.zeros(2, dtype=torch.float64)
    for _ in range(150):
        theta_a, v_a = optim.momentum_step_accumulate(theta_a, v_a, 2 * (theta_a - target), lr, beta)
        theta_b, v_b = optim.momentum_step_velocity(theta_b, v_b, 2 * (theta_b - target), lr, beta)
        assert torch.allclose(theta_a, theta_b, atol=1e-12, rtol=0)
        assert torch.allclose(v_b, -lr * v_a, atol=1e-12, rtol=0)
    assert torch.allclose(theta_a, target, atol=1e-2)  # and both reach the minimum


def test_the_momentum_convention_of_seed_000_is_torchs_sgd():
    model_path = _trajectory(lambda params: optim.SGD(params, lr=0.05, momentum=0.9))
    theirs = _trajectory(lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9))
    assert torch.allclose(model_path[-1], theirs[-1], atol=1e-10, rtol=0)


def test_adam_bias_correction_makes_the_first_step_exactly_lr_times_the_sign_of_g():
    # With m̂ = g and ĉ = g² on step 1, θ moves by η g / |g| (up to ε), whatever the scale of g.
    w = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = optim.Adam([w], lr=0.1, eps=0.0)
    (w * torch.tensor([1e-3, -50.0], dtype=torch.float64)).sum().backward()
    opt.step()
    assert torch.allclose(w.detach(), torch.tensor([0.9, 1.1], dtype=torch.float64))


@pytest.mark.parametrize("make", [
    lambda p: optim.SGD(p, lr=-1.0),
    lambda p: optim.SGD(p, lr=0.1, nesterov=True),  # Nesterov needs momentum
    lambda p: optim.Adam(p, betas=(1.0, 0.999)),
    lambda p: optim.RMSprop(p, alpha=-0.1),
])
def test_invalid_hyperparameters_raise_a_clear_error(make):
    with pytest.raises(CnnlabError, match="received"):
        make([torch.zeros(1, requires_grad=True)])
