"""The exponential moving average of weights: the formula, agreement with torch's AveragedModel,
batch-norm buffers, the swapped-in context, and checkpoints."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cnnlab.errors import CnnlabError
from cnnlab.train.ema import EMA, ema_weights


def small_net(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def train_steps(model, steps, ema=None, seed=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 2, 6, 6, generator=g)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(model)


def test_update_is_the_exponential_average_of_the_iterates():
    model = small_net()
    ema = EMA(model, 0.9)
    expected = {k: v.detach().clone().double() for k, v in model.state_dict().items() if v.is_floating_point()}
    for step in range(5):
        train_steps(model, 1, seed=step)
        ema.update(model)
        for k in expected:
            expected[k] = 0.9 * expected[k] + 0.1 * model.state_dict()[k].double()
    for k, v in expected.items():
        torch.testing.assert_close(ema.averaged[k].double(), v, rtol=0, atol=1e-6)
    assert ema.averaged["1.num_batches_tracked"] == model.state_dict()["1.num_batches_tracked"] == 5


def test_parameters_agree_with_torch_averaged_model():
    model = small_net()
    ours = EMA(model, 0.95)
    theirs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.95))
    theirs.update_parameters(model)  # its first update copies the model, as our constructor does
    for step in range(6):
        train_steps(model, 1, seed=step)
        ours.update(model)
        theirs.update_parameters(model)
    for (name, _), p in zip(model.named_parameters(), theirs.module.parameters()):
        torch.testing.assert_close(ours.averaged[name], p.detach(), rtol=1e-6, atol=1e-7)


def test_bn_buffers_are_averaged_or_copied_as_asked():
    model = small_net()
    start = model.state_dict()["1.running_mean"].clone()
    avg, copy = EMA(model, 0.5), EMA(model, 0.5, buffers="copy")
    train_steps(model, 1)
    avg.update(model)
    copy.update(model)
    live = model.state_dict()["1.running_mean"]
    assert not torch.equal(live, start)
    torch.testing.assert_close(avg.averaged["1.running_mean"], 0.5 * start + 0.5 * live)
    assert torch.equal(copy.averaged["1.running_mean"], live)
    # the weights themselves are averaged in both modes
    torch.testing.assert_close(copy.averaged["0.weight"], avg.averaged["0.weight"])


def test_warmup_lowers_the_decay_of_the_first_updates():
    model = small_net()
    ema = EMA(model, 0.999, warmup=True)
    decays = []
    for _ in range(3):
        decays.append(ema.current_decay())
        ema.update(model)
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    assert EMA(model, 0.999).current_decay() == 0.999


def test_swapped_in_evaluates_the_average_and_restores_the_weights_even_on_error():
    model = small_net()
    ema = EMA(model, 0.8)
    train_steps(model, 4, ema)
    model.eval()
    x = torch.randn(5, 2, 6, 6)
    own = model(x)
    reference = small_net(seed=99).eval()
    reference.load_state_dict(ema.averaged)
    with ema.swapped_in(model) as m:
        assert m is model
        torch.testing.assert_close(model(x), reference(x))
        assert not torch.allclose(model(x), own)
    torch.testing.assert_close(model(x), own, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="boom"):
        with ema.swapped_in(model):
            raise RuntimeError("boom")
    torch.testing.assert_close(model(x), own, rtol=0, atol=0)


def test_a_channels_last_model_is_averaged_and_restored():
    model = small_net().to(memory_format=torch.channels_last)
    ema = EMA(model, 0.9)
    train_steps(model, 2, ema)
    w = model[0].weight.detach().clone()
    with ema.swapped_in(model):
        assert torch.equal(model[0].weight, ema.averaged["0.weight"])
    assert torch.equal(model[0].weight, w) and model[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_state_dict_survives_a_safe_checkpoint_round_trip():
    model = small_net()
    ema = EMA(model, 0.99, warmup=True)
    train_steps(model, 3, ema)
    buffer = io.BytesIO()
    torch.save({"ema": ema.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    restored = EMA.from_state_dict(small_net(seed=5), checkpoint["ema"])
    assert restored.num_updates == 3 and restored.warmup and restored.decay == 0.99
    for k, v in ema.averaged.items():
        assert torch.equal(restored.averaged[k], v)
    assert ema_weights(checkpoint).keys() == model.state_dict().keys()
    assert ema_weights({"model": {}}) is None
    # resumed averaging continues exactly as the uninterrupted one
    train_steps(model, 1, ema, seed=7)
    restored.update(model)
    for k, v in ema.averaged.items():
        assert torch.equal(restored.averaged[k], v)


def test_bad_decay_and_mismatched_weights_are_clear_errors():
    for decay in (0, 1, 1.5, -0.1):
        with pytest.raises(CnnlabError, match=r"decay must be in \(0, 1\)"):
            EMA(small_net(), decay)
    with pytest.raises(CnnlabError, match="unknown EMA buffer handling"):
        EMA(small_net(), 0.9, buffers="mean")
    other = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(CnnlabError, match="first mismatched key: 0.weight"):
        EMA(other, 0.9).load_state_dict(EMA(small_net(), 0.9).state_dict())


def test_recomputed_bn_statistics_can_be_kept_for_the_average():
    model = small_net()
    ema = EMA(model, 0.9)
    train_steps(model, 3, ema)
    own = model.state_dict()["1.running_var"].clone()
    with ema.swapped_in(model):
        model.train()
        with torch.no_grad():  # stand-in for precise BN: one pass over fresh data
            model[1].reset_running_stats()
            model(torch.randn(64, 2, 6, 6) * 3)
        recomputed = model.state_dict()["1.running_var"].clone()
        ema.take_buffers(model)
    assert torch.equal(ema.averaged["1.running_var"], recomputed)
    assert torch.equal(model.state_dict()["1.running_var"], own)  # the live model's are untouched
