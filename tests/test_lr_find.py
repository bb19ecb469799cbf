"""The learning-rate range test: the curve's shape, the suggestion, state restored, the plot, bad input."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_dataset
from torch import nn

from cnnlab import models
from cnnlab.data import BatchLoader
from cnnlab.errors import CnnlabError
from cnnlab.train.lr_find import LRFindResult, lr_range_test, plot_lr_find, suggest_lr
from cnnlab.train.optim import make_optimizer

START, END, STEPS = 1e-4, 10.0, 40


@pytest.fixture(scope="module")
def lenet_run():
    """One range test of LeNet-5 with SGD + momentum on the tiny dataset, and the states around it."""
    ds = tiny_dataset()
    loader = BatchLoader(ds.train_x, ds.train_y, batch_size=32, shuffle=True, seed=0, mean=ds.mean, std=ds.std,
                         device=torch.device("cpu"))
    torch.manual_seed(0)
    model = models.create("lenet5", num_classes=10, in_channels=1, input_size=28)
    opt = make_optimizer(model, "sgd", lr=0.05, momentum=0.9)
    x, y = next(iter(loader))  # one ordinary step first, so that there is momentum state to restore
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    result = lr_range_test(model, loader, opt, start_lr=START, end_lr=END, num_steps=STEPS, smooth=0.9)
    return result, model, opt, before, buffers, rng


def test_loss_first_falls_then_blows_up(lenet_run):
    result = lenet_run[0]
    low = min(range(len(result.losses)), key=result.losses.__getitem__)
    assert result.losses[low] < result.losses[0] - 0.1  # the useful range: the loss falls
    assert result.stopped_early and result.losses[-1] > 4 * result.losses[low]  # then diverges
    assert len(result.lrs) == len(result.losses) < STEPS


def test_lrs_grow_geometrically_from_start_lr(lenet_run):
    lrs = lenet_run[0].lrs
    assert lrs == pytest.approx([START * (END / START) ** (i / (STEPS - 1)) for i in range(len(lrs))])


def test_suggestion_lies_inside_the_range_and_before_the_loss_minimum(lenet_run):
    result = lenet_run[0]
    assert START < result.suggestion < END
    low = min(range(len(result.losses)), key=result.losses.__getitem__)
    assert result.suggestion <= result.lrs[low]


def test_model_optimizer_mode_and_rng_are_restored(lenet_run):
    _, model, opt, before, buffers, rng = lenet_run
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(b, opt.state[p]["momentum_buffer"]) for b, p in zip(buffers, model.parameters()))
    assert opt.param_groups[0]["lr"] == 0.05
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert torch.equal(torch.get_rng_state(), rng)


def test_plot_is_written_as_png(tmp_path, lenet_run):
    path = tmp_path / "out" / "lr_find.png"
    plot_lr_find(lenet_run[0], path, title="lenet5 on tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["lr_find.png"]  # no temporary left behind


def test_fewer_batches_than_steps_are_cycled_from_a_list_or_an_iterator():
    torch.manual_seed(0)
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for batches in (data, iter(data)):
        result = lr_range_test(model, batches, opt, start_lr=1e-5, end_lr=1e-3, num_steps=10)
        assert len(result.lrs) == 10 and not result.stopped_early
        assert result.lrs[-1] == pytest.approx(1e-3)


def test_suggest_lr_picks_the_steepest_descent_before_the_minimum():
    lrs = [10.0 ** (k / 2) for k in range(-12, 1)]  # 1e-6 ... 1
    losses = [2.3, 2.3, 2.29, 2.2, 1.8, 1.0, 0.8, 0.75, 0.74, 3.0, 9.0, 30.0, 50.0]
    assert suggest_lr(lrs, losses) == lrs[4]  # central slopes: -0.49, -1.2, -1.0 at 3, 4, 5; blow-up ignored
    assert suggest_lr([1e-3, 1e-2, 1e-1], [1.0, 0.5, 3.0]) == pytest.approx(1e-3)  # min at 1: lr/10, kept >= start


def test_a_loss_that_is_not_finite_at_once_is_reported_and_the_model_restored():
    model = nn.Linear(4, 3)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    with pytest.raises(CnnlabError, match="not finite at the first step"):
        lr_range_test(model, batches, opt, loss_fn=lambda out, y: out.sum() * math.nan)
    assert torch.equal(model.weight, before)


def test_result_is_a_plain_dataclass():
    result = LRFindResult([1e-3, 1e-2], [2.0, 1.0], 1e-3, False)
    assert result.suggestion == 1e-3 and result.lrs[1] == 1e-2


@pytest.mark.parametrize("kwargs, fragment", [
    ({"start_lr": 1.0, "end_lr": 1.0}, "received start_lr=1.0, end_lr=1.0"),
    ({"start_lr": 1.0, "end_lr": 0.1}, "received start_lr=1.0, end_lr=0.1"),
    ({"start_lr": 0.0}, "received start_lr=0.0"),
    ({"num_steps": 1}, "received num_steps=1"),
    ({"smooth": 1.0}, "received smooth=1.0"),
    ({"diverge_factor": 1.0}, "received diverge_factor=1.0"),
])
def test_invalid_ranges_are_refused(kwargs, fragment):
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CnnlabError, match=fragment):
        lr_range_test(model, [(torch.randn(2, 4), torch.tensor([0, 1]))], opt, **kwargs)


def test_no_batches_is_refused():
    model = nn.Linear(4, 3)
    with pytest.raises(CnnlabError, match="no batches"):
        lr_range_test(model, [], torch.optim.SGD(model.parameters(), lr=0.1))
