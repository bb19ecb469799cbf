"""The manual backend: layer classes, convert / to_torch, lenet5 on both backends, the helper itself."""
from __future__ import annotations

import copy
import doctest

import pytest
import torch
from helpers_grad import check_op
from torch import nn

from cnnlab import manual, models
from cnnlab.manual import backend, conv, functional, losses, modules, norm, pool


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _forward_backward(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    out = model(x)
    nn.functional.cross_entropy(out, target).backward()
    return out.detach()


def test_manual_lenet5_has_torchs_state_dict_keys_and_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    reference = models.create("lenet5").double()
    ours = models.create("lenet5", backend="manual").double()
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert {type(m).__module__ for m in ours.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.ReLU))} == {
        "cnnlab.manual.modules"}
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    target = torch.tensor([0, 3, 9, 1])
    assert torch.allclose(_forward_backward(ours, x, target), _forward_backward(reference, x, target), atol=1e-12)
    theirs = _grads(reference)
    for name, g in _grads(ours).items():
        assert torch.allclose(g, theirs[name], atol=1e-12), name


def test_a_manual_checkpoint_loads_into_the_torch_backend_and_back():
    torch.manual_seed(1)
    ours = models.create("lenet5", backend="manual")
    reference = models.create("lenet5")
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(ours(x), reference(x), atol=1e-5)
    manual.to_torch(ours)
    assert manual.manual_layers(ours) == []
    assert torch.allclose(ours(x), reference(x), atol=1e-5)


def test_convert_keeps_the_same_parameter_objects_so_an_existing_optimizer_still_works():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    before = [id(p) for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert manual.convert(model) is model
    assert [id(p) for p in model.parameters()] == before
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    assert manual.manual_layers(model) == ["0", "1", "2"]


class _CustomConv(nn.Conv2d):
    """A subclass with its own forward: convert must leave it alone."""


def test_convert_leaves_layers_without_a_manual_equivalent_and_subclasses_alone():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU(), nn.Flatten(), _CustomConv(2, 2, 1), nn.Dropout2d())
    manual.convert(model)
    assert [type(m) for m in model] == [manual.Conv2d, nn.GELU, nn.Flatten, _CustomConv, nn.Dropout2d]


def test_every_manual_layer_matches_its_torch_layer_in_train_and_eval():
    torch.manual_seed(0)
    layers = [
        (nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, groups=2), (2, 4, 7, 6)),
        (nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 2, 5, 5)),
        (nn.Conv1d(3, 4, 3, padding="same"), (2, 3, 9)),
        (nn.Linear(5, 3), (4, 5)),
        (nn.MaxPool2d(3, 2, ceil_mode=True), (2, 3, 8, 8)),
        (nn.AvgPool2d(3, 2, padding=1, count_include_pad=False), (2, 3, 8, 8)),
        (nn.AdaptiveAvgPool2d(1), (2, 3, 5, 4)),
        (nn.AdaptiveMaxPool2d((2, 3)), (2, 3, 5, 6)),
        (nn.ReLU(inplace=True), (3, 4)),
        (nn.LeakyReLU(0.1), (3, 4)),
        (nn.Sigmoid(), (3, 4)),
        (nn.Tanh(), (3, 4)),
        (nn.BatchNorm2d(3), (4, 3, 2, 2)),
        (nn.BatchNorm1d(3, momentum=None), (4, 3)),
        (nn.LayerNorm(4), (2, 3, 4)),
        (nn.LocalResponseNorm(3, alpha=0.5), (2, 5, 3, 3)),
    ]
    for reference, shape in layers:
        reference = reference.double()
        for training in (True, False):
            reference.train(training)
            ours = manual.convert(copy.deepcopy(reference))
            assert type(ours) is not type(reference), type(reference)
            assert list(ours.state_dict()) == list(reference.state_dict())
            torch_twin = copy.deepcopy(reference)
            check_op([shape], lambda x: torch_twin(x + 0), ours)  # + 0: torch's inplace ReLU rejects a leaf
            for (name, ours_p), ref_p in zip(ours.named_parameters(), torch_twin.parameters()):
                assert torch.allclose(ours_p.grad, ref_p.grad, atol=1e-10), (type(reference), name)
            for (name, ours_buf), ref_buf in zip(ours.named_buffers(), torch_twin.buffers()):
                assert torch.allclose(ours_buf, ref_buf), (type(reference), name)  # BN's running stats


def test_manual_losses_match_torchs_loss_modules():
    target = torch.tensor([1, 0, 2])
    check_op([(3, 4)], lambda z: nn.CrossEntropyLoss(label_smoothing=0.1)(z, target),
             lambda z: manual.CrossEntropyLoss(label_smoothing=0.1)(z, target))
    check_op([(3, 4), (3, 4)], nn.MSELoss(reduction="sum"), manual.MSELoss(reduction="sum"))


def test_check_op_names_the_tensor_whose_gradient_differs():
    def wrong_bias_grad(x, w, b):
        return functional.linear(x, w, b) + 0.5 * b.detach() - 0.5 * b.detach() + _halve_grad(b)

    with pytest.raises(AssertionError, match=r"grad of input 2 \('bias'\)"):
        check_op([(3, 2), (4, 2), (4,)], lambda x, w, b: torch.nn.functional.linear(x, w, b) + b,
                 wrong_bias_grad, names=["input", "weight", "bias"])


def _halve_grad(t: torch.Tensor) -> torch.Tensor:
    class Halve(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g / 2

    return Halve.apply(t)


@pytest.mark.parametrize("module", [manual, functional, modules, backend, conv, pool, norm, losses,
                                    manual.activations])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.failed == 0


def test_both_backends_follow_the_same_sgd_trajectory_on_lenet5():
    torch.manual_seed(2)
    reference = models.create("lenet5").double()
    ours = manual.convert(copy.deepcopy(reference))
    gen = torch.Generator().manual_seed(0)
    data = [(torch.rand(8, 1, 28, 28, generator=gen, dtype=torch.float64), torch.randint(0, 10, (8,), generator=gen))
            for _ in range(5)]
    losses = {}
    for name, model in (("torch", reference), ("manual", ours)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        losses[name] = []
        for x, t in data * 3:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), t)
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    assert losses["manual"][-1] < losses["manual"][0]  # it learns the 5 batches
    assert losses["manual"] == pytest.approx(losses["torch"], abs=1e-10)
    for (name, p), q in zip(ours.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-10), name


def _relative_errors(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: ((reference[k] - other[k]).norm() / reference[k].norm()).item() for k in reference}


def test_manual_lenet5_trains_under_bf16_autocast_as_closely_as_torchs_layers_do():
    # Without torch.amp.custom_fwd/custom_bwd the hand-written backward ran outside autocast and
    # failed on a float32 x bfloat16 matmul (`--backend manual --amp bf16`).
    torch.manual_seed(0)
    reference = models.create("lenet5")
    ours = manual.convert(copy.deepcopy(reference))
    x, target = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    _forward_backward(reference, x, target)
    exact = _grads(reference)
    errors = {}
    for name, model in (("torch", reference), ("manual", ours)):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            loss = nn.functional.cross_entropy(out, target)
        assert out.dtype == torch.bfloat16  # the linear layers really ran in bf16
        loss.backward()
        grads = _grads(model)
        assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
        errors[name] = _relative_errors(exact, grads)
    for key, err in errors["manual"].items():
        assert err < max(3 * errors["torch"][key], 0.05), (key, err, errors["torch"][key])


def test_manual_batch_norm_model_runs_forward_and_backward_under_bf16_autocast():
    torch.manual_seed(0)
    model = models.create("resnet18", num_classes=10, in_channels=1, backend="manual")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 32, 32)), torch.randint(0, 10, (4,)))
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in model.parameters())
