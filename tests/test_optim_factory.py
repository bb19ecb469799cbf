"""The optimizer factory: the right torch classes, no-decay groups, and the lecture's weight-decay contrast."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.train.optim import OPTIMIZERS, l2_penalty, make_optimizer, param_groups


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 8), nn.LayerNorm(8), nn.GroupNorm(2, 8), nn.Linear(8, 3, bias=False),
    )


EXPECTED = {
    "sgd": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 1e-3}),
    "adagrad": (torch.optim.Adagrad, {"lr": 0.05, "weight_decay": 1e-3}),
    "rmsprop": (torch.optim.RMSprop, {"lr": 0.05, "momentum": 0.8, "weight_decay": 1e-3}),
    "adam": (torch.optim.Adam, {"lr": 0.05, "betas": (0.8, 0.99), "weight_decay": 1e-3, "amsgrad": False}),
    "adamw": (torch.optim.AdamW, {"lr": 0.05, "betas": (0.8, 0.99), "weight_decay": 1e-3, "amsgrad": False}),
    "amsgrad": (torch.optim.AdamW, {"lr": 0.05, "betas": (0.8, 0.99), "weight_decay": 1e-3, "amsgrad": True}),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_name_builds_its_torch_class_with_the_given_hyperparameters(name):
    cls, expected = EXPECTED[name]
    opt = make_optimizer(small_net(), name, lr=0.05, momentum=0.8, nesterov=name == "sgd", weight_decay=1e-3,
                         betas=(0.8, 0.99), eps=1e-6 if name != "sgd" else None)
    assert type(opt) is cls
    group = opt.param_groups[0]
    for key, value in expected.items():
        assert group[key] == value, key
    if name != "sgd":
        assert group["eps"] == 1e-6


def test_adam_family_and_adagrad_keep_torch_default_eps_when_none():
    assert make_optimizer(small_net(), "adam", lr=1e-3).param_groups[0]["eps"] == 1e-8
    assert make_optimizer(small_net(), "adagrad", lr=1e-3).param_groups[0]["eps"] == 1e-10


def test_no_decay_group_holds_exactly_biases_and_norm_parameters():
    net = small_net()
    groups = param_groups(net, 5e-4, no_decay_bias_bn=True)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    names = {id(p): n for n, p in net.named_parameters()}
    assert sorted(names[i] for i in decay) == ["0.weight", "4.weight", "7.weight"]  # conv and linear weights
    assert sorted(names[i] for i in no_decay) == ["0.bias", "1.bias", "1.weight", "4.bias", "5.bias", "5.weight",
                                                  "6.bias", "6.weight"]


def test_norm_weight_with_more_than_one_dimension_is_still_undecayed():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.LayerNorm([2, 4, 4]))  # LayerNorm weight is (2, 4, 4)
    _, no_decay = param_groups(net, 0.1, no_decay_bias_bn=True)
    assert any(p.ndim == 3 for p in no_decay["params"])


def test_without_the_option_one_group_holds_every_trainable_parameter():
    net = small_net()
    net[0].weight.requires_grad_(False)
    (group,) = param_groups(net, 1e-4, no_decay_bias_bn=False)
    assert group["weight_decay"] == 1e-4
    assert len(group["params"]) == sum(1 for p in net.parameters() if p.requires_grad)


def test_no_decay_option_applies_inside_the_optimizer():
    opt = make_optimizer(small_net(), "adamw", lr=1e-3, weight_decay=0.05, no_decay_bias_bn=True)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_l2_penalty_is_half_lambda_times_squared_norm():
    net = small_net()
    everything = sum(p.pow(2).sum() for p in net.parameters())
    weights_only = sum(net[i].weight.pow(2).sum() for i in (0, 4, 7))
    assert torch.allclose(l2_penalty(net, 0.2, no_decay_bias_bn=False), 0.1 * everything)
    assert torch.allclose(l2_penalty(net, 0.2, no_decay_bias_bn=True), 0.1 * weights_only)
    assert l2_penalty(net, 0.0, no_decay_bias_bn=False).item() == 0.0


def _trajectory(name: str, *, weight_decay: float, l2: float, steps: int = 8) -> list[torch.Tensor]:
    """Parameters after each step of ``steps`` full-batch steps on a fixed least-squares problem (float64)."""
    torch.manual_seed(1)
    x, y = torch.randn(32, 5, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    torch.manual_seed(2)
    net = nn.Linear(5, 2).double()
    opt = make_optimizer(net, name, lr=0.05, momentum=0.9, weight_decay=weight_decay)
    out = []
    for _ in range(steps):
        loss = (net(x) - y).pow(2).mean() + l2_penalty(net, l2, no_decay_bias_bn=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(torch.cat([p.detach().flatten().clone() for p in net.parameters()]))
    return out


def test_sgd_weight_decay_equals_the_l2_term_in_the_loss():
    # Ryu, ch. 3: "For plain SGD, weight decay and l2-regularization are equivalent" (here with momentum too).
    lam = 0.3
    for a, b in zip(_trajectory("sgd", weight_decay=lam, l2=0), _trajectory("sgd", weight_decay=0, l2=lam)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_adamw_decoupled_decay_differs_from_adam_with_l2():
    # the optimization notes: "weight decay is equivalent to L2 regularization only when used with SGD. In Adam, it
    # leads to different results ... the proper way to do it had been named AdamW".
    lam = 0.3
    adam_wd = _trajectory("adam", weight_decay=lam, l2=0)
    adam_l2 = _trajectory("adam", weight_decay=0, l2=lam)
    adamw = _trajectory("adamw", weight_decay=lam, l2=0)
    torch.testing.assert_close(adam_wd[-1], adam_l2[-1], rtol=1e-12, atol=1e-12)  # torch's Adam: coupled
    assert (adamw[-1] - adam_l2[-1]).abs().max() > 1e-3


def test_adamw_step_is_the_adam_step_plus_eta_lambda_theta_shrinkage():
    # the optimization notes' AdamW: w_i = w_{i-1} - η m̂/(sqrt(ŝ) + ε) - ηλ w_{i-1}.
    lam, lr = 0.3, 0.05
    torch.manual_seed(2)
    theta0 = nn.Linear(5, 2).double().weight.detach().clone()
    plain = _trajectory("adamw", weight_decay=0, l2=0, steps=1)[0]
    decayed = _trajectory("adamw", weight_decay=lam, l2=0, steps=1)[0]
    torch.testing.assert_close(decayed[:10], plain[:10] - lr * lam * theta0.flatten(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"name": "sdg"}, "unknown optimizer 'sdg'; did you mean 'sgd'"),
    ({"lr": 0.0}, "received lr=0.0"),
    ({"lr": -1.0}, "received lr=-1.0"),
    ({"momentum": 1.0}, "received momentum=1.0"),
    ({"momentum": -0.1}, "received momentum=-0.1"),
    ({"weight_decay": -1e-4}, "received weight_decay=-0.0001"),
    ({"betas": (0.9, 1.0)}, "received betas=(0.9, 1.0)"),
    ({"betas": (-0.1, 0.9)}, "received betas=(-0.1, 0.9)"),
    ({"nesterov": True, "momentum": 0.0}, "needs momentum > 0; received momentum=0.0"),
    ({"name": "adam", "nesterov": True}, "only available with sgd; received optimizer='adam'"),
    ({"eps": 0.0}, "received eps=0.0"),
])
def test_bad_optimizer_settings_are_refused_with_the_received_value(kwargs, fragment):
    args = {"name": "sgd", "lr": 0.1, **kwargs}
    with pytest.raises(CnnlabError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        make_optimizer(small_net(), args.pop("name"), **args)


def test_negative_l2_and_model_without_trainable_parameters_are_refused():
    with pytest.raises(CnnlabError, match="received l2=-0.5"):
        l2_penalty(small_net(), -0.5, no_decay_bias_bn=False)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(CnnlabError, match="no trainable parameters"):
        make_optimizer(frozen, "sgd", lr=0.1)
